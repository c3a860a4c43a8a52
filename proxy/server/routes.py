"""Which Gemini endpoint a request is for: a pure function over method and path.

The proxy forwards every path under the API prefixes; this module only tells
the few that are metered (or that touch an interaction's ownership) apart from
the rest, so the handler knows whether to read the body, tap the response and
check who owns an interaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, auto

from ..metering.records import EndpointKind

FORWARDED_PREFIXES = ("/v1/", "/v1beta/", "/v1alpha/", "/upload/")

_VERSION = r"(?:v1|v1beta|v1alpha)"
_INTERACTIONS = re.compile(rf"^/{_VERSION}/interactions(?:/(?P<id>[^/:]+)(?P<cancel>/cancel)?)?/?$")
_GENERATE = re.compile(
    rf"^/{_VERSION}/(?:models|tunedModels)/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$"
)


class Action(Enum):
    """What a request does, as far as metering and ownership care."""

    FORWARD = auto()  # anything else: relayed, not metered
    INTERACTION_CREATE = auto()
    INTERACTION_GET = auto()
    INTERACTION_CANCEL = auto()
    INTERACTION_DELETE = auto()
    GENERATE = auto()
    STREAM_GENERATE = auto()


@dataclass(frozen=True, slots=True)
class Route:
    action: Action
    interaction_id: str | None = None
    model: str | None = None

    @property
    def metered(self) -> bool:
        return self.endpoint is not None

    @property
    def endpoint(self) -> EndpointKind | None:
        return _ENDPOINTS.get(self.action)


_ENDPOINTS = {
    Action.INTERACTION_CREATE: EndpointKind.INTERACTION_CREATE,
    Action.INTERACTION_GET: EndpointKind.INTERACTION_GET,
    Action.GENERATE: EndpointKind.GENERATE_CONTENT,
    Action.STREAM_GENERATE: EndpointKind.STREAM_GENERATE_CONTENT,
}

FORWARD = Route(Action.FORWARD)


def classify(method: str, path: str) -> Route:
    """The route of a request whose path is already known to be forwarded."""
    if "/interactions" in path:
        m = _INTERACTIONS.match(path)
        if m is not None:
            iid = m.group("id")
            if iid is None:
                return Route(Action.INTERACTION_CREATE) if method == "POST" else FORWARD
            if m.group("cancel"):
                return Route(Action.INTERACTION_CANCEL, iid) if method == "POST" else FORWARD
            if method == "GET":
                return Route(Action.INTERACTION_GET, iid)
            if method == "DELETE":
                return Route(Action.INTERACTION_DELETE, iid)
        return FORWARD
    if method == "POST" and "Content" in path:
        m = _GENERATE.match(path)
        if m is not None:
            action = (
                Action.GENERATE
                if m.group("method") == "generateContent"
                else Action.STREAM_GENERATE
            )
            return Route(action, model=m.group("model"))
    return FORWARD


def is_forwarded(path: str) -> bool:
    return path.startswith(FORWARDED_PREFIXES)


_LABELS_LIMIT = 64
_LABEL_LENGTH_LIMIT = 63


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """What the meter reads from a metered request's JSON body (never required)."""

    model: str | None = None
    stream: bool = False
    background: bool = False
    service_tier: str | None = None
    previous_interaction_id: str | None = None
    labels: dict[str, str] | None = None


EMPTY_META = RequestMeta()


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def request_meta(route: Route, body: object) -> RequestMeta:
    """Model, streaming, tier, labels and the previous interaction from a parsed body.

    Anything of the wrong type is ignored rather than refused: the upstream is
    the judge of a request's validity, the meter only reads what it can.
    """
    if not isinstance(body, dict):
        return RequestMeta(model=route.model, stream=route.action is Action.STREAM_GENERATE)
    if route.action is Action.INTERACTION_CREATE:
        model = _str_or_none(body.get("model"))
        if model is None and (agent := _str_or_none(body.get("agent"))) is not None:
            model = f"agent:{agent}"
        tier = _str_or_none(body.get("service_tier"))
        stream = body.get("stream") is True
    else:
        model = route.model
        tier = _str_or_none(body.get("serviceTier") or body.get("service_tier"))
        stream = route.action is Action.STREAM_GENERATE
    return RequestMeta(
        model=model,
        stream=stream,
        background=body.get("background") is True,
        service_tier=tier.lower() if tier else None,
        previous_interaction_id=_str_or_none(body.get("previous_interaction_id")),
        labels=_labels(body.get("labels")),
    )


def _labels(value: object) -> dict[str, str] | None:
    """The request's string labels, bounded as Gemini bounds them."""
    if not isinstance(value, dict):
        return None
    labels = {
        k: v
        for k, v in value.items()
        if isinstance(k, str)
        and isinstance(v, str)
        and len(k) <= _LABEL_LENGTH_LIMIT
        and len(v) <= _LABEL_LENGTH_LIMIT
    }
    if len(labels) > _LABELS_LIMIT:
        labels = dict(sorted(labels.items())[:_LABELS_LIMIT])
    return labels or None
