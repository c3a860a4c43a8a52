"""Imagen and Veo at the handler: who owns an operation and its videos, and when it bills.

``server.forward`` calls these at four points of a media call:

- admission (``resource_kind``, ``check_inputs``): a Veo operation's poll,
  cancel or delete, and a generated file's download, name an owned resource
  (``routes.Route.resource``), and a video extension names its input video's
  file: each is checked with ``Authenticator.check_resource`` before anything
  is forwarded;
- the budget reservation (``requested_usage``): the images or video seconds the
  request asks for, priced like a record;
- a ``predictLongRunning`` answer (``register_operation``): the operation's
  creator is committed, with what the request asked for (seconds per video,
  videos, resolution: the response does not repeat them), before its name is
  relayed;
- an operation's poll (``operation_bill``): the first response that shows it
  done is its bill, under a ``request_id`` derived from the operation's name so
  that no later poll, on this replica or another, stores it twice; its videos
  become the creator's files before the response is relayed.

The pure reading of requests and responses is ``metering.media``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Final

from ..errors import InvalidArgument
from ..metering.media import (
    VideoRequest,
    images_requested,
    operation_outcome,
    referenced_files,
    summarize_operation,
    video_request,
)
from ..metering.parsers import ResponseSummary, nonempty_str
from ..metering.records import Principal, Usage
from ..storage.accounts import OwnedResource
from ..storage.schema import ResourceKind
from .auth import Authenticator
from .routes import Action

__all__ = [
    "OperationBill",
    "check_inputs",
    "operation_bill",
    "operation_record_id",
    "register_operation",
    "requested_usage",
    "resource_kind",
]

log = logging.getLogger("gemini_meter.proxy")

# Fixed, so every replica derives the same request_id for one operation's bill.
_BILL_NAMESPACE: Final = uuid.UUID("6f1d7c52-6c1e-4c8e-9a51-3f0a3b6a9e17")
# Set in an operation's state once its bill and its videos' owners are stored.
_BILLED: Final = "billed"

_RESOURCE_KINDS: Final = {
    Action.OPERATION_GET: ResourceKind.OPERATION,
    Action.OPERATION_OTHER: ResourceKind.OPERATION,
    Action.FILE_DOWNLOAD: ResourceKind.FILE,
}


def resource_kind(action: Action) -> ResourceKind | None:
    """The kind of owned resource a route's path names, if it names one."""
    return _RESOURCE_KINDS.get(action)


async def check_inputs(
    auth: Authenticator, action: Action, body: object, principal: Principal
) -> None:
    """Refuse a video create that extends a video the caller does not own (404), or one
    whose input URI names no file the proxy can check (400)."""
    if action is not Action.PREDICT_LONG_RUNNING:
        return
    for name in referenced_files(body):
        if name is None:
            raise InvalidArgument(
                "Gemini Meter could not check this request: instances[].video.uri must name "
                "a file (files/{id} or its URI)."
            )
        await auth.check_resource(ResourceKind.FILE, name, principal)


def requested_usage(action: Action, body: object) -> Usage | None:
    """What a media create asks for, for its budget reservation; None for other calls."""
    if action is Action.PREDICT:
        return Usage(images=images_requested(body))
    if action is Action.PREDICT_LONG_RUNNING:
        return video_request(body).usage()
    return None


def operation_record_id(name: str) -> str:
    """The one ``request_id`` an operation's bill is stored under, on every replica."""
    return uuid.uuid5(_BILL_NAMESPACE, name).hex


async def register_operation(
    auth: Authenticator, principal: Principal, model: str | None, answer: object, body: object
) -> str | None:
    """Own the operation a ``predictLongRunning`` answer names; returns its name.

    Called before the answer is relayed: the creator is the only one who may
    poll it, and the request's video parameters wait in its state for the bill.
    """
    name = nonempty_str(answer.get("name")) if isinstance(answer, dict) else None
    if name is None:
        return None
    await auth.commit_resource(
        ResourceKind.OPERATION, name, principal, model=model, state=video_request(body).to_state()
    )
    return name


@dataclass(frozen=True, slots=True)
class OperationBill:
    """The record a done operation's first poll stores, and whom it bills (None: the
    caller, for an operation not created through this proxy)."""

    request_id: str
    resource: str
    summary: ResponseSummary
    owner: Principal | None


async def operation_bill(
    auth: Authenticator, name: str, owned: OwnedResource | None, answer: object
) -> OperationBill | None:
    """The bill of a polled operation, the first time a poll shows it done; else None.

    ``owned`` is what admission's ownership check returned (None in passthrough
    mode, where nothing is checked; the operation is then looked up without a
    check, for its creator and request). Before returning, the generated videos
    are committed as the creator's files and the operation marked billed, so the
    client never holds a video URI whose owner is not stored. An operation this
    proxy did not create bills the caller, at the default duration, flagged.
    """
    outcome = operation_outcome(answer)
    if not outcome.done:
        return None
    found = owned or await auth.resource(ResourceKind.OPERATION, name)
    if found is not None and found.state.get(_BILLED) is not True:
        # Another replica may have billed it since this one cached the row: read it
        # again, once, now that it would bill (a poll of a running one never does).
        found = await auth.resource(ResourceKind.OPERATION, name, fresh=True) or found
    if found is None:
        request = VideoRequest(defaulted=True)
    elif found.state.get(_BILLED) is True:
        return None
    else:
        request = VideoRequest.from_state(found.state)
        for video in outcome.videos:
            await auth.commit_resource(ResourceKind.FILE, video, found.owner, model=found.model)
        try:
            await auth.update_resource_state(
                ResourceKind.OPERATION, name, {**found.state, _BILLED: True}
            )
        except Exception as exc:  # the bill's request_id keeps a second one out anyway
            log.warning("operation state not updated: %s", type(exc).__name__)
    return OperationBill(
        request_id=operation_record_id(name),
        resource=name,
        summary=summarize_operation(outcome, request),
        owner=found.owner if found is not None else None,
    )
