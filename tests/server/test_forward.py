"""The proxy handler (``server.forward``) over real HTTP on both databases: relays,
streams, records and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import text

from proxy.metering.streams import GenerateStreamTap, InteractionStreamTap
from proxy.server.front import FrontStream
from proxy.server.typedefs import sessionmaker_key
from tests.factories import (
    INTERACTIONS,
    SAY_HELLO,
    SSE_HEAD,
    STREAM_USAGE,
    UPSTREAM_KEY,
    Stack,
    StackFactory,
    gemini_error,
    raw,
    sse_text_event,
    stream_request,
)


async def test_upstream_errors_are_relayed_unchanged_and_recorded_with_zero_tokens(stack: Stack):
    status, _, body = await raw(
        "POST",
        stack.url(INTERACTIONS),
        headers=stack.headers(**{"x-emulator-fail": "429"}),
        json=SAY_HELLO,
    )
    assert status == 429
    gemini_error(body, 429, "RESOURCE_EXHAUSTED")
    [record] = await stack.records()
    assert record["upstream_status"] == 429
    assert record["total_tokens"] == record["input_tokens"] == record["output_tokens"] == 0
    assert record["interaction_id"] is None
    assert record["parse_error"] is False


async def test_missing_or_malformed_usage_is_recorded_and_flagged(stack: Stack):
    for mode in ("missing", "malformed"):
        status, _, _ = await raw(
            "POST",
            stack.url("/v1beta/models/gemini-2.5-flash:generateContent"),
            headers=stack.headers(**{"x-emulator-usage": mode}),
            json={"contents": [{"parts": [{"text": "hi"}]}]},
        )
        assert status == 200
    records = await stack.records()
    assert [(r["parse_error"], r["total_tokens"]) for r in records] == [(True, 0), (True, 0)]


async def test_uploads_stream_through(stack: Stack):
    size = 8 * 1024 * 1024

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(size // 65536):
            yield b"z" * 65536

    status, _, body = await raw(
        "POST", stack.url("/upload/v1beta/files"), headers=stack.headers(), data=chunks()
    )
    assert status == 200
    assert int(json.loads(body)["file"]["sizeBytes"]) == size


async def test_paths_outside_the_api_are_not_forwarded(stack: Stack):
    status, _, body = await raw("GET", stack.url("/admin"), headers=stack.headers())
    assert status == 404
    gemini_error(body, 404, "NOT_FOUND")
    assert list(stack.upstream.requests) == []


async def test_no_secret_is_stored_in_plaintext(stack: Stack):
    for user in ("alice", "bob"):
        await raw("POST", stack.url(INTERACTIONS), headers=stack.headers(user), json=SAY_HELLO)
    await stack.records()
    async with stack.app[sessionmaker_key]() as session:
        dump = []
        for table in ("users", "teams", "api_keys", "usage_records", "interactions"):
            rows = (await session.execute(text(f"SELECT * FROM {table}"))).all()  # noqa: S608
            dump.append(repr(rows))
    everything = "\n".join(dump)
    for secret in (*stack.keys.values(), UPSTREAM_KEY, "test-secret"):
        assert secret not in everything


# --- a hand-driven upstream, for what the emulator cannot show deterministically --------


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


USAGE = {
    "total_input_tokens": 10,
    "total_output_tokens": 5,
    "total_thought_tokens": 2,
    "total_tokens": 17,
}


async def _gated_upstream(aiohttp_server: Any, gate: asyncio.Event) -> Any:
    """An upstream that sends one event, waits for the test, then finishes."""

    async def create(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        interaction = {"id": "int-gated", "status": "in_progress", "model": "gemini-3.5-flash"}
        await response.write(
            _sse({"event_type": "interaction.created", "interaction": interaction, "event_id": "1"})
        )
        await gate.wait()
        done = {**interaction, "status": "completed", "usage": USAGE}
        await response.write(
            _sse({"event_type": "interaction.completed", "interaction": done, "event_id": "2"})
        )
        await response.write(b"data: [DONE]\n\n")
        return response

    async def generate(request: web.Request) -> web.Response:
        payload = {
            "candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}}],
            "usageMetadata": {
                "promptTokenCount": 7,
                "candidatesTokenCount": 3,
                "totalTokenCount": 10,
            },
            "responseId": "resp-gz",
        }
        return web.Response(
            body=gzip.compress(json.dumps(payload).encode()),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    async def cut(request: web.Request) -> web.StreamResponse:
        # A stream that ends after a cumulative usage, without interaction.completed.
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        interaction = {"id": "int-cut", "status": "in_progress", "model": "gemini-3.5-flash"}
        await response.write(
            _sse({"event_type": "interaction.created", "interaction": interaction, "event_id": "1"})
        )
        partial = {"total_input_tokens": 4, "total_output_tokens": 1, "total_tokens": 5}
        await response.write(_sse({"event_type": "step.stop", "index": 1, "usage": USAGE}))
        await response.write(_sse({"event_type": "step.stop", "index": 2, "usage": partial}))
        return response

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>oops</html>", content_type="text/html")

    async def get(request: web.Request) -> web.Response:
        iid = request.match_info["id"]
        if iid == "int-cut":
            # the cut stream's interaction went on upstream and completed
            done = {"id": iid, "status": "completed", "model": "gemini-3.5-flash", "usage": USAGE}
            return web.json_response(done)
        return web.json_response({"id": iid, "status": "in_progress", "model": "gemini-3.5-flash"})

    app = web.Application()
    app.router.add_post("/v1beta/interactions", create)
    app.router.add_get("/v1beta/interactions/{id}", get)
    app.router.add_post("/v1alpha/interactions", cut)
    app.router.add_get("/v1alpha/interactions/{id}", get)
    app.router.add_post("/v1/interactions", garbage)
    app.router.add_post("/v1beta/models/{model}:generateContent", generate)
    return await aiohttp_server(app)


async def _stream_interaction(stack: Stack, gate: asyncio.Event) -> tuple[bytes, bytes]:
    """A streamed interaction through the proxy: its first event, read before ``gate``
    opens (the upstream holds the rest back until then), and the rest."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.url(INTERACTIONS), headers=stack.headers(), json={**SAY_HELLO, "stream": True}
        ) as response,
    ):
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), timeout=5)
        gate.set()
        return first, await response.content.read()


async def test_sse_is_relayed_event_by_event(make_stack: StackFactory, aiohttp_server: Any):
    gate = asyncio.Event()
    upstream = await _gated_upstream(aiohttp_server, gate)
    stack = await make_stack(upstream=str(upstream.make_url("")).rstrip("/"))
    first, rest = await _stream_interaction(stack, gate)
    assert b"interaction.created" in first
    assert b"interaction.completed" in rest and rest.endswith(b"data: [DONE]\n\n")
    [record] = await stack.records()
    assert (record["input_tokens"], record["thinking_tokens"], record["total_tokens"]) == (
        10,
        2,
        17,
    )


async def test_a_streamed_interaction_is_owned_as_soon_as_it_is_named(
    make_stack: StackFactory, aiohttp_server: Any
):
    gate = asyncio.Event()
    upstream = await _gated_upstream(aiohttp_server, gate)
    stack = await make_stack(upstream=str(upstream.make_url("")).rstrip("/"))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.url(INTERACTIONS), headers=stack.headers(), json={**SAY_HELLO, "stream": True}
        ) as response,
    ):
        await response.content.readuntil(b"\n\n")
        # mid-stream, the creator can already fetch it and nobody else can
        mine, _, _ = await raw(
            "GET", stack.url(f"{INTERACTIONS}/int-gated"), headers=stack.headers()
        )
        theirs, _, _ = await raw(
            "GET", stack.url(f"{INTERACTIONS}/int-gated"), headers=stack.headers("bob")
        )
        gate.set()
        await response.content.read()
    assert (mine, theirs) == (200, 404)


async def test_a_client_that_leaves_mid_stream_is_still_billed(
    make_stack: StackFactory, aiohttp_server: Any
):
    gate = asyncio.Event()
    upstream = await _gated_upstream(aiohttp_server, gate)
    stack = await make_stack(upstream=str(upstream.make_url("")).rstrip("/"))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.url(INTERACTIONS), headers=stack.headers(), json={**SAY_HELLO, "stream": True}
        ) as response,
    ):
        await response.content.readuntil(b"\n\n")
    # the client is gone; the upstream finishes afterwards
    await asyncio.sleep(0.05)
    gate.set()
    for _ in range(100):
        records = await stack.records()
        if records:
            break
        await asyncio.sleep(0.02)
    [record] = records
    assert record["client_disconnected"] is True
    assert record["total_tokens"] == 17


async def test_compressed_bodies_are_relayed_as_sent_and_still_metered(
    make_stack: StackFactory, aiohttp_server: Any
):
    upstream = await _gated_upstream(aiohttp_server, asyncio.Event())
    stack = await make_stack(upstream=str(upstream.make_url("")).rstrip("/"))
    status, headers, body = await raw(
        "POST",
        stack.url("/v1beta/models/gemini-2.5-flash:generateContent"),
        headers=stack.headers(**{"Accept-Encoding": "gzip, br"}),
        json={"contents": []},
    )
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(body))["responseId"] == "resp-gz"
    [record] = await stack.records()
    assert (record["input_tokens"], record["output_tokens"]) == (7, 3)


async def test_metrics_count_what_was_recorded(stack: Stack):
    await raw(
        "POST",
        stack.url("/v1beta/models/gemini-2.5-flash:generateContent"),
        headers=stack.headers(),
        json={"contents": [{"parts": [{"text": "Hello there, metrics."}]}]},
    )
    [record] = await stack.records()
    status, headers, body = await raw("GET", stack.url("/metrics"))
    assert status == 200
    text_body = body.decode()
    series = 'model="gemini-2.5-flash",principal="research"'
    input_tokens, output_tokens = float(record["input_tokens"]), float(record["output_tokens"])
    assert f'gemini_meter_tokens_total{{{series},type="input"}} {input_tokens}' in text_body
    assert f'gemini_meter_tokens_total{{{series},type="output"}} {output_tokens}' in text_body
    assert (
        'gemini_meter_requests_total{endpoint="generate_content",model="gemini-2.5-flash",'
        'principal="research",status_class="2xx",streamed="false"} 1.0'
    ) in text_body
    # no secret and no user name (the principal label is the team by default)
    assert stack.keys["alice"] not in text_body and "alice" not in text_body


async def test_a_stream_cut_before_completion_is_provisional_until_the_terminal_usage(
    make_stack: StackFactory, aiohttp_server: Any
):
    upstream = await _gated_upstream(aiohttp_server, asyncio.Event())
    stack = await make_stack(upstream=str(upstream.make_url("")).rstrip("/"))
    status, _, _ = await raw(
        "POST", stack.url("/v1alpha/interactions"), headers=stack.headers(), json=SAY_HELLO
    )
    assert status == 200
    [record] = await stack.records()
    assert record["interaction_id"] == "int-cut"
    # the last usage seen, not the sum of the two cumulative figures, and not final
    assert (record["input_tokens"], record["total_tokens"]) == (4, 5)
    assert record["provisional"] is True
    # a later GET sees the interaction completed: its usage replaces the partial one
    status, _, _ = await raw(
        "GET", stack.url("/v1alpha/interactions/int-cut"), headers=stack.headers()
    )
    assert status == 200
    [record] = await stack.records()
    assert (record["input_tokens"], record["thinking_tokens"], record["total_tokens"]) == (
        10,
        2,
        17,
    )
    assert record["provisional"] is False


async def test_an_unreadable_interaction_response_is_still_recorded(
    make_stack: StackFactory, aiohttp_server: Any
):
    upstream = await _gated_upstream(aiohttp_server, asyncio.Event())
    stack = await make_stack(upstream=str(upstream.make_url("")).rstrip("/"))
    status, _, body = await raw(
        "POST", stack.url("/v1/interactions"), headers=stack.headers(), json=SAY_HELLO
    )
    assert (status, body) == (200, b"<html>oops</html>")  # relayed as it came
    [record] = await stack.records()
    assert record["parse_error"] is True
    assert record["total_tokens"] == 0


# --- a stream's writes: what arrives together goes out together ------------------------------


def _segments_received(writer: asyncio.StreamWriter) -> int:
    """Data segments this end of a TCP connection received (Linux ``tcp_info``'s
    ``tcpi_data_segs_in``): with no delay on the sending side, one per ``send``."""
    info = writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, 152)[0])


async def _stream_through(stack: Stack, gate: asyncio.Event | None) -> tuple[bytes, int]:
    """One streamed generate call through the proxy on a raw connection: the answer's
    bytes, and the data segments they came in. With ``gate``, the first event must reach
    the client before the gate opens."""
    host, port = stack.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(stream_request(stack.keys["alice"]))
    before = _segments_received(writer)  # the connection's handshake carries no data
    answer = b""
    if gate is not None:
        while b"first" not in answer:
            answer += await asyncio.wait_for(reader.read(65536), timeout=5)
        gate.set()
    while not answer.endswith(b"\r\n0\r\n\r\n"):
        answer += await asyncio.wait_for(reader.read(65536), timeout=5)
    segments = _segments_received(writer) - before
    writer.close()
    await writer.wait_closed()
    return answer, segments


@contextlib.asynccontextmanager
async def _behind(
    make_stack: StackFactory,
    upstream: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[Stack]:
    """A stack whose upstream is ``upstream``, served on a bare connection while in use."""
    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    try:
        yield await make_stack(upstream=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    finally:
        server.close()


def _answering(
    first: bytes, rest: bytes, gate: asyncio.Event
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """An upstream that sends ``first`` as soon as a request's head is in, and ``rest``
    once ``gate`` opens."""

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(first)
        await writer.drain()
        await gate.wait()
        writer.write(rest)
        await writer.drain()
        writer.close()

    return upstream


async def test_a_stream_that_arrived_at_once_is_relayed_in_one_write(make_stack: StackFactory):
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        # The head, three events and the end in one write, as a fast upstream sends them.
        writer.write(
            SSE_HEAD
            + sse_text_event("one")
            + sse_text_event("two")
            + sse_text_event("three", STREAM_USAGE)
            + b"0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    async with _behind(make_stack, upstream) as stack:
        answer, segments = await _stream_through(stack, gate=None)
    head, _, chunked = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
    assert all(word in chunked for word in (b"one", b"two", b"three"))
    # The head, the events and the end in one segment: one write, where a write per event
    # and one each for the head and the end made five.
    assert segments == 1
    [record] = await stack.records()
    assert (record["input_tokens"], record["output_tokens"], record["total_tokens"]) == (4, 3, 7)


async def test_a_stream_is_still_relayed_as_it_arrives(make_stack: StackFactory):
    gate = asyncio.Event()  # opened only once the client holds the first event
    first, rest = SSE_HEAD + sse_text_event("first"), sse_text_event("second", STREAM_USAGE)
    upstream = _answering(first, rest + b"0\r\n\r\n", gate)
    async with _behind(make_stack, upstream) as stack:
        answer, segments = await _stream_through(stack, gate)
    assert b"first" in answer and b"second" in answer
    # The head went with the first event; the last event went with the end.
    assert segments == 2
    [record] = await stack.records()
    assert record["total_tokens"] == 7


def _log_order(monkeypatch: pytest.MonkeyPatch, tap: type[Any]) -> list[str]:
    """``tap``'s reads and the relay's writes to the client (on either lane), in the order
    they happen."""
    order: list[str] = []
    feed = tap.feed

    def logged_feed(self: Any, data: bytes) -> None:
        order.append("read")
        feed(self, data)

    def logged(write: Any) -> Any:
        async def logged_write(self: web.StreamResponse, data: bytes) -> None:
            order.append("relay")
            await write(self, data)

        return logged_write

    monkeypatch.setattr(tap, "feed", logged_feed)
    for kind in (web.StreamResponse, FrontStream):
        monkeypatch.setattr(kind, "write", logged(kind.write))
    return order


async def test_a_generate_stream_is_relayed_before_its_tap_reads_it(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
):
    gate = asyncio.Event()
    first, rest = SSE_HEAD + sse_text_event("first"), sse_text_event("second", STREAM_USAGE)
    upstream = _answering(first, rest + b"0\r\n\r\n", gate)
    order = _log_order(monkeypatch, GenerateStreamTap)
    async with _behind(make_stack, upstream) as stack:
        await _stream_through(stack, gate)
    # The first event goes out before it is parsed; the last, held back for the end of the
    # answer (written once the call is recorded), is read as it arrives.
    assert order == ["relay", "read", "read"]
    [record] = await stack.records()
    assert record["total_tokens"] == 7


async def test_an_interaction_stream_is_read_before_its_relay_until_its_owner_is_committed(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
):
    interaction = {"id": "int-order", "status": "in_progress", "model": "gemini-3.5-flash"}
    created = {"event_type": "interaction.created", "interaction": interaction}
    step = {"event_type": "step.start", "index": 0, "step": {"type": "thought"}}
    done = {**interaction, "status": "completed", "usage": USAGE}
    completed = {"event_type": "interaction.completed", "interaction": done}

    # Each event in a chunk of its own, the next sent once the client has the one before.
    gates = [asyncio.Event(), asyncio.Event()]
    parts = [
        SSE_HEAD + _chunk(_sse(created)),
        _chunk(_sse(step)),
        _chunk(_sse(completed) + b"data: [DONE]\n\n") + b"0\r\n\r\n",
    ]

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for part, gate in zip(parts, [*gates, None], strict=True):
            writer.write(part)
            await writer.drain()
            if gate is not None:
                await gate.wait()
        writer.close()

    order = _log_order(monkeypatch, InteractionStreamTap)
    async with _behind(make_stack, upstream) as stack:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                stack.url(INTERACTIONS), headers=stack.headers(), json={**SAY_HELLO, "stream": True}
            ) as response,
        ):
            events = []
            for gate in gates:
                events.append(await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5))
                gate.set()
            rest = await response.content.read()
    assert b"int-order" in events[0] and b"step.start" in events[1]
    assert rest.endswith(b"data: [DONE]\n\n")
    # The event naming the interaction is read first: its owner is committed before the
    # client sees its id. Later ones go out before they are read; the last, held back for
    # the end of the answer (written once the call is recorded), is read as it arrives.
    assert order == ["read", "relay", "relay", "read", "read"]
    [record] = await stack.records()
    assert (record["interaction_id"], record["total_tokens"]) == ("int-order", 17)


async def test_a_resumed_interaction_stream_is_relayed_before_its_tap_reads_it(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
):
    interaction = {"id": "int-resumed", "status": "in_progress", "model": "gemini-3.5-flash"}
    done = {**interaction, "status": "completed", "usage": USAGE}
    gate = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"POST"):  # the create, answered whole: its caller owns it
            fields = dict(line.split(b": ", 1) for line in head.lower().split(b"\r\n")[1:-2])
            await reader.readexactly(int(fields[b"content-length"]))
            body = json.dumps(interaction).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        else:  # the stream resumed: an event, then the last with the end, once gated
            update = {"event_type": "interaction.status_update", "interaction_id": "int-resumed"}
            writer.write(SSE_HEAD + _chunk(_sse({**update, "status": "in_progress"})))
            await writer.drain()
            await gate.wait()
            last = _sse({"event_type": "interaction.completed", "interaction": done})
            writer.write(_chunk(last + b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    order = _log_order(monkeypatch, InteractionStreamTap)
    async with _behind(make_stack, upstream) as stack:
        created, _, _ = await raw(
            "POST", stack.url(INTERACTIONS), headers=stack.headers(), json=SAY_HELLO
        )
        assert created == 200
        order.clear()
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                stack.url(f"{INTERACTIONS}/int-resumed?stream=true"), headers=stack.headers()
            ) as response,
        ):
            first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
            gate.set()
            rest = await response.content.read()
    assert b"status_update" in first and rest.endswith(b"data: [DONE]\n\n")
    # No owner to commit: its first event goes out before it is read, as a generate
    # stream's does; the last, held back for the end of the answer, is read as it arrives.
    assert order == ["relay", "read", "read"]


async def test_a_client_gone_before_a_stream_that_came_at_once_is_billed_and_flagged(
    make_stack: StackFactory,
):
    # The upstream answers only once the client has left, head and body in one write: the
    # relay writes nothing before the whole answer is in, so no failed write tells it that
    # the client is gone. It must still record the call, flagged.
    gone = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await gone.wait()
        writer.write(SSE_HEAD + sse_text_event("late", STREAM_USAGE) + b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with _behind(make_stack, upstream) as stack:
        host, port = stack.base_url.removeprefix("http://").split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(stream_request(stack.keys["alice"]))
        await writer.drain()
        await asyncio.sleep(0.2)  # the call is at the upstream
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.1)  # the proxy saw the connection go
        gone.set()
        for _ in range(250):
            if records := await stack.records():
                break
            await asyncio.sleep(0.02)
    [record] = records
    assert (record["client_disconnected"], record["total_tokens"]) == (True, 7)
