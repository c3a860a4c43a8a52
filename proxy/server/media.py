"""Imagen and Veo at the handler: what a media call reserves, owns and bills.

``server.admission`` and ``server.owned`` call these at three points of a media call
(a Veo operation's owner check at admission is the generic one of owned resources,
``routes.Route.resource``; a video extension's input file is checked by
``server.references`` like any file URI):

- the budget reservation (``requested_usage``): the images or video seconds the
  request asks for, priced like a record. The OpenAI-compatible image generation
  (``/openai/images/generations``) reserves its ``n`` images like ``predict`` when
  its model is priced per image (``priced_per_image``, which also tells its answer's
  reader whether to bill images or reported tokens); a model priced by the token
  reserves like a chat completion;
- a ``predictLongRunning`` answer (``operation_created``): the operation the
  handler then owns for its creator, with what the request asked for (seconds
  per video, videos, resolution: the response does not repeat them), before its
  name is relayed;
- an operation's poll (``operation_bill``): the first response that shows it
  done is its bill; the handler stores it under a ``request_id`` derived from the
  operation's name (so no later poll, on this replica or another, stores it twice),
  owns its videos for the creator and marks the operation billed, all before
  relaying the response.

The pure reading of requests and responses is ``metering.media``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from ..metering.media import (
    VideoRequest,
    images_requested,
    operation_outcome,
    summarize_operation,
    video_request,
)
from ..metering.openai import openai_images_requested
from ..metering.parsers import ResponseSummary, nonempty_str
from ..metering.records import Principal, Usage
from ..pricing import Catalog
from ..storage.accounts import OwnedResource
from ..storage.schema import ResourceKind
from .auth import Authenticator
from .routes import Action

__all__ = [
    "OperationBill",
    "operation_bill",
    "operation_created",
    "priced_per_image",
    "requested_usage",
]

# Set in an operation's state once its bill and its videos' owners are stored.
_BILLED: Final = "billed"


def priced_per_image(catalog: Catalog, model: str | None) -> bool:
    """Whether the catalog prices ``model`` per image today (Imagen), not by the token."""
    entry = catalog.entry(model, datetime.now(UTC)) if model else None
    return entry is not None and entry.per_image is not None


def requested_usage(action: Action, body: object, *, per_image: bool = False) -> Usage | None:
    """What a media create asks for, for its budget reservation; None for other calls.

    ``per_image``: an OpenAI-compatible image generation's model is priced per image;
    otherwise it has no media usage to reserve by (None: estimated like a generation).
    """
    if action is Action.PREDICT:
        return Usage(images=images_requested(body))
    if action is Action.OPENAI_IMAGES:
        return Usage(images=openai_images_requested(body)) if per_image else None
    if action is Action.PREDICT_LONG_RUNNING:
        return video_request(body).usage()
    return None


def operation_created(answer: object, body: object) -> tuple[str, dict[str, Any]] | None:
    """The operation a ``predictLongRunning`` answer names, and the state to own it with
    (the request's video parameters, for its bill); None when it names none."""
    name = nonempty_str(answer.get("name")) if isinstance(answer, dict) else None
    return None if name is None else (name, video_request(body).to_state())


@dataclass(frozen=True, slots=True)
class OperationBill:
    """What a done operation's first poll stores and owns.

    ``owner``/``model``: the operation's creator and model (None: not created through
    this proxy; the caller is billed). ``videos``: the generated files, to own as the
    creator's; ``state``: the operation's state to store, marked billed (None when
    there is no stored operation to mark).
    """

    resource: str
    summary: ResponseSummary
    owner: Principal | None = None
    model: str | None = None
    videos: tuple[str, ...] = ()
    state: dict[str, Any] | None = field(default=None)


async def operation_bill(
    auth: Authenticator, name: str, owned: OwnedResource | None, answer: object
) -> OperationBill | None:
    """The bill of a polled operation, the first time a poll shows it done; else None.

    ``owned`` is what admission's owner check found (None in passthrough mode, where
    nothing is checked: the operation is then looked up without a check). A stored
    operation not yet marked billed is read again from the database before it bills:
    another replica may have billed it since this one cached the row.
    """
    outcome = operation_outcome(answer)
    if not outcome.done:
        return None
    found = owned or await auth.resource(ResourceKind.OPERATION, name)
    if found is not None and found.state.get(_BILLED) is not True:
        found = await auth.resource(ResourceKind.OPERATION, name, fresh=True) or found
    if found is None:
        # Not created through this proxy: the documented default length, flagged.
        summary = summarize_operation(outcome, VideoRequest(defaulted=True))
        return OperationBill(resource=name, summary=summary)
    if found.state.get(_BILLED) is True:
        return None
    return OperationBill(
        resource=name,
        summary=summarize_operation(outcome, VideoRequest.from_state(found.state)),
        owner=found.owner,
        model=found.model,
        videos=outcome.videos,
        state={**found.state, _BILLED: True},
    )
