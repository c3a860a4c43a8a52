"""Incremental decoders and usage taps for streamed responses.

``server.forward`` relays a streamed body to the client chunk by chunk and hands a
copy of each chunk to a tap from here; when the body ends it calls
``finish()`` and records the ``ResponseSummary``. Chunks are whatever the
network delivered: an event, a line, a UTF-8 sequence or a ``\\r\\n`` may be
split anywhere, so every decoder keeps its state between ``feed`` calls and
gives the same result however the body was cut.

Layers:

- ``SSEDecoder``: ``text/event-stream`` framing to event data payloads
  (Interactions streams, generateContent with ``alt=sse``).
- ``JSONArrayDecoder``: a streamed JSON array to its raw elements
  (generateContent's ``streamGenerateContent`` without ``alt=sse``).
- ``InteractionStreamTap`` / ``GenerateStreamTap``: decoder + the usage rules
  of each API, giving a ``ResponseSummary``.

All of it is on the hot path, over every response byte: scanning is done by
``bytes.find`` and compiled regexes (C loops), and Python code runs per line,
per bracket or per event, never per byte. Each event is ``json.loads``-ed
once, and only the usage object that ends up final is parsed into a
``Usage``. The decoders keep only the unfinished line or element between
chunks. Nothing here raises on bytes from the wire: garbage sets
``parse_error``.
"""

from __future__ import annotations

import re
from typing import Final, Protocol

from .parsers import (
    GenerateAccumulator,
    ResponseSummary,
    UsageParseError,
    count_code_execution_steps,
    nonempty_str,
    parse_json,
    usage_from_interaction,
)
from .records import EndpointKind

__all__ = [
    "GenerateStreamTap",
    "InteractionStreamTap",
    "JSONArrayDecoder",
    "SSEDecoder",
    "StreamTap",
    "stream_tap",
]

_BOM: Final = b"\xef\xbb\xbf"


def _strip_bom(buf: bytearray) -> bool:
    """Drop a leading UTF-8 BOM from ``buf``; False while it may still be one.

    The BOM itself can be split across chunks, so a buffer that is a proper
    prefix of it is not decided yet.
    """
    if len(buf) < len(_BOM) and _BOM.startswith(buf):
        return False
    if buf.startswith(_BOM):
        del buf[: len(_BOM)]
    return True


# --- SSE -----------------------------------------------------------------------------------


class SSEDecoder:
    """Server-sent-events framing: bytes in, the ``data`` of each event out.

    Follows the WHATWG event-stream rules that matter for a reader of data:
    CRLF, CR and LF line endings; a UTF-8 BOM at the very start is skipped;
    lines starting with ``:`` are comments; ``data`` lines of one event are
    joined with ``\\n``, one space after the colon is dropped; other fields
    (``event``, ``id``, ``retry``, unknown ones) are ignored; an event with no
    ``data`` line is not dispatched. Payloads stay bytes: the taps hand them
    straight to ``json.loads``.
    """

    __slots__ = ("_buf", "_cr", "_data", "_scan", "_started")

    def __init__(self) -> None:
        self._buf = bytearray()
        # data lines of the event being read
        self._data: list[bytes] = []
        # where to resume looking for a line end (everything before is one partial line)
        self._scan = 0
        # the last chunk ended with CR: a LF starting the next one is part of that line end
        self._cr = False
        self._started = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Decode one chunk; the data of every event it completed, in order."""
        if not chunk:
            return []
        if self._cr:
            self._cr = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
        buf = self._buf
        buf += chunk
        if not self._started:
            if not _strip_bom(buf):
                return []
            self._started = True
        out: list[bytes] = []
        end = len(buf)
        start = 0  # start of the current line
        # Line ends are found with bytes.find (memchr), a regex is ~100x slower
        # per byte. Each of LF and CR is searched again only once passed, so a
        # stream without CRs costs one failed find per chunk, not one per line.
        lf = buf.find(b"\n", self._scan)
        cr = buf.find(b"\r", self._scan)
        while lf >= 0 or cr >= 0:
            if cr < 0 or 0 <= lf < cr:
                stop, after = lf, lf + 1
            else:
                stop = cr
                if cr + 1 == end:
                    # A CR ending the chunk may be the first half of a CRLF.
                    self._cr = True
                    after = end
                elif buf[cr + 1] == 0x0A:
                    after = cr + 2
                else:
                    after = cr + 1
            if buf.startswith(b"data:", start, stop):  # the common case, inlined
                begin = start + 5
                if begin < stop and buf[begin] == 0x20:
                    begin += 1
                self._data.append(bytes(buf[begin:stop]))
            else:
                self._line(bytes(buf[start:stop]), out)
            start = after
            if 0 <= lf < start:
                lf = buf.find(b"\n", start)
            if 0 <= cr < start:
                cr = buf.find(b"\r", start)
        if start:
            del buf[:start]
        self._scan = len(buf)
        return out

    def close(self) -> list[bytes]:
        """End of stream: the data of a final event that had no blank line after it."""
        out: list[bytes] = []
        if not self._started:
            # The body was a lone partial BOM (or empty): nothing to decode.
            self._started = True
            self._buf.clear()
        if self._buf:
            self._line(bytes(self._buf), out)
            self._buf.clear()
        self._scan = 0
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[bytes]) -> None:
        if not line:
            if self._data:
                out.append(b"\n".join(self._data) if len(self._data) > 1 else self._data[0])
                self._data = []
            return
        # the common case first: "data: {...}"
        if line.startswith(b"data:"):
            value = line[5:]
        elif line[0] == 0x3A:  # ":" a comment
            return
        else:
            colon = line.find(b":")
            if colon < 0:
                # A field name alone has an empty value: "data" is an empty data line.
                if line == b"data":
                    self._data.append(b"")
                return
            if line[:colon] != b"data":
                return
            value = line[colon + 1 :]
        if value[:1] == b" ":
            value = value[1:]
        self._data.append(value)


# --- JSON array ----------------------------------------------------------------------------

_WS: Final = re.compile(rb"[ \t\r\n]*")
# Inside an element, everything up to the next bracket: other bytes and whole
# strings, in one C-level match. It stops early only at the opening quote of a
# string that does not end in this chunk. Possessive quantifiers: no backtracking.
_RUN: Final = re.compile(rb'[^"\[\]{}]*+(?:"[^"\\]*+(?:\\.[^"\\]*+)*+"[^"\[\]{}]*+)*+', re.DOTALL)

_OPENERS: Final = frozenset(b"[{")
_QUOTE: Final = 0x22

# decoder phases
_BEFORE: Final = 0  # expecting "[" (or a bare "{")
_FIRST: Final = 1  # after "[": an element or "]"
_NEXT: Final = 2  # after ",": an element
_INSIDE: Final = 3  # inside an element
_AFTER: Final = 4  # after an element: "," or "]"
_DONE: Final = 5  # after the closing "]": whitespace only
_BROKEN: Final = 6  # not a JSON array of objects; input is ignored


def _string_end(buf: bytearray, pos: int, end: int) -> int:
    """Just past the quote closing the string that ``pos`` is in; -1 if not in ``buf`` yet.

    A string that spans chunks is mostly a long one (base64 image or audio
    data), so this uses bytes.find rather than a regex: ~100x faster per byte.
    A quote is escaped when an odd number of backslashes precede it; those
    are in ``buf`` too, since the element is kept whole until it ends.
    """
    while True:
        quote = buf.find(b'"', pos, end)
        if quote < 0:
            return -1
        first = quote
        while first and buf[first - 1] == 0x5C:  # the opening quote ends this walk
            first -= 1
        if (quote - first) % 2 == 0:
            return quote + 1
        pos = quote + 1


def _skip(pattern: re.Pattern[bytes], buf: bytearray, pos: int) -> int:
    """End of ``pattern`` matched at ``pos``; the patterns used match the empty string."""
    match = pattern.match(buf, pos)
    return pos if match is None else match.end()


class JSONArrayDecoder:
    """A streamed JSON array (``[{...}\\n,\\r\\n{...}\\n]``) to the raw bytes of its elements.

    This is how ``streamGenerateContent`` answers without ``alt=sse``. An
    element is emitted as soon as its closing bracket arrives (not when the
    following comma does), so a stream that breaks off still yields every
    complete chunk. Elements must be objects or arrays, which is all Gemini
    sends; a bare top-level object (a non-streamed response) is accepted as a
    one-element stream. Strings, escapes and nesting are tracked across
    chunk boundaries; the elements' contents are not validated here (the tap
    ``json.loads`` them). Anything else at the top level marks the decoder
    ``broken``: it never raises and ignores the rest.
    """

    __slots__ = ("_bare", "_buf", "_depth", "_in_string", "_phase", "_pos", "_start", "_started")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # scan position in _buf
        self._start = 0  # start of the element being read (phase _INSIDE)
        self._phase = _BEFORE
        self._depth = 0  # bracket depth; the array itself is 1
        self._in_string = False
        self._bare = False
        self._started = False

    @property
    def broken(self) -> bool:
        """True once the input turned out not to be a JSON array of objects."""
        return self._phase == _BROKEN

    @property
    def complete(self) -> bool:
        """True once the closing ``]`` (or a bare object's ``}``) arrived."""
        return self._phase == _DONE

    def feed(self, chunk: bytes) -> list[bytes]:
        """Decode one chunk; the raw bytes of every element it completed, in order."""
        if not chunk or self._phase == _BROKEN:
            return []
        buf = self._buf
        buf += chunk
        if not self._started:
            if not _strip_bom(buf):
                return []
            self._started = True
        out: list[bytes] = []
        self._run(out)
        if self._phase == _BROKEN:
            buf.clear()
            self._pos = self._start = 0
        elif self._phase == _INSIDE:
            # keep the element read so far; everything before it is consumed
            if self._start:
                del buf[: self._start]
                self._pos -= self._start
                self._start = 0
        else:
            del buf[: self._pos]
            self._pos = 0
        return out

    def _run(self, out: list[bytes]) -> None:
        buf = self._buf
        end = len(buf)
        pos = self._pos
        while pos < end:
            phase = self._phase
            if phase == _INSIDE:
                pos = self._scan_element(buf, pos, end, out)
                if self._phase == _INSIDE:
                    break
                continue
            pos = _skip(_WS, buf, pos)
            if pos >= end:
                break
            byte = buf[pos]
            if phase == _BEFORE:
                if byte == 0x5B:  # "["
                    self._phase, self._depth = _FIRST, 1
                    pos += 1
                elif byte == 0x7B:  # "{": a whole response rather than a stream
                    self._phase, self._depth, self._bare, self._start = _INSIDE, 1, True, pos
                else:
                    self._phase = _BROKEN
            elif phase in (_FIRST, _NEXT):
                if byte in _OPENERS:
                    self._phase, self._start = _INSIDE, pos
                elif byte == 0x5D and phase == _FIRST:  # "]": an empty array
                    self._phase = _DONE
                    pos += 1
                else:
                    self._phase = _BROKEN
            elif phase == _AFTER:
                if byte == 0x2C:  # ","
                    self._phase = _NEXT
                elif byte == 0x5D:  # "]"
                    self._phase = _DONE
                else:
                    self._phase = _BROKEN
                pos += 1
            else:  # _DONE: only whitespace may follow
                self._phase = _BROKEN
            if self._phase == _BROKEN:
                return
        self._pos = pos

    def _scan_element(self, buf: bytearray, pos: int, end: int, out: list[bytes]) -> int:
        """Advance through an element: one Python iteration per bracket."""
        if self._in_string:
            pos = _string_end(buf, pos, end)
            if pos < 0:
                return end
            self._in_string = False
        depth = self._depth
        while True:
            pos = _skip(_RUN, buf, pos)
            if pos >= end:
                break
            byte = buf[pos]
            pos += 1
            if byte == _QUOTE:
                # _RUN stops at a quote only when the string does not end in
                # this chunk: the next chunks are read in string mode.
                self._in_string = True
                pos = end
                break
            if byte in _OPENERS:
                depth += 1
                continue
            depth -= 1
            if depth <= 1:
                out.append(bytes(buf[self._start : pos]))
                self._depth = 1
                self._phase = _DONE if self._bare else _AFTER
                return pos
        self._depth = depth
        return pos


# --- taps ----------------------------------------------------------------------------------


class StreamTap(Protocol):
    """What ``server.forward`` needs of a tap: bytes in, a summary at the end."""

    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> ResponseSummary: ...


def _index_key(value: object) -> int | None:
    return value if type(value) is int else None


class InteractionStreamTap:
    """Reads an Interactions API event stream (``stream: true`` or a resumed GET).

    Events (``event_type``) and what is taken from them:

    - ``interaction.created`` / ``interaction.completed``: ``interaction`` with
      ``id``, ``status``, ``model``, ``service_tier``; on completed, the final
      ``usage`` and possibly ``steps``.
    - ``interaction.status_update``: ``interaction_id``, ``status``, optional ``usage``.
    - ``step.start``: ``index``, ``step`` (``code_execution_call`` counts a call;
      ``code_execution_result`` with ``is_error`` counts an error).
    - ``step.delta``: ``index``, ``delta`` (the same two types, ``is_error`` may
      arrive here), optional ``metadata.total_usage``.
    - ``step.stop``: ``index``, optional ``usage`` (cumulative so far) and
      ``step_usage`` (that step alone: never used as the total).
    - ``error``; and ``data: [DONE]``, after which nothing is read.

    Google frames each event as an ``event: <event_type>`` line then its
    ``data:`` line, and ends the stream with ``event: done`` / ``data: [DONE]``
    (the streaming guide's transcripts); the ``event:`` lines are ignored, the
    data's own ``event_type`` is what is read. In those transcripts usage comes
    only on ``interaction.completed``, whose interaction has no ``steps``;
    ``step.stop`` carries usage only for some agents. Each continuation hop
    (``requires_continuation`` then a create with ``continuation_token``) is its
    own request and stream, billed on its own usage.

    The usage is the completed interaction's; failing that, the last
    cumulative usage seen. Usages are never added up: intermediate ones are
    running totals. Code execution is counted per step index (a result whose
    ``is_error`` shows in both its start and a delta is one error), unless the
    completed interaction lists its ``steps``, which are then authoritative.
    ``parse_error`` is set when no usage came at all, the final one is
    malformed, or an event was not a JSON object.
    """

    __slots__ = (
        "_anonymous",
        "_call_steps",
        "_completed_steps",
        "_done",
        "_error_steps",
        "_final_usage",
        "_garbage",
        "_id",
        "_last_usage",
        "_model",
        "_service_tier",
        "_sse",
        "_status",
        "_summary",
    )

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._done = False
        self._garbage = False
        self._final_usage: object = None
        self._last_usage: object = None
        self._id: str | None = None
        self._status: str | None = None
        self._model: str | None = None
        self._service_tier: str | None = None
        # step keys (index, or a fresh object for a start without one)
        self._call_steps: set[object] = set()
        self._error_steps: set[object] = set()
        self._completed_steps: tuple[int, int] | None = None
        self._anonymous = 0
        self._summary: ResponseSummary | None = None

    def feed(self, chunk: bytes) -> None:
        """Read one chunk of the stream."""
        if self._done:
            return
        for payload in self._sse.feed(chunk):
            self._event(payload)
            if self._done:
                return

    @property
    def interaction_id(self) -> str | None:
        """The interaction's id as soon as an event has named it (``interaction.created``)."""
        return self._id

    def finish(self) -> ResponseSummary:
        """The summary once the stream has ended (idempotent)."""
        if self._summary is not None:
            return self._summary
        if not self._done:
            for payload in self._sse.close():
                self._event(payload)
        summary = ResponseSummary(
            interaction_id=self._id,
            status=self._status,
            model=self._model,
            service_tier=self._service_tier,
            parse_error=self._garbage,
        )
        if self._completed_steps is not None:
            summary.code_execution_calls, summary.code_execution_errors = self._completed_steps
        else:
            summary.code_execution_calls = len(self._call_steps)
            summary.code_execution_errors = len(self._error_steps)
        raw = self._final_usage if self._final_usage is not None else self._last_usage
        if raw is None:
            summary.parse_error = True
        else:
            try:
                summary.usage = usage_from_interaction(raw)
            except UsageParseError:
                summary.parse_error = True
        self._summary = summary
        return summary

    def _event(self, payload: bytes) -> None:
        if payload == b"[DONE]":
            self._done = True
            return
        event = parse_json(payload)
        if not isinstance(event, dict):
            self._garbage = True
            return
        kind = event.get("event_type")
        # By far the most frequent event: text and thought deltas.
        if kind == "step.delta":
            delta = event.get("delta")
            index = _index_key(event.get("index"))
            if isinstance(delta, dict) and index is not None:
                self._step(index, delta)
            metadata = event.get("metadata")
            if isinstance(metadata, dict):
                self._usage(metadata.get("total_usage"))
        elif kind == "step.start":
            step = event.get("step")
            if isinstance(step, dict):
                key: object = _index_key(event.get("index"))
                if key is None:
                    # A start without an index still counts, once.
                    self._anonymous += 1
                    key = ("anonymous", self._anonymous)
                self._step(key, step)
        elif kind == "step.stop":
            self._usage(event.get("usage"))
        elif kind == "interaction.status_update":
            self._status = nonempty_str(event.get("status")) or self._status
            self._id = self._id or nonempty_str(event.get("interaction_id"))
            self._usage(event.get("usage"))
        elif kind in ("interaction.created", "interaction.completed"):
            interaction = event.get("interaction")
            if isinstance(interaction, dict):
                self._interaction(interaction, final=kind == "interaction.completed")
        # "error" and unknown event types carry nothing to meter.

    def _step(self, key: object, step: dict[str, object]) -> None:
        kind = step.get("type")
        if kind == "code_execution_call":
            self._call_steps.add(key)
        elif kind == "code_execution_result" and step.get("is_error") is True:
            self._error_steps.add(key)

    def _usage(self, usage: object) -> None:
        if usage is not None:
            self._last_usage = usage

    def _interaction(self, interaction: dict[str, object], *, final: bool) -> None:
        self._id = self._id or nonempty_str(interaction.get("id"))
        self._status = nonempty_str(interaction.get("status")) or self._status
        self._model = nonempty_str(interaction.get("model")) or self._model
        self._service_tier = nonempty_str(interaction.get("service_tier")) or self._service_tier
        usage = interaction.get("usage")
        self._usage(usage)
        if final:
            if usage is not None:
                self._final_usage = usage
            steps = interaction.get("steps")
            if isinstance(steps, list) and steps:
                self._completed_steps = count_code_execution_steps(steps)


class GenerateStreamTap:
    """Reads a ``streamGenerateContent`` body: SSE (``alt=sse``) or a JSON array.

    Every chunk is a GenerateContentResponse. The usage is the last chunk's
    ``usageMetadata`` (they are cumulative); ``responseId`` and
    ``modelVersion`` come from the chunks; code-execution parts are added up
    over chunks (each carries new parts). ``parse_error`` is set when no
    chunk had usage, the last usage is malformed, a chunk was not a JSON
    object, or the array framing broke.
    """

    __slots__ = ("_acc", "_decoder", "_summary")

    def __init__(self, sse: bool) -> None:
        self._decoder: SSEDecoder | JSONArrayDecoder = SSEDecoder() if sse else JSONArrayDecoder()
        self._acc = GenerateAccumulator()
        self._summary: ResponseSummary | None = None

    def feed(self, chunk: bytes) -> None:
        """Read one chunk of the stream."""
        for payload in self._decoder.feed(chunk):
            self._chunk(payload)

    def finish(self) -> ResponseSummary:
        """The summary once the stream has ended (idempotent)."""
        if self._summary is not None:
            return self._summary
        decoder = self._decoder
        if isinstance(decoder, SSEDecoder):
            for payload in decoder.close():
                self._chunk(payload)
        elif decoder.broken:
            self._acc.mark_garbage()
        self._summary = self._acc.summary()
        return self._summary

    def _chunk(self, payload: bytes) -> None:
        # generateContent sends no "[DONE]", but an SSE relay in between might.
        if payload != b"[DONE]":
            self._acc.add(parse_json(payload))


def stream_tap(endpoint: EndpointKind, *, sse: bool = True) -> StreamTap:
    """The tap for a streamed response of this endpoint.

    Interactions streams are always SSE; for generateContent, ``sse`` says
    whether the call asked for ``alt=sse`` (otherwise a JSON array comes back).
    """
    if endpoint in (EndpointKind.INTERACTION_CREATE, EndpointKind.INTERACTION_GET):
        return InteractionStreamTap()
    return GenerateStreamTap(sse=sse)
