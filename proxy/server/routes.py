"""Which Gemini endpoint a request is for: a pure function over method and path.

The proxy forwards every path under the API prefixes; this module only tells
the few that are metered (or that touch an interaction's ownership) apart from
the rest, so the handler knows whether to read the body, tap the response and
check who owns an interaction.

``UNMETERED_ROUTES`` is the one table of routes Google bills that the meter
does not understand yet (docs/metering.md lists them with what is recorded):
a call on one is relayed untouched and still recorded, with zero tokens and
``unmetered_route`` set, so totals never silently omit it.
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
_MODEL = r"(?:models|tunedModels)/(?P<model>[^/:]+)"
_EMBED = re.compile(rf"^/{_VERSION}/{_MODEL}:(?P<method>embedContent|batchEmbedContents)$")


class Action(Enum):
    """What a request does, as far as metering and ownership care."""

    FORWARD = auto()  # anything else: relayed, not metered
    INTERACTION_CREATE = auto()
    INTERACTION_GET = auto()
    INTERACTION_CANCEL = auto()
    INTERACTION_DELETE = auto()
    GENERATE = auto()
    STREAM_GENERATE = auto()
    EMBED = auto()
    BATCH_EMBED = auto()
    UNMETERED = auto()  # billable, not understood yet: recorded with zero tokens


@dataclass(frozen=True, slots=True)
class Route:
    action: Action
    interaction_id: str | None = None
    model: str | None = None
    # Action.UNMETERED only: which row of UNMETERED_ROUTES matched
    unmetered: UnmeteredRoute | None = None

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
    Action.EMBED: EndpointKind.EMBED_CONTENT,
    Action.BATCH_EMBED: EndpointKind.BATCH_EMBED_CONTENTS,
}

FORWARD = Route(Action.FORWARD)


@dataclass(frozen=True, slots=True)
class UnmeteredRoute:
    """A billable route the meter cannot read usage from yet.

    ``kind`` is stored as the record's endpoint and is the metric's ``route``
    label, so label values are bounded by this table. ``model_in_body``: the
    request's JSON body names the model (the proxy then reads the body, within
    ``max_request_bytes`` like any metered call); otherwise a ``model`` group
    of the pattern, if any, names it.
    """

    kind: EndpointKind
    method: str
    pattern: re.Pattern[str]
    model_in_body: bool = False


def _unmetered(
    kind: EndpointKind, method: str, pattern: str, *, model_in_body: bool = False
) -> UnmeteredRoute:
    return UnmeteredRoute(kind, method, re.compile(pattern), model_in_body)


_V = rf"^/{_VERSION}"
_ID = r"[^/:]+"
# First match wins. Free routes (files, countTokens, models, cachedContents get/list/delete,
# batch list/cancel/delete) are not here: they cost nothing. docs/metering.md lists every
# route with what the meter records for it; keep the two in step.
UNMETERED_ROUTES: tuple[UnmeteredRoute, ...] = (
    # Batch API: billed (at the batch rate) when the batch runs, not on this call.
    _unmetered(
        EndpointKind.BATCH_GENERATE_CONTENT, "POST", rf"{_V}/{_MODEL}:batchGenerateContent$"
    ),
    _unmetered(
        EndpointKind.ASYNC_BATCH_EMBED_CONTENT, "POST", rf"{_V}/{_MODEL}:asyncBatchEmbedContent$"
    ),
    # A batch's state and inline results (their usage is the batch's bill).
    _unmetered(EndpointKind.BATCH_GET, "GET", rf"{_V}/batches/{_ID}$"),
    # Explicit caching: the cached tokens on creation, storage per hour while it lives.
    _unmetered(
        EndpointKind.CACHED_CONTENT_CREATE, "POST", rf"{_V}/cachedContents$", model_in_body=True
    ),
    _unmetered(EndpointKind.CACHED_CONTENT_UPDATE, "PATCH", rf"{_V}/cachedContents/{_ID}$"),
    # Imagen (per image) and Veo (per second of video).
    _unmetered(EndpointKind.PREDICT, "POST", rf"{_V}/{_MODEL}:predict$"),
    _unmetered(EndpointKind.PREDICT_LONG_RUNNING, "POST", rf"{_V}/{_MODEL}:predictLongRunning$"),
    # Polls of long-running work started above (Veo videos, File Search imports).
    _unmetered(EndpointKind.OPERATION_GET, "GET", rf"{_V}/{_MODEL}/operations/{_ID}$"),
    _unmetered(EndpointKind.OPERATION_GET, "GET", rf"{_V}/(?:[^:]+/)?operations/{_ID}$"),
    # File Search indexing bills the embeddings it computes.
    _unmetered(
        EndpointKind.FILE_SEARCH_IMPORT, "POST", rf"{_V}/fileSearchStores/{_ID}:importFile$"
    ),
    _unmetered(
        EndpointKind.FILE_SEARCH_IMPORT,
        "POST",
        rf"^/upload/{_VERSION}/fileSearchStores/{_ID}:uploadToFileSearchStore$",
    ),
    # Free itself, but the token opens a Live API session billed to the upstream key
    # directly at Google, past this proxy: the record says who minted it.
    _unmetered(EndpointKind.AUTH_TOKEN_CREATE, "POST", rf"{_V}/auth_tokens$"),
    # The OpenAI-compatible surface.
    _unmetered(
        EndpointKind.OPENAI_CHAT_COMPLETIONS,
        "POST",
        rf"{_V}/openai/chat/completions$",
        model_in_body=True,
    ),
    _unmetered(
        EndpointKind.OPENAI_EMBEDDINGS, "POST", rf"{_V}/openai/embeddings$", model_in_body=True
    ),
    _unmetered(
        EndpointKind.OPENAI_IMAGES, "POST", rf"{_V}/openai/images/generations$", model_in_body=True
    ),
    _unmetered(EndpointKind.OPENAI_OTHER, "POST", rf"{_V}/openai/(?!files(?:/|$)).+$"),
)


def _classify_unmetered(method: str, path: str) -> Route | None:
    for row in UNMETERED_ROUTES:
        if row.method != method:
            continue
        m = row.pattern.match(path)
        if m is not None:
            model = m.groupdict().get("model")
            return Route(Action.UNMETERED, model=model, unmetered=row)
    return None


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
    if method == "POST" and "mbedContent" in path:
        m = _EMBED.match(path)
        if m is not None:
            action = Action.EMBED if m.group("method") == "embedContent" else Action.BATCH_EMBED
            return Route(action, model=m.group("model"))
    return _classify_unmetered(method, path) or FORWARD


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


def body_model(body: object) -> str | None:
    """The model a JSON body names (``models/`` prefix dropped), for unmetered routes."""
    if not isinstance(body, dict):
        return None
    model = _str_or_none(body.get("model"))
    if model is not None and model.startswith("models/"):
        model = model.removeprefix("models/") or None
    return model


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
