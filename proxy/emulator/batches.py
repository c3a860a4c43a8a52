"""The Batch API: ``models/{m}:batchGenerateContent`` and ``:asyncBatchEmbedContent``,
``batches`` get, list, cancel and delete, and the download of a batch's responses file.

A self-contained block of the emulator (``app.create_emulator_app`` registers it with
``add_batch_routes``); the app's middleware has already checked the key and applied the
delay and failure triggers when these handlers run.

Wire shapes, from what google-genai 3.6.1 sends and parses (``batches.py``:
``_CreateBatchJobParameters_to_mldev``, ``_InlinedRequest_to_mldev``,
``_BatchJob_from_mldev``, ``_ListBatchJobsResponse_from_mldev``; ``_transformers.py``:
``t_job_state``, ``t_recv_batch_job_destination``), Google's Batch API guide
(https://ai.google.dev/gemini-api/docs/batch-api, its REST examples, read 2026-11-29) and
responses recorded from the real API (a GET of a succeeded inline batch of
gemini-2.5-flash-lite, 2025-12-03, in langchain4j's ``GoogleAiGeminiBatchChatModelTest``;
pending, running and succeeded GETs of a gemini-2.5-flash batch, 2025-12-10, published
with a Chinese walkthrough of the API; both read 2026-11-29):

- create: ``{"batch": {"displayName", "inputConfig": {"requests": {"requests":
  [{"request": GenerateContentRequest, "metadata": {"key": ...}}]}}}}`` or
  ``"inputConfig": {"fileName": "files/..."}`` (a JSONL file, one ``{"key", "request"}``
  or bare GenerateContentRequest per line). Fields are read in camelCase or snake_case
  (the REST examples send ``input_config``/``file_name``). The answer is a long-running
  Operation: ``{"name": "batches/{id}", "metadata": GenerateContentBatch}`` whose
  ``metadata`` has ``@type``, ``model``, ``displayName``, ``inputConfig`` (file input),
  ``createTime``, ``updateTime``, ``batchStats`` (int64 counts as strings), ``state``
  and ``name``.
- state: ``BATCH_STATE_PENDING`` for the first half of ``EmulatorConfig.batch_seconds``,
  ``BATCH_STATE_RUNNING`` for the rest, then ``BATCH_STATE_SUCCEEDED`` (or
  ``BATCH_STATE_FAILED`` / ``BATCH_STATE_EXPIRED`` when created with the trigger
  ``x-emulator-batch-outcome``; ``BATCH_STATE_CANCELLED`` once cancelled before the end).
- done: ``"done": true``, ``metadata.endTime``, and the output twice, as the recorded
  responses carry it: ``metadata.output`` (what the SDK reads into ``BatchJob.dest``) and
  ``response`` (``@type`` GenerateContentBatchOutput, what the REST guide reads). Inline
  input gives ``{"inlinedResponses": {"inlinedResponses": [{"response":
  GenerateContentResponse, "metadata": {"key"}} | {"error": Status, ...}]}}`` in request
  order; file input gives ``{"responsesFile": "files/batch-{id}"}``. A failed or expired
  batch has an ``error`` Status and no output.
- ``GET /{v}/batches`` lists Operations: ``{"operations": [...], "nextPageToken"}``
  (``pageSize``, ``pageToken``). ``POST /{v}/batches/{id}:cancel`` and ``DELETE
  /{v}/batches/{id}`` answer ``{}`` (google.protobuf.Empty).
- The responses file is a File (``source: GENERATED``, kept with the other files once a
  done batch names it) and downloads with ``GET /download/{v}/files/{id}:download?alt=media``
  (the guide's REST example) or ``GET /{v}/files/{id}:download?alt=media`` (what the SDK's
  ``files.download`` requests): JSONL, one line per request in request order,
  ``{"key", "response"}`` or ``{"key", "error"}`` (the line shape inspect_ai's
  ``_google_batch.py`` parses), written line by line (``x-emulator-chunk-delay-ms`` apart).

Each result is planned like a generateContent call (``generate.plan_generate``), so it
has the same deterministic usage; a request that generateContent would refuse is an
``error`` line instead. An embeddings batch (``asyncBatchEmbedContent``, what the SDK's
``batches.create_embeddings`` sends: ``inputConfig.requests.requests[].request`` an
EmbedContentRequest, or ``file_name``) is the same machinery with ``@type``
``EmbedContentBatch``/``EmbedContentBatchOutput`` and each result an EmbedContentResponse
with ``usageMetadata``, as ``embeddings.embed_one`` answers it (the SDK tells the two
outputs apart by the ``embedding`` in a response: ``t_recv_batch_job_destination``).
``EmulatorState.batch_ledger`` records every result served, with its ``usageMetadata``:
what a test compares the proxy's records with.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from aiohttp import web

from . import files
from .embeddings import embed_one
from .generate import plan_generate, whole_response
from .state import EmulatorState, emulator_state_key
from .triggers import chunk_delay
from .usage import MEDIA_TOKENS
from .wire import (
    DEFAULT_TIER,
    ApiError,
    Json,
    as_list,
    get_field,
    json_body,
    json_response,
    start_stream,
    timestamp,
)

__all__ = ["EmulatedBatch", "ServedResult", "add_batch_routes"]

_TYPE_PREFIX: Final = "type.googleapis.com/google.ai.generativelanguage.v1main."
BATCH_TYPE: Final = _TYPE_PREFIX + "GenerateContentBatch"
OUTPUT_TYPE: Final = _TYPE_PREFIX + "GenerateContentBatchOutput"
EMBED_BATCH_TYPE: Final = _TYPE_PREFIX + "EmbedContentBatch"
EMBED_OUTPUT_TYPE: Final = _TYPE_PREFIX + "EmbedContentBatchOutput"
Kind = Literal["generate", "embed"]
MAX_STORED_BATCHES: Final = 1_000
DEFAULT_PAGE_SIZE: Final = 50
OUTCOME_HEADER: Final = "x-emulator-batch-outcome"
Outcome = Literal["succeeded", "failed", "expired"]
_OUTCOMES: Final = ("succeeded", "failed", "expired")
# google.rpc.Code of a request generateContent would refuse, and its HTTP status.
_INVALID_ARGUMENT: Final = 3


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One request's result: a GenerateContentResponse, or the Status it failed with."""

    key: str | None
    response: Json | None = None
    error: Json | None = None

    def wire(self) -> Json:
        """The item as an inlined response (``metadata.key`` only when the request had one)."""
        body: Json = {"response": self.response} if self.response is not None else {}
        if self.error is not None:
            body["error"] = self.error
        if self.key is not None:
            body["metadata"] = {"key": self.key}
        return body

    def line(self) -> bytes:
        """The item as a line of the responses file."""
        body: Json = {} if self.key is None else {"key": self.key}
        if self.response is not None:
            body["response"] = self.response
        if self.error is not None:
            body["error"] = self.error
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"


@dataclass(frozen=True, slots=True)
class ServedResult:
    """A ledger line: one batch result as the emulator served it."""

    batch: str  # batches/{id}
    index: int  # position in the batch (request order)
    key: str | None
    via: Literal["get", "list", "download"]
    # the result's usageMetadata, None for a failed request
    usage: Json | None
    error: Json | None


@dataclass
class EmulatedBatch:
    name: str
    model: str
    display_name: str | None
    created: datetime
    started: float  # time.monotonic() at creation
    duration: float
    items: list[BatchItem]
    input_file: str | None  # files/... when created from a file, whose output is a file too
    outcome: Outcome = "succeeded"
    kind: Kind = "generate"
    cancelled_at: float | None = None
    ended: datetime | None = field(default=None)

    @property
    def responses_file(self) -> str | None:
        return None if self.input_file is None else f"files/batch-{self.name.split('/')[1]}"

    def state(self, now: float) -> str:
        if self.cancelled_at is not None:
            return "BATCH_STATE_CANCELLED"
        elapsed = now - self.started
        if elapsed < self.duration / 2:
            return "BATCH_STATE_PENDING"
        if elapsed < self.duration:
            return "BATCH_STATE_RUNNING"
        return f"BATCH_STATE_{self.outcome.upper()}"

    def done(self, now: float) -> bool:
        return self.state(now) not in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING")

    def end_time(self) -> datetime:
        if self.ended is None:
            if self.cancelled_at is not None:
                seconds = self.cancelled_at - self.started
            else:
                seconds = self.duration
            self.ended = self.created + timedelta(seconds=seconds)
        return self.ended

    def succeeded(self, now: float) -> bool:
        return self.state(now) == "BATCH_STATE_SUCCEEDED"


def add_batch_routes(router: web.UrlDispatcher, version: str, model: str) -> None:
    """Register the Batch API; ``version`` and ``model`` are the app's path patterns."""
    batch = r"{batch_id:[^/:]+}"
    router.add_post(f"/{version}/models/{model}:batchGenerateContent", create_batch)
    router.add_post(f"/{version}/models/{model}:asyncBatchEmbedContent", create_embed_batch)
    router.add_get(f"/{version}/batches", list_batches)
    router.add_get(f"/{version}/batches/{batch}", get_batch)
    router.add_post(f"/{version}/batches/{batch}:cancel", cancel_batch)
    router.add_delete(f"/{version}/batches/{batch}", delete_batch)
    file_id = r"{file_id:[^/:]+}"
    router.add_get(f"/download/{version}/files/{file_id}:download", download_file)
    router.add_get(f"/{version}/files/{file_id}:download", download_file)


def requested_outcome(request: web.Request) -> Outcome:
    """The ``x-emulator-batch-outcome`` trigger: how a batch created with it ends."""
    raw = request.headers.get(OUTCOME_HEADER, "succeeded").strip().lower()
    for outcome in _OUTCOMES:
        if raw == outcome:
            return outcome
    raise ApiError(400, f"{OUTCOME_HEADER} must be one of {', '.join(_OUTCOMES)}.")


def _result(
    state: EmulatorState, kind: Kind, model: str, request: object, key: str | None
) -> BatchItem:
    if kind == "embed":
        try:
            return BatchItem(key=key, response=embed_one(request, MEDIA_TOKENS))
        except ValueError as exc:
            return _failed(key, str(exc))
    if not isinstance(request, dict):
        return _failed(key, "Invalid request: expected a GenerateContentRequest object.")
    try:
        plan = plan_generate(state, request, model)
    except ApiError as exc:
        return _failed(key, exc.message)
    return BatchItem(key=key, response=whole_response(plan))


def _failed(key: str | None, message: str) -> BatchItem:
    return BatchItem(key=key, error={"code": _INVALID_ARGUMENT, "message": message})


def _key(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _inline_items(
    state: EmulatorState, kind: Kind, model: str, requests: object
) -> list[BatchItem]:
    items = []
    for entry in as_list(get_field(requests, "requests")):
        key = _key(get_field(get_field(entry, "metadata"), "key"))
        items.append(_result(state, kind, model, get_field(entry, "request"), key))
    return items


def _file_items(state: EmulatorState, kind: Kind, model: str, file_name: str) -> list[BatchItem]:
    data = state.file_data.get(file_name)
    if data is None:
        raise files.missing_file(file_name.removeprefix("files/"))
    items = []
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            items.append(_failed(None, "Invalid JSON in the input file."))
            continue
        if isinstance(line, dict) and get_field(line, "request") is not None:
            items.append(_result(state, kind, model, line["request"], _key(line.get("key"))))
        else:
            items.append(_result(state, kind, model, line, None))
    return items


async def create_batch(request: web.Request) -> web.StreamResponse:
    return await _create(request, "generate")


async def create_embed_batch(request: web.Request) -> web.StreamResponse:
    return await _create(request, "embed")


async def _create(request: web.Request, kind: Kind) -> web.StreamResponse:
    state = request.app[emulator_state_key]
    outcome = requested_outcome(request)
    body = await json_body(request)
    batch = get_field(body, "batch")
    config = get_field(batch, "inputConfig")
    model = request.match_info["model"]
    file_name = get_field(config, "fileName")
    requests = get_field(config, "requests")
    if isinstance(file_name, str) and file_name:
        items = _file_items(state, kind, model, file_name)
    elif requests is not None:
        items = _inline_items(state, kind, model, requests)
    else:
        raise ApiError(400, "* batch.input_config: either requests or file_name is required")
    if not items:
        raise ApiError(400, "* batch.input_config: the batch has no requests")
    display = get_field(batch, "displayName")
    emulated = EmulatedBatch(
        name=f"batches/{secrets.token_hex(16)}",
        model=model,
        display_name=display if isinstance(display, str) else None,
        created=datetime.now(UTC),
        started=time.monotonic(),
        duration=state.config.batch_seconds,
        items=items,
        input_file=file_name if isinstance(file_name, str) and file_name else None,
        outcome=outcome,
        kind=kind,
    )
    state.batches[emulated.name] = emulated
    while len(state.batches) > MAX_STORED_BATCHES:
        state.batches.popitem(last=False)
    if emulated.responses_file is not None:
        state.responses_files[emulated.responses_file] = emulated.name
    return json_response(_operation(state, emulated, time.monotonic(), via=None), DEFAULT_TIER)


def _lookup(request: web.Request) -> EmulatedBatch:
    state = request.app[emulator_state_key]
    name = f"batches/{request.match_info['batch_id']}"
    found = state.batches.get(name)
    if found is None:
        raise ApiError(404, "Requested entity was not found.")
    return found


def _stats(batch: EmulatedBatch, now: float) -> Json:
    count = str(len(batch.items))
    if not batch.done(now):
        return {"requestCount": count, "pendingRequestCount": count}
    if not batch.succeeded(now):
        return {"requestCount": count}
    failed = sum(1 for item in batch.items if item.error is not None)
    stats: Json = {"requestCount": count}
    if failed < len(batch.items):
        stats["successfulRequestCount"] = str(len(batch.items) - failed)
    if failed:
        stats["failedRequestCount"] = str(failed)
    return stats


def _output(state: EmulatorState, batch: EmulatedBatch, via: Literal["get", "list"]) -> Json:
    if batch.responses_file is not None:
        if batch.responses_file not in state.files:
            state.store_file(_responses_file(batch, batch.responses_file))
        return {"responsesFile": batch.responses_file}
    for index, item in enumerate(batch.items):
        state.batch_ledger.append(_served(batch, index, item, via))
    return {"inlinedResponses": {"inlinedResponses": [item.wire() for item in batch.items]}}


def _responses_file(batch: EmulatedBatch, name: str) -> files.EmulatedFile:
    """The File a done batch wrote its results to (its bytes are served by ``download_file``
    as they are written, so ``data`` stays None)."""
    ended = timestamp(batch.end_time())
    resource: Json = {
        "name": name,
        "mimeType": "application/jsonl",
        "sizeBytes": str(sum(len(item.line()) for item in batch.items)),
        "createTime": ended,
        "updateTime": ended,
        "state": "ACTIVE",
        "source": "GENERATED",
    }
    return files.EmulatedFile(name, resource)


def _served(
    batch: EmulatedBatch, index: int, item: BatchItem, via: Literal["get", "list", "download"]
) -> ServedResult:
    usage = item.response.get("usageMetadata") if item.response is not None else None
    return ServedResult(batch.name, index, item.key, via, usage, item.error)


def _operation(
    state: EmulatorState,
    batch: EmulatedBatch,
    now: float,
    via: Literal["get", "list"] | None,
) -> Json:
    embed = batch.kind == "embed"
    metadata: Json = {
        "@type": EMBED_BATCH_TYPE if embed else BATCH_TYPE,
        "model": f"models/{batch.model}",
    }
    if batch.display_name is not None:
        metadata["displayName"] = batch.display_name
    if batch.input_file is not None:
        metadata["inputConfig"] = {"fileName": batch.input_file}
    operation: Json = {"name": batch.name, "metadata": metadata}
    output = None
    if via is not None and batch.succeeded(now):
        output = _output(state, batch, via)
        metadata["output"] = output
    metadata["createTime"] = timestamp(batch.created)
    done = batch.done(now)
    if done:
        metadata["endTime"] = timestamp(batch.end_time())
        metadata["updateTime"] = timestamp(batch.end_time())
    else:
        metadata["updateTime"] = timestamp(batch.created)
    metadata["batchStats"] = _stats(batch, now)
    metadata["state"] = batch.state(now)
    metadata["name"] = batch.name
    if done:
        operation["done"] = True
        if output is not None:
            output_type = EMBED_OUTPUT_TYPE if embed else OUTPUT_TYPE
            operation["response"] = {"@type": output_type, **output}
        elif batch.outcome == "failed" and batch.cancelled_at is None:
            operation["error"] = {"code": 13, "message": "The batch failed."}
        elif batch.outcome == "expired" and batch.cancelled_at is None:
            operation["error"] = {"code": 4, "message": "The batch expired before it completed."}
    return operation


async def get_batch(request: web.Request) -> web.StreamResponse:
    batch = _lookup(request)
    state = request.app[emulator_state_key]
    return json_response(_operation(state, batch, time.monotonic(), via="get"), DEFAULT_TIER)


async def list_batches(request: web.Request) -> web.StreamResponse:
    state = request.app[emulator_state_key]
    try:
        size = int(request.query.get("pageSize", DEFAULT_PAGE_SIZE))
        start = int(request.query.get("pageToken") or 0)
    except ValueError:
        raise ApiError(400, "Invalid pageSize or pageToken.") from None
    if size <= 0:
        size = DEFAULT_PAGE_SIZE
    # Newest first, as Google lists operations.
    batches = list(reversed(state.batches.values()))
    page = batches[start : start + size]
    now = time.monotonic()
    body: Json = {"operations": [_operation(state, b, now, via="list") for b in page]}
    if start + size < len(batches):
        body["nextPageToken"] = str(start + size)
    return json_response(body, DEFAULT_TIER)


async def cancel_batch(request: web.Request) -> web.StreamResponse:
    batch = _lookup(request)
    now = time.monotonic()
    if not batch.done(now):
        batch.cancelled_at = now
    return json_response({}, DEFAULT_TIER)


async def delete_batch(request: web.Request) -> web.StreamResponse:
    batch = _lookup(request)
    state = request.app[emulator_state_key]
    del state.batches[batch.name]
    return json_response({}, DEFAULT_TIER)


async def download_file(request: web.Request) -> web.StreamResponse:
    """A batch's responses file, written line by line; any other file as ``files`` serves it."""
    state = request.app[emulator_state_key]
    name = f"files/{request.match_info['file_id']}"
    batch = state.batches.get(state.responses_files.get(name, ""))
    if batch is None or not batch.succeeded(time.monotonic()):
        return await files.download_file(request)
    if request.query.get("alt") != "media":
        raise ApiError(400, "Download requires alt=media.")
    response = await start_stream(request, "application/octet-stream", DEFAULT_TIER)
    delay = chunk_delay(request)
    for index, item in enumerate(batch.items):
        if index:
            await asyncio.sleep(delay)
        state.batch_ledger.append(_served(batch, index, item, "download"))
        await response.write(item.line())
    await response.write_eof()
    return response
