"""The Batch API through the proxy: who may reach a batch, and the records of its results.

``server.admission`` and ``server.forward`` call in here for the routes ``routes.classify``
gives a ``BATCH_*`` or ``FILE_DOWNLOAD`` action:

- at admission, ``check_batch_call`` checks the owner of the batch a path names (404 for
  anyone else, never forwarded) and of the input file a create names (the references
  walker checks it too, with every other file and cache a body names);
  ``download_owned`` reads the state of a responses file whose download admission
  checked like any file's;
- ``answer`` reads the whole JSON answer of a create (whose batch it registers as owned
  by the caller before the name reaches the client), of a get (whose inline results it
  records) and of a list (which it filters to the caller's own batches, recording their
  inline results too). A done batch that names its responses file registers that file
  as owned by the batch's owner, with the batch in its state, so its download is
  checked like any file and metered;
- ``download_tap`` reads a responses file line by line as it streams to the client
  (``metering.batches.ResultLines``), recording each result as its line completes.

Each result is one ``UsageRecord`` (endpoint ``batch.result``, tier ``batch``, the
batch as ``resource``) billed to the batch's owner, with a deterministic request id:
the database keeps one however often it is seen, and this process hands each to the
recorder once (``BatchMeter`` remembers which), so budgets count it once. Once every
result of a batch has been journaled, the batch (or its responses file) is marked
``recorded`` in its resource state, in the background; a process that sees a batch's
results for the first time reads that state afresh (one short read per batch and
process), so another replica's recording is not counted against budgets again.

Inline requests of a create are in ``call.parsed`` like any body the proxy reads, for
the checks of the files and caches they name (``server.references``, where present).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..errors import InvalidArgument, MethodNotAllowed
from ..metering.batches import (
    BatchResult,
    InputRefused,
    ResultLines,
    inline_results,
    input_files,
    operation_model,
    operation_name,
    responses_file,
    result_request_id,
)
from ..metering.records import EndpointKind, Principal, Usage, UsageRecord
from ..settings import AuthMode
from ..storage.accounts import OwnedResource
from ..storage.schema import ResourceKind
from .auth import Authenticator
from .references import filtered_listing
from .routes import Action, Route
from .typedefs import ApiRequest, authenticator_key, batch_meter_key, recorder_key

log = logging.getLogger("gemini_meter.batches")

# The tier a batch's results are billed at (``pricing.cost`` applies the catalog's
# batch factor to it).
BATCH_TIER = "batch"
_REMEMBERED = 100_000
# Results of a responses file recorded between two turns of the event loop: each costs
# about half a millisecond on the test machine (pricing, metrics, journal, and the
# writer's insert later), so a slice holds the loop for some 15 ms at most.
_SLICE = 32
_CREATES = frozenset({Action.BATCH_CREATE, Action.BATCH_EMBED_CREATE})
# The resource-state flag of a batch (or responses file) whose every result is journaled.
_RECORDED = "recorded"


class BatchMeter:
    """This process's memory of batch results: which it recorded, which files it owns.

    Bounded LRUs; the database (unique request ids, resource state) is the authority
    across processes. State writes run in the background, tracked until ``close``.
    """

    def __init__(self) -> None:
        self._recorded: OrderedDict[str, None] = OrderedDict()
        self._files: OrderedDict[str, tuple[str, Principal, str | None]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def fresh(self, request_id: str) -> bool:
        """True the first time this process sees ``request_id`` (and remembers it)."""
        if request_id in self._recorded:
            self._recorded.move_to_end(request_id)
            return False
        self._recorded[request_id] = None
        if len(self._recorded) > _REMEMBERED:
            self._recorded.popitem(last=False)
        return True

    def seen(self, request_id: str) -> bool:
        """Whether this process already handed ``request_id`` on (nothing remembered)."""
        return request_id in self._recorded

    def forget(self, request_id: str) -> None:
        """A record the journal refused: a later sighting must hand it on again."""
        self._recorded.pop(request_id, None)

    def note_file(self, file: str, batch: str, owner: Principal, model: str | None) -> bool:
        """Remember whose batch wrote ``file``; True the first time."""
        new = file not in self._files
        self._files[file] = (batch, owner, model)
        self._files.move_to_end(file)
        if len(self._files) > _REMEMBERED:
            self._files.popitem(last=False)
        return new

    def file_batch(self, file: str) -> tuple[str, Principal, str | None] | None:
        return self._files.get(file)

    def later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine in the background, logged if it fails."""
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("a batch state write failed: %s", type(task.exception()).__name__)

    async def close(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


@dataclass(slots=True)
class Owned:
    """What admission learned about the batch or file a call names."""

    owner: Principal | None  # None in passthrough mode (nothing is checked there)
    model: str | None
    state: dict[str, Any]


def _file_name(value: str) -> str:
    """The canonical ``files/{id}`` of an input file name, or ``InvalidArgument``."""
    name = value.split("?", 1)[0].rstrip("/")
    if "://" in name and "/files/" in name:
        name = "files/" + name.rsplit("/files/", 1)[1]
    rest = name.removeprefix("files/")
    if name == rest or not rest or "/" in rest:
        raise InvalidArgument(
            "Gemini Meter could not check this batch: its input file must be named files/{id}."
        )
    return name


async def check_batch_call(
    request: ApiRequest, route: Route, principal: Principal, body: object
) -> Owned | None:
    """Refuse what the caller may not do on a batch or file; what admission learned."""
    auth = request.app[authenticator_key]
    action = route.action
    if action is Action.BATCH_UNKNOWN:
        raise MethodNotAllowed(
            f"{request.method} on this batches path is not supported through Gemini Meter."
        )
    if action in _CREATES:
        try:
            files = input_files(body)
        except InputRefused as exc:
            raise InvalidArgument(f"Gemini Meter could not check this request: {exc}.") from exc
        for name in sorted(files):
            await auth.check_resource(ResourceKind.FILE, _file_name(name), principal)
        return None
    if route.resource is None:
        return None
    owned = await auth.check_resource(ResourceKind.BATCH, route.resource, principal)
    if owned is None:
        return Owned(owner=None, model=None, state={})
    return Owned(owner=owned.owner, model=owned.model, state=dict(owned.state or {}))


async def download_owned(auth: Authenticator, route: Route, found: OwnedResource | None) -> Owned:
    """What a file download needs to be metered, once admission checked its owner
    (``found``, None in passthrough mode): for a batch's responses file not yet recorded,
    its state read afresh, since another replica may have recorded it (downloads are few).
    """
    if found is None:
        return Owned(owner=None, model=None, state={})
    state = dict(found.state or {})
    if route.resource is not None and "batch" in state and not state.get(_RECORDED):
        fresh = await auth.resource(ResourceKind.FILE, route.resource, fresh=True)
        if fresh is not None:
            state = dict(fresh.state or {})
    return Owned(owner=found.owner, model=found.model, state=state)


@dataclass(slots=True)
class Call:
    """The parts of ``admission.Call`` the batch code reads."""

    route: Route
    principal: Principal
    owned: Owned | None
    started: float


def result_record(
    result: BatchResult, *, batch: str, owner: Principal, model: str | None, call: Call
) -> UsageRecord:
    """The record of one batch result: zero tokens (and its status) when it failed."""
    summary = result.summary
    record = UsageRecord(
        request_id=result_request_id(batch, result.index),
        created_at=datetime.now(UTC),
        principal=owner,
        model=model or summary.model,
        endpoint=EndpointKind.BATCH_RESULT,
        streamed=call.route.action is Action.FILE_DOWNLOAD,
        upstream_status=result.status,
        # The read that carried the result, up to the result: a result has no first byte
        # of its own, so no ttfb (and no time-to-first-byte observation per result).
        latency_seconds=time.perf_counter() - call.started,
        ttfb_seconds=None,
        response_id=summary.response_id,
        requested_service_tier=BATCH_TIER,
        effective_service_tier=BATCH_TIER,
        code_execution_calls=summary.code_execution_calls,
        code_execution_errors=summary.code_execution_errors,
        parse_error=summary.parse_error and result.status < 400,
        resource=batch,
    )
    record.usage = summary.usage or Usage()
    return record


@dataclass(slots=True)
class Outcome:
    """Whether any record handed on by one call (or one download) was refused."""

    refused: bool = False


def _record(
    app: web.Application,
    results: Iterable[BatchResult],
    *,
    batch: str,
    owner: Principal,
    model: str | None,
    call: Call,
    outcome: Outcome,
) -> int:
    """Hand each result this process has not recorded yet to the recorder; how many were.

    A record the journal refused is forgotten, to be recorded again at its next
    sighting, and ``outcome`` says so."""
    meter = app[batch_meter_key]
    recorder = app[recorder_key]
    count = 0
    for result in results:
        record = result_record(result, batch=batch, owner=owner, model=model, call=call)
        if not meter.fresh(record.request_id):
            continue
        count += 1
        if not recorder.finish(record):
            meter.forget(record.request_id)
            outcome.refused = True
    return count


async def _mark_recorded(
    app: web.Application, kind: ResourceKind, name: str, state: dict[str, Any], outcome: Outcome
) -> None:
    """Mark ``name`` recorded in its resource state, unless a record of it was refused."""
    if not outcome.refused:
        await app[authenticator_key].update_resource_state(kind, name, {**state, _RECORDED: True})


async def _register_file(
    app: web.Application, file: str, batch: str, owner: Principal, model: str | None
) -> None:
    """Own a batch's responses file by the batch's owner, before its name is relayed."""
    if not app[batch_meter_key].note_file(file, batch, owner, model):
        return
    await app[authenticator_key].commit_resource(
        ResourceKind.FILE, file, owner, model=model, state={"batch": batch}
    )


async def _done_batch(
    app: web.Application, operation: object, call: Call, owned: Owned | None
) -> None:
    """Register the responses file and record the inline results of one batch Operation."""
    batch = operation_name(operation)
    if batch is None:
        return
    owner = (owned.owner if owned is not None else None) or call.principal
    model = operation_model(operation) or (owned.model if owned is not None else None)
    file = responses_file(operation)
    if file is not None:
        await _register_file(app, file, batch, owner, model)
    state = owned.state if owned is not None else {}
    if state.get(_RECORDED):
        return
    results = inline_results(operation)
    if results is None:
        return
    meter = app[batch_meter_key]
    if owned is not None and owned.owner is not None:
        if any(not meter.seen(result_request_id(batch, r.index)) for r in results):
            # The first sighting of these results in this process: another replica may
            # have recorded them (and counted them against budgets) already, which only
            # the row says. One read per batch and process; later polls skip it.
            found = await app[authenticator_key].resource(ResourceKind.BATCH, batch, fresh=True)
            if found is not None and found.state.get(_RECORDED):
                for r in results:
                    meter.fresh(result_request_id(batch, r.index))
                return
    outcome = Outcome()
    count = _record(app, results, batch=batch, owner=owner, model=model, call=call, outcome=outcome)
    # Marked by the call that recorded them all.
    if owned is not None and owned.owner is not None and count == len(results):
        meter.later(_mark_recorded(app, ResourceKind.BATCH, batch, state, outcome))


async def answer(request: ApiRequest, call: Call, status: int, payload: object) -> bytes | None:
    """Act on the whole JSON answer of a create, get or list of batches.

    Returns the body to send instead of the upstream's (a filtered list), or None to
    relay it unchanged.
    """
    if status >= 400:
        return None
    app = request.app
    action = call.route.action
    auth = app[authenticator_key]
    if action in _CREATES:
        name = operation_name(payload)
        if name is not None:
            await auth.commit_resource(
                ResourceKind.BATCH, name, call.principal, model=call.route.model, state={}
            )
        return None
    if action is Action.BATCH_GET:
        await _done_batch(app, payload, call, call.owned)
        return None
    # BATCH_LIST: only the caller's own batches, each handled as a get of it.
    filtering = auth.mode is AuthMode.VIRTUAL_KEYS
    operations = payload.get("operations") if isinstance(payload, dict) else None
    if not isinstance(operations, list):
        # Nothing the proxy can filter: behind the shared key, pass on nothing of it.
        return filtered_listing(payload, "operations", []) if filtering else None
    names = {n for op in operations if (n := operation_name(op)) is not None}
    mine = await auth.owned_names(ResourceKind.BATCH, call.principal, names) if filtering else names
    kept = [op for op in operations if operation_name(op) in mine]
    for op in kept:
        owned = None
        if filtering and (inline_results(op) is not None or responses_file(op) is not None):
            name = operation_name(op)
            assert name is not None
            found = await auth.resource(ResourceKind.BATCH, name)
            if found is not None:
                owned = Owned(found.owner, found.model, dict(found.state or {}))
        await _done_batch(app, op, call, owned)
    return filtered_listing(payload, "operations", kept) if filtering else None


class DownloadTap:
    """Records a responses file's results line by line as the download streams by."""

    def __init__(
        self,
        app: web.Application,
        call: Call,
        batch: str,
        owner: Principal,
        model: str | None,
        state: dict[str, Any],
    ) -> None:
        self._app = app
        self._call = call
        self._batch = batch
        self._owner = owner
        self._model = model
        self._state = state
        self._lines = ResultLines()
        self._outcome = Outcome()
        # every line so far recorded by this download (none by an earlier one)
        self._all_handed = True

    async def feed(self, chunk: bytes) -> None:
        """Record the results of the lines ``chunk`` completes, ``_SLICE`` at a time: one
        network chunk can hold hundreds of lines, and recording each costs a fraction of a
        millisecond, so the event loop gets a turn between slices."""
        results = self._lines.feed(chunk)
        for start in range(0, len(results), _SLICE):
            if start:
                await asyncio.sleep(0)
            self._hand_on(results[start : start + _SLICE])

    def _hand_on(self, results: list[BatchResult]) -> None:
        if not results:
            return
        count = _record(
            self._app,
            results,
            batch=self._batch,
            owner=self._owner,
            model=self._model,
            call=self._call,
            outcome=self._outcome,
        )
        self._all_handed = self._all_handed and count == len(results)

    def finish(self, *, complete: bool) -> None:
        """Record the last line; mark the file recorded if every line was, here."""
        self._hand_on(self._lines.close())
        file = self._call.route.resource
        if complete and self._all_handed and file is not None and self._call.owned is not None:
            if self._call.owned.owner is not None:
                self._app[batch_meter_key].later(
                    _mark_recorded(self._app, ResourceKind.FILE, file, self._state, self._outcome)
                )


def download_tap(request: ApiRequest, call: Call) -> DownloadTap | None:
    """The tap for a file download if it is a batch's responses file not yet recorded."""
    file = call.route.resource
    if file is None:
        return None
    owned = call.owned
    if owned is not None and owned.owner is not None:
        batch = owned.state.get("batch")
        if not isinstance(batch, str) or owned.state.get(_RECORDED):
            return None
        return DownloadTap(request.app, call, batch, owned.owner, owned.model, owned.state)
    # Passthrough: only what this process saw named as a batch's responses file.
    seen = request.app[batch_meter_key].file_batch(file)
    if seen is None:
        return None
    batch, owner, model = seen
    return DownloadTap(request.app, call, batch, owner, model, {})
