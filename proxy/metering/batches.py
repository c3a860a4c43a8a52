"""Batch API results: what the meter reads from a batch and from its responses file.

Google bills a batch's requests at the batch rate when it runs, but the proxy only
learns their usage when the results pass through it, in one of two ways:

- inline, in the long-running Operation a ``GET batches/{id}`` (or a list of batches)
  answers once the batch is done: ``metadata.output.inlinedResponses.inlinedResponses``,
  repeated as ``response.inlinedResponses.inlinedResponses`` (real responses carry
  both; ``inline_results`` reads the first it finds, so nothing is counted twice);
- as a JSONL responses file (``metadata.output.responsesFile``) the client downloads,
  one ``{"key", "response" | "error"}`` line per request, which ``ResultLines`` splits
  incrementally as the download streams by, keeping only the unfinished line.

Each result, inline item or line, becomes a ``BatchResult``: its position in the
batch, its key, the ``ResponseSummary`` of its GenerateContentResponse (or, in an
embeddings batch, EmbedContentResponse) read by ``parsers``, or the HTTP status of the
``error`` it failed with. ``server.batches`` turns results into records with
``result_request_id``, which is deterministic, so a result seen twice (a second poll,
another replica) is stored once.

``input_files`` reads the input file(s) a create request names, in every spelling
Google's JSON parser accepts, for the proxy to check their owner.

Shapes: google-genai 3.6.1 ``batches.py`` (``_BatchJob_from_mldev``,
``_BatchJobDestination_from_mldev``, ``_InlinedResponse_from_mldev``), Google's Batch
API guide (https://ai.google.dev/gemini-api/docs/batch-api) and recorded responses, as
cited in ``proxy/emulator/batches.py`` (all read 2026-11-29). Nothing here raises on
bytes from the wire.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

from .parsers import (
    ResponseSummary,
    nonempty_str,
    parse_json,
    summarize_embed,
    summarize_generate,
)

__all__ = [
    "MAX_LINE_BYTES",
    "BatchResult",
    "InputRefused",
    "ResultLines",
    "grpc_http_status",
    "inline_results",
    "input_files",
    "operation_model",
    "operation_name",
    "read_result",
    "responses_file",
    "result_request_id",
]

# A fixed namespace, so every replica derives the same request id for a result.
_NAMESPACE: Final = uuid.UUID("6f7c9e0a-5b1d-4c1e-9a57-0b2f1d6c3e84")

# google.rpc.Code -> the HTTP status Google maps it to (google/rpc/code.proto).
_GRPC_HTTP: Final = {
    0: 200,
    1: 499,
    2: 500,
    3: 400,
    4: 504,
    5: 404,
    6: 409,
    7: 403,
    8: 429,
    9: 400,
    10: 409,
    11: 400,
    12: 501,
    13: 500,
    14: 503,
    15: 500,
    16: 401,
}
# A responses-file line longer than this is not kept whole: it is counted as one
# unreadable result, so a broken file cannot make the proxy buffer it all.
MAX_LINE_BYTES: Final = 64 * 1024**2


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One request's result in a batch, as the meter reads it."""

    index: int  # position in the batch: request order, which both outputs keep
    key: str | None
    summary: ResponseSummary
    # 200 for a response; for an ``error`` the HTTP equivalent of its code
    status: int = 200


def result_request_id(batch: str, index: int) -> str:
    """The request id of the record of result ``index`` of ``batch`` (``batches/...``)."""
    return uuid.uuid5(_NAMESPACE, f"{batch}#{index}").hex


def grpc_http_status(code: object) -> int:
    """The HTTP status of a ``google.rpc.Status`` code (an HTTP code is kept as it is)."""
    if type(code) is not int:
        return 500
    if 100 <= code <= 599:
        return code
    return _GRPC_HTTP.get(code, 500)


def _get(obj: object, camel: str, snake: str) -> object:
    if not isinstance(obj, dict):
        return None
    return obj[camel] if camel in obj else obj.get(snake)


def read_result(item: object, index: int) -> BatchResult:
    """An inlined response (``{"response", "metadata": {"key"}}``) or a responses-file
    line (``{"key", "response"}``), ``error`` in place of ``response`` when it failed."""
    key = nonempty_str(_get(item, "key", "key")) or nonempty_str(
        _get(_get(item, "metadata", "metadata"), "key", "key")
    )
    error = _get(item, "error", "error")
    response = _get(item, "response", "response")
    if response is None and isinstance(error, dict):
        return BatchResult(index, key, ResponseSummary(), grpc_http_status(error.get("code")))
    if not isinstance(item, dict) or not isinstance(response, dict):
        return BatchResult(index, key, ResponseSummary(parse_error=True))
    if "embedding" in response:
        # An embeddings batch's EmbedContentResponse (the SDK tells them apart the same
        # way: ``t_recv_batch_job_destination``). Its request is not at hand, so a
        # response without usage is flagged, not estimated.
        return BatchResult(index, key, summarize_embed(response, None))
    return BatchResult(index, key, summarize_generate(response))


def _output(operation: object) -> list[object]:
    """Where a batch Operation may carry its output, in the order they are read."""
    metadata = _get(operation, "metadata", "metadata")
    return [_get(metadata, "output", "output"), _get(operation, "response", "response")]


def inline_results(operation: object) -> list[BatchResult] | None:
    """The inline results of a done batch, None when the Operation carries none."""
    for output in _output(operation):
        holder = _get(output, "inlinedResponses", "inlined_responses")
        items = _get(holder, "inlinedResponses", "inlined_responses")
        if isinstance(items, list):
            return [read_result(item, index) for index, item in enumerate(items)]
    return None


def responses_file(operation: object) -> str | None:
    """The responses file (``files/...``) a done batch wrote its results to, if any."""
    for output in _output(operation):
        name = nonempty_str(_get(output, "responsesFile", "responses_file"))
        if name is not None:
            return name
    return None


def operation_name(operation: object) -> str | None:
    return nonempty_str(_get(operation, "name", "name"))


def operation_model(operation: object) -> str | None:
    """The model a batch Operation names, without its ``models/`` prefix."""
    model = nonempty_str(_get(_get(operation, "metadata", "metadata"), "model", "model"))
    if model is None:
        return None
    return model.removeprefix("models/") or None


class InputRefused(ValueError):
    """A create request whose input file cannot be read the way Google will read it."""


_FILE_NAMES: Final = ("fileName", "file_name")


def input_files(body: object) -> set[str]:
    """Every input file a ``batchGenerateContent`` body names, in every spelling
    (``batch``, ``inputConfig``/``input_config``, ``fileName``/``file_name``).

    All of them, not the one Google would pick: the proxy checks each. Raises
    ``InputRefused`` when one is present but not a non-empty string.
    """
    found: set[str] = set()
    for config_name in ("inputConfig", "input_config"):
        batch = body.get("batch") if isinstance(body, dict) else None
        config = batch.get(config_name) if isinstance(batch, dict) else None
        if not isinstance(config, dict):
            continue
        for name in _FILE_NAMES:
            if name not in config or config[name] is None:
                continue
            value = nonempty_str(config[name])
            if value is None:
                raise InputRefused("batch.input_config.file_name must be a non-empty string")
            found.add(value)
    return found


class ResultLines:
    """A responses file's lines as ``BatchResult``s, however the download is cut.

    ``feed`` takes each chunk as it arrives and returns the results of the lines
    it completed; ``close`` the last line if the file did not end with a newline.
    Blank lines are skipped (they are not results); a line that is not JSON, or
    that outgrows ``MAX_LINE_BYTES``, is one result with ``parse_error``.
    """

    __slots__ = ("_buf", "_index", "_overlong")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._index = 0
        self._overlong = False

    @property
    def seen(self) -> int:
        """How many results were read so far."""
        return self._index

    def feed(self, chunk: bytes) -> list[BatchResult]:
        out: list[BatchResult] = []
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._keep(chunk[start:])
                return out
            self._keep(chunk[start:end])
            self._line(out)
            start = end + 1

    def close(self) -> list[BatchResult]:
        out: list[BatchResult] = []
        self._line(out)
        return out

    def _keep(self, piece: bytes) -> None:
        if self._overlong:
            return
        if len(self._buf) + len(piece) > MAX_LINE_BYTES:
            self._overlong = True
            self._buf.clear()
            return
        self._buf.extend(piece)

    def _line(self, out: list[BatchResult]) -> None:
        if self._overlong:
            out.append(BatchResult(self._index, None, ResponseSummary(parse_error=True)))
            self._index += 1
        elif self._buf.strip():
            out.append(read_result(parse_json(self._buf), self._index))
            self._index += 1
        self._buf.clear()
        self._overlong = False
