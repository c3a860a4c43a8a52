"""A minimal Gemini upstream for the benchmarks: canned replies, and a ledger of what it served.

The emulator (``gemini-meter emulate``) plans every reply from the prompt and counts its
tokens; that is right for the tests but makes the upstream's own cost per call part of
what a benchmark measures. This stub answers from bytes built once at start, so the
upstream's CPU per call is as small as aiohttp allows, and the proxies' cost stands out
against it. It is also what the memory scenarios need and the emulator (which others
edit) does not offer: one stream of any size (``?bench=big``, ``--big-bytes``),
streams held open as long as wanted (``?bench=held``, ``--held-chunks`` events
``--held-delay-ms`` apart), built once however many clients read them, and a stream
whose first byte comes well before its last (``?bench=trickle``).

    python benchmarks/stub.py --port 8091 --big-bytes 104857600 --held-delay-ms 250

Routes: ``POST /{version}/models/{model}:generateContent`` (one JSON reply) and
``:streamGenerateContent`` (``?alt=sse``: ``data:`` events; without it a JSON array), both
with a non-empty key in ``x-goog-api-key`` or ``?key=``. Every stream event carries the
reply's final ``usageMetadata`` (a meter keeps the last one it sees, as with Gemini's
cumulative figures). ``POST /{version}/interactions`` creates an interaction with an id of
its own (a meter stores each one's owner before its id goes out); with ``"stream": true``
in the body it streams ``interaction.created`` at once and ``interaction.completed``, with
the usage, 10 ms later.

``GET /_stub/stats`` is the upstream's ledger, the outside count a benchmark checks a
proxy's records against. Per API key (a proxy has its own upstream key, so its calls are
told apart from the direct ones): calls received, replies served in full, streams whose
client left early. Then the bytes sent, and the most streams open at once since the
previous read.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

MODEL_PATTERN: Final = r"{model:[^/:]+}"
VERSION_PATTERN: Final = r"{version:v\d+[a-z0-9]*}"


@dataclass
class Ledger:
    """What the stub served, per API key."""

    received: Counter[str] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)
    cut: Counter[str] = field(default_factory=Counter)
    bytes_sent: int = 0
    open_streams: int = 0
    peak_streams: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "received": dict(self.received),
            "served": dict(self.served),
            "cut": dict(self.cut),
            "bytes_sent": self.bytes_sent,
            "open_streams": self.open_streams,
            "peak_streams": self.peak_streams,
        }


@dataclass(frozen=True)
class Replies:
    """Every byte the stub sends, built once."""

    plain: bytes
    # A stream's events by position: (first, middle, last, the only one), per framing.
    sse: tuple[bytes, bytes, bytes, bytes]
    array: tuple[bytes, bytes, bytes, bytes]
    chunks: int
    chunk_delay: float

    def event(self, sse: bool, number: int) -> bytes:
        events = self.sse if sse else self.array
        if self.chunks == 1:
            return events[3]
        if number == self.chunks - 1:
            return events[2]
        return events[0] if number == 0 else events[1]


def _chunk(text: str, usage: dict[str, int], last: bool) -> dict[str, object]:
    candidate: dict[str, object] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if last:
        candidate["finishReason"] = "STOP"
    candidate["index"] = 0
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": "gemini-2.5-flash",
        "responseId": "bench-stub-response",
    }


def build_replies(chunks: int, chunk_bytes: int, chunk_delay_ms: float) -> Replies:
    # Token counts in the shape of Gemini's: about four bytes of text per token.
    prompt = 9
    plain_text = "A canned reply from the benchmark stub, the same for every call."
    plain_usage = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": 16,
        "totalTokenCount": prompt + 16,
    }
    plain = json.dumps(_chunk(plain_text, plain_usage, last=True)).encode()
    chunks = max(1, chunks)
    text = "x" * max(0, chunk_bytes)
    output = max(1, chunks * chunk_bytes // 4)
    usage = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": output,
        "totalTokenCount": prompt + output,
    }
    middle = json.dumps(_chunk(text, usage, last=False), separators=(",", ":")).encode()
    last = json.dumps(_chunk(text, usage, last=True), separators=(",", ":")).encode()
    sse_middle, sse_last = (b"data: " + body + b"\r\n\r\n" for body in (middle, last))
    return Replies(
        plain=plain,
        sse=(sse_middle, sse_middle, sse_last, sse_last),
        array=(b"[" + middle, b",\r\n" + middle, b",\r\n" + last + b"]", b"[" + last + b"]"),
        chunks=chunks,
        chunk_delay=chunk_delay_ms / 1000,
    )


LEDGER: Final = web.AppKey("ledger", Ledger)
# Replies by the shape a request names in ``?bench=`` (both proxies pass the query on);
# "" is the default, small one.
SHAPES: Final = web.AppKey("shapes", dict[str, Replies])


def _api_key(request: web.Request) -> str | None:
    return request.headers.get("x-goog-api-key") or request.query.get("key") or None


def _unauthorized() -> web.Response:
    return web.json_response(
        {"error": {"code": 401, "message": "API key missing.", "status": "UNAUTHENTICATED"}},
        status=401,
    )


async def generate(request: web.Request) -> web.StreamResponse:
    key = _api_key(request)
    if key is None:
        return _unauthorized()
    await request.read()
    ledger, replies = request.app[LEDGER], request.app[SHAPES][""]
    ledger.received[key] += 1
    ledger.served[key] += 1
    ledger.bytes_sent += len(replies.plain)
    return web.Response(body=replies.plain, content_type="application/json")


async def stream(request: web.Request) -> web.StreamResponse:
    key = _api_key(request)
    if key is None:
        return _unauthorized()
    await request.read()
    ledger, shapes = request.app[LEDGER], request.app[SHAPES]
    replies = shapes.get(request.query.get("bench", ""), shapes[""])
    ledger.received[key] += 1
    sse = request.query.get("alt") == "sse"
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream" if sse else "application/json"}
    )
    ledger.open_streams += 1
    ledger.peak_streams = max(ledger.peak_streams, ledger.open_streams)
    try:
        await response.prepare(request)
        for number in range(replies.chunks):
            if number and replies.chunk_delay:
                await asyncio.sleep(replies.chunk_delay)
            event = replies.event(sse, number)
            await response.write(event)
            ledger.bytes_sent += len(event)
        await response.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        # The client (a proxy, or wrk at the end of its run) left mid-reply: not served in
        # full, so a proxy may rightly record it as cut rather than complete.
        ledger.cut[key] += 1
        raise
    finally:
        ledger.open_streams -= 1
    ledger.served[key] += 1
    return response


# An Interactions API stream as Google's streaming guide frames it (an ``event:`` line, then
# the event's ``data:``), its two events around each call's own id: created at once, then,
# ``INTERACTION_DELAY`` later, completed with the usage, and the end of the stream.
INTERACTION_MODEL: Final = "gemini-2.5-flash"
INTERACTION_USAGE: Final = {"total_input_tokens": 9, "total_output_tokens": 16, "total_tokens": 25}
INTERACTION_DELAY: Final = 0.010
IDS: Final = web.AppKey("ids", itertools.count)


def _interaction_events(interaction_id: str) -> tuple[bytes, bytes]:
    interaction = {"id": interaction_id, "status": "in_progress", "model": INTERACTION_MODEL}
    done = {**interaction, "status": "completed", "usage": INTERACTION_USAGE}
    created = {"event_type": "interaction.created", "interaction": interaction, "event_id": "1"}
    completed = {"event_type": "interaction.completed", "interaction": done, "event_id": "2"}
    return (
        b"event: interaction.created\ndata: " + json.dumps(created).encode() + b"\n\n",
        b"event: interaction.completed\ndata: "
        + json.dumps(completed).encode()
        + b"\n\nevent: done\ndata: [DONE]\n\n",
    )


async def interactions(request: web.Request) -> web.StreamResponse:
    """``POST /{version}/interactions``: a new interaction, each with an id of its own (its
    owner is stored by a meter); streamed when the body asks, else the completed one."""
    key = _api_key(request)
    if key is None:
        return _unauthorized()
    body = json.loads(await request.read() or b"{}")
    ledger = request.app[LEDGER]
    ledger.received[key] += 1
    ids = request.app[IDS]
    interaction_id = f"bench-interaction-{next(ids)}"
    created, completed = _interaction_events(interaction_id)
    if body.get("stream") is not True:
        done = {"id": interaction_id, "status": "completed", "model": INTERACTION_MODEL}
        reply = json.dumps({**done, "usage": INTERACTION_USAGE}).encode()
        ledger.served[key] += 1
        ledger.bytes_sent += len(reply)
        return web.Response(body=reply, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    try:
        await response.prepare(request)
        await response.write(created)
        await asyncio.sleep(INTERACTION_DELAY)
        await response.write(completed)
        await response.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        ledger.cut[key] += 1
        raise
    ledger.bytes_sent += len(created) + len(completed)
    ledger.served[key] += 1
    return response


async def stats(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER]
    body = ledger.as_json()
    # The peak is "since the last read", so a harness can read it per scenario.
    ledger.peak_streams = ledger.open_streams
    return web.json_response(body)


def create_stub_app(
    *,
    big_bytes: int = 100 * 1024**2,
    held_chunks: int = 20,
    held_delay_ms: float = 250.0,
) -> web.Application:
    """The stub; ``?bench=big`` streams ``big_bytes`` in 64 KiB events, ``?bench=held`` holds
    a stream open for ``held_chunks`` small events ``held_delay_ms`` apart, and
    ``?bench=trickle`` sends three small events 10 ms apart."""
    app = web.Application()
    app[LEDGER] = Ledger()
    event_bytes = 64 * 1024
    app[SHAPES] = {
        "": build_replies(chunks=3, chunk_bytes=40, chunk_delay_ms=0.0),
        "big": build_replies(-(-big_bytes // event_bytes), event_bytes, 0.0),
        "held": build_replies(held_chunks, 40, held_delay_ms),
        # The first event at once, the next two 10 ms apart: a proxy that relays as it reads
        # shows the first byte long before the last, one that buffers does not.
        "trickle": build_replies(3, 40, 10.0),
    }
    prefix = f"/{VERSION_PATTERN}/models/{MODEL_PATTERN}"
    app.router.add_post(f"{prefix}:generateContent", generate)
    app.router.add_post(f"{prefix}:streamGenerateContent", stream)
    app[IDS] = itertools.count(1)
    app.router.add_post(f"/{VERSION_PATTERN}/interactions", interactions)
    app.router.add_get("/_stub/stats", stats)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument(
        "--big-bytes", type=int, default=100 * 1024**2, help="size of a ?bench=big stream"
    )
    parser.add_argument("--held-chunks", type=int, default=20, help="events of a ?bench=held one")
    parser.add_argument("--held-delay-ms", type=float, default=250.0, help="pause between them")
    args = parser.parse_args()
    app = create_stub_app(
        big_bytes=args.big_bytes, held_chunks=args.held_chunks, held_delay_ms=args.held_delay_ms
    )
    # No access log and a deep backlog: thousands of calls a second, 1,000 connects at once.
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, backlog=4096)


if __name__ == "__main__":
    main()
