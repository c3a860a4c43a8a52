"""The lean lane (``server.front``): what it takes, what it hands to aiohttp, and that the
answers are the same either way.

Every other proxy test runs through it too (``ProxyRunner`` is the runner of every stack):
these are the cases only a raw connection shows. Which lane answered is read from a
count of the lean lane's answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from proxy.server import app as app_module
from proxy.server import front
from proxy.server.front import FrontConnection, lean_path
from tests.factories import Stack, StackFactory, Tls, gemini_error, sqlite_only

GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
BODY = json.dumps({"contents": [{"parts": [{"text": "Say hello."}]}]}).encode()


def _post(
    path: str, key: str, body: bytes = BODY, *, version: str = "1.1", **headers: str
) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        f"POST {path} HTTP/{version}\r\nHost: meter\r\nContent-Type: application/json\r\n"
        f"x-goog-api-key: {key}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer off a connection: status, headers (lower-cased names) and body, read by
    its framing."""
    async with asyncio.timeout(10):
        head = (await reader.readuntil(b"\r\n\r\n"))[:-4].decode()
        status_line, *lines = head.split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        status = int(status_line.split(" ", 2)[1])
        if status == 204 or status == 304:
            return status, headers, b""
        if "content-length" in headers:
            return status, headers, await reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    return status, headers, body
                body += chunk[:-2]
        return status, headers, await reader.read()


@pytest.fixture
def lean_answers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the lean lane answered, in order."""
    answered: list[str] = []
    answer = FrontConnection._answer

    async def counted(self: FrontConnection, request: front.FrontRequest) -> None:
        answered.append(request.path)
        await answer(self, request)

    monkeypatch.setattr(FrontConnection, "_answer", counted)
    return answered


async def _connect(stack: Stack) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = stack.base_url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


@pytest.mark.parametrize(
    ("target", "lean"),
    [
        (GENERATE.encode(), True),
        (b"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", True),
        (b"/v1beta/interactions", True),
        (b"/v1beta/interactions/abc?include_input=true", True),
        (b"/download/v1beta/files/abc:download?alt=media", True),
        (b"/v1alpha/auth_tokens", False),  # its own handler
        (b"/v1alpha/auth_tokens/x", True),  # proxy_handler's, which refuses it
        (b"/upload/v1beta/files", False),  # a body streamed upstream
        (b"/v1beta/models/gemini-2.5-flash%3AgenerateContent", False),  # escapes
        (b"/v1beta//models", False),
        (b"/v1beta/./models", False),
        (b"/v1beta/../admin/keys", False),
        (b"/v1beta/models/", False),
        (b"/v1beta/models#x", False),
        (b"/healthz", False),
        (b"/admin/keys", False),
        (b"http://elsewhere/v1beta/models", False),
        (b"/v2/models", False),
        (b"/v1beta", False),
    ],
)
def test_which_targets_take_the_lean_lane(target: bytes, lean: bool):
    assert lean_path(target) is lean


@sqlite_only
async def test_a_connection_goes_to_aiohttp_at_its_first_request_the_lane_does_not_take(
    stack: Stack, lean_answers: list[str]
):
    key = stack.keys["alice"]
    reader, writer = await _connect(stack)
    answers = []
    for data in (
        _post(GENERATE, key),
        b"GET /healthz HTTP/1.1\r\nHost: meter\r\n\r\n",
        _post(GENERATE, key),
    ):
        writer.write(data)
        answers.append(await _answer(reader))
    writer.close()
    assert [status for status, _, _ in answers] == [200, 200, 200]
    # the first on the lean lane; the connection is aiohttp's from the second on
    assert lean_answers == [GENERATE]
    assert json.loads(answers[1][2]) == {"status": "ok"}
    assert len(await stack.records()) == 2


@sqlite_only
async def test_pipelined_requests_are_answered_in_order(stack: Stack, lean_answers: list[str]):
    key = stack.keys["alice"]
    reader, writer = await _connect(stack)
    # two lean calls and one for aiohttp, in one write: the third is handed over with
    # the bytes read while the first two were answered
    writer.write(
        _post(GENERATE, key)
        + _post(GENERATE, "not-a-key")
        + b"GET /healthz HTTP/1.1\r\nHost: meter\r\n\r\n"
    )
    answers = [await _answer(reader) for _ in range(3)]
    writer.close()
    assert [status for status, _, _ in answers] == [200, 401, 200]
    gemini_error(answers[1][2], 401, "UNAUTHENTICATED")
    assert json.loads(answers[2][2]) == {"status": "ok"}
    assert lean_answers == [GENERATE, GENERATE]
    assert len(await stack.records()) == 1


@sqlite_only
async def test_a_body_that_arrives_in_pieces_is_read_whole(stack: Stack, lean_answers: list[str]):
    data = _post(GENERATE, stack.keys["alice"])
    reader, writer = await _connect(stack)
    for piece in (data[:10], data[10:-20], data[-20:-5], data[-5:]):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.05)
    status, _, body = await _answer(reader)
    writer.close()
    assert status == 200 and "candidates" in json.loads(body)
    assert lean_answers == [GENERATE]
    [record] = await stack.records()
    assert record["input_tokens"] > 0


@sqlite_only
async def test_an_http10_request_is_answered_with_its_length_and_closed(
    stack: Stack, lean_answers: list[str]
):
    reader, writer = await _connect(stack)
    writer.write(_post(GENERATE, stack.keys["alice"], version="1.0"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    rest = await asyncio.wait_for(reader.read(), 10)  # to the close
    writer.close()
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.startswith(b"Content-Length")
    )
    assert len(rest) == length and "candidates" in json.loads(rest)
    assert lean_answers == [GENERATE]


@sqlite_only
async def test_both_lanes_give_the_same_answer(stack: Stack, lean_answers: list[str]):
    """The same calls, spelled so that one takes the lean lane and one aiohttp's."""
    key = stack.keys["alice"]
    answers = []
    for path in (GENERATE, GENERATE.replace(":", "%3A")):
        for data in (_post(path, key), _post(path, "not-a-key"), _post(path, key, b"{not json")):
            reader, writer = await _connect(stack)
            writer.write(data)
            answers.append(await _answer(reader))
            writer.close()
    lean, aiohttp = answers[:3], answers[3:]
    assert lean_answers == [GENERATE] * 3
    assert [a[0] for a in lean] == [a[0] for a in aiohttp] == [200, 401, 400]
    ignored = {"server", "date"}
    for (_, lean_headers, lean_body), (_, aiohttp_headers, aiohttp_body) in zip(
        lean, aiohttp, strict=True
    ):
        assert {k: v for k, v in lean_headers.items() if k not in ignored} == {
            k: v for k, v in aiohttp_headers.items() if k not in ignored
        }
        lean_json, aiohttp_json = json.loads(lean_body), json.loads(aiohttp_body)
        lean_json.pop("responseId", None)
        aiohttp_json.pop("responseId", None)
        assert lean_json == aiohttp_json
    records = await stack.records()
    assert [r["input_tokens"] for r in records] == [records[0]["input_tokens"]] * 2


# --- upstreams of our own -------------------------------------------------------------

EVENTS = 120
EVENT_TEXT = "x" * 60_000


async def _big_stream(request: web.Request) -> web.StreamResponse:
    """A streamed generate call of some 7 MB, in events of 60 kB."""
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(EVENTS):
        event: dict[str, Any] = {"candidates": [{"content": {"parts": [{"text": EVENT_TEXT}]}}]}
        if i == EVENTS - 1:
            event["usageMetadata"] = {
                "promptTokenCount": 7,
                "candidatesTokenCount": 11,
                "totalTokenCount": 18,
            }
        await response.write(b"data: " + json.dumps(event).encode() + b"\r\n\r\n")
    await response.write_eof()
    return response


async def _no_content(request: web.Request) -> web.Response:
    return web.Response(status=204)


@pytest.fixture
async def own_upstream(aiohttp_server: Any) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1beta/models/{model}:streamGenerateContent", _big_stream)
    app.router.add_get("/v1beta/models", _no_content)
    server = await aiohttp_server(app)
    yield str(server.make_url("")).rstrip("/")


@sqlite_only
async def test_a_stream_waits_for_a_slow_reader_and_arrives_whole(
    make_stack: StackFactory,
    own_upstream: str,
    lean_answers: list[str],
    monkeypatch: pytest.MonkeyPatch,
):
    paused: list[bool] = []
    pause = FrontConnection.pause_writing

    def counted(self: FrontConnection) -> None:
        paused.append(True)
        pause(self)

    monkeypatch.setattr(FrontConnection, "pause_writing", counted)
    stack = await make_stack(upstream=own_upstream)
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    reader, writer = await _connect(stack)
    writer.write(_post(path, stack.keys["alice"]))
    await asyncio.sleep(0.5)  # the client reads nothing for a while: the relay must wait
    status, headers, body = await _answer(reader)
    writer.close()
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    events = [json.loads(line[6:]) for line in body.split(b"\r\n\r\n") if line]
    assert len(events) == EVENTS
    assert all(e["candidates"][0]["content"]["parts"][0]["text"] == EVENT_TEXT for e in events)
    assert paused  # the client's buffer filled, and the relay waited for it to drain
    assert lean_answers == [path.partition("?")[0]]
    [record] = await stack.records()
    assert (record["input_tokens"], record["output_tokens"]) == (7, 11)
    assert not record["client_disconnected"]


@sqlite_only
async def test_a_bodiless_answer_has_no_length_and_the_connection_goes_on(
    make_stack: StackFactory, own_upstream: str, lean_answers: list[str]
):
    stack = await make_stack(upstream=own_upstream)
    reader, writer = await _connect(stack)
    key = stack.keys["alice"].encode()
    models = b"GET /v1beta/models HTTP/1.1\r\nHost: meter\r\nx-goog-api-key: %s\r\n\r\n" % key
    writer.write(models)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.write(models)
    again = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    for answer in (head, again):
        assert answer.startswith(b"HTTP/1.1 204 No Content\r\n")
        assert b"content-length" not in answer.lower()
        assert b"transfer-encoding" not in answer.lower()
    assert lean_answers == ["/v1beta/models"] * 2


@sqlite_only
async def test_an_idle_or_half_sent_connection_is_closed_after_the_keepalive_time(
    stack: Stack,
):
    assert stack.proxy.runner is not None
    server = stack.proxy.runner.server
    assert isinstance(server, front.FrontServer)
    assert server.keepalive == 3630  # aiohttp's default
    server.keepalive = 0.3
    reader, writer = await _connect(stack)
    writer.write(_post(GENERATE, stack.keys["alice"]))
    status, _, _ = await _answer(reader)
    assert status == 200
    assert await asyncio.wait_for(reader.read(), 5) == b""  # idle: closed by the proxy
    writer.close()
    # a head sent a byte at a time does not hold a connection open
    reader, writer = await _connect(stack)
    sent = 0
    with contextlib.suppress(ConnectionError):
        for byte in b"POST /v1beta/models/x:generateContent HTTP/1.1\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
            sent += 1
            await asyncio.sleep(0.02)
    assert sent < 40  # cut off mid-line, some 0.3 s in
    with contextlib.suppress(ConnectionError):  # (the broken pipe may be what it reads)
        assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


@sqlite_only
async def test_no_route_of_the_app_but_the_proxy_handler_is_reachable_on_the_lean_lane(
    stack: Stack,
):
    """A route added under an API prefix must be reached through aiohttp's router: the lean
    lane runs ``proxy_handler`` alone."""
    paths = []
    for resource in stack.app.router.resources():
        if resource.canonical == "/{tail}":
            continue  # proxy_handler's own
        path = re.sub(r"\{version[^}]*\}", "v1beta", resource.canonical)
        paths.append(re.sub(r"\{[^}]*\}", "x", path))
    assert "/v1beta/auth_tokens" in paths and "/healthz" in paths
    assert [p for p in paths if lean_path(p.encode())] == []


@sqlite_only
async def test_a_lean_call_over_tls_is_answered_and_knows_its_scheme(
    make_stack: StackFactory,
    tls_proxy_server: Any,
    tls: Tls,
    lean_answers: list[str],
    monkeypatch: pytest.MonkeyPatch,
):
    stack = await make_stack(serve_proxy=tls_proxy_server)
    assert stack.proxy.runner is not None
    server = stack.proxy.runner.server
    assert isinstance(server, front.FrontServer)
    schemes: list[str] = []
    lean = server.lean

    async def seen(request: front.FrontRequest) -> web.StreamResponse:
        schemes.append(request.scheme)
        return await lean(request)

    monkeypatch.setattr(server, "lean", seen)
    host, port = stack.base_url.removeprefix("https://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=tls.client)
    writer.write(_post(GENERATE, stack.keys["alice"]))
    status, _, body = await _answer(reader)
    writer.close()
    assert status == 200 and "candidates" in json.loads(body)
    assert lean_answers == [GENERATE] and schemes == ["https"]


@sqlite_only
async def test_an_answer_that_closes_its_connection_says_so_in_its_head(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    async def closing(request: Any) -> web.StreamResponse:
        response = web.json_response({"ok": True})
        response.force_close()
        return response

    monkeypatch.setattr(app_module, "proxy_handler", closing)
    reader, writer = await _connect(stack)
    writer.write(_post(GENERATE, stack.keys["alice"]))
    status, headers, body = await _answer(reader)
    assert (status, headers["connection"], json.loads(body)) == (200, "close", {"ok": True})
    assert await asyncio.wait_for(reader.read(), 5) == b""  # and closes it
    writer.close()
