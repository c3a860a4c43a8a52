"""The upstream client (``server.client``) against real sockets: raw asyncio servers that
answer byte for byte as RFC 9112 allows (chunked, informational heads, bodies ended by
the connection's close, connections closed while idle), an aiohttp server, and TLS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.server.client import Client, InvalidHeader, UpstreamBroke, connect_socket
from tests.factories import Tls

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server whose every connection runs ``handler``; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client left, or the test ended with the connection open
        finally:
            self.open_now -= 1
            writer.close()

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.address[1]}"


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[RawServer]:
    raw = RawServer(handler)
    raw.server = await asyncio.start_server(raw._serve, "127.0.0.1", 0)
    try:
        yield raw
    finally:
        raw.server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and its Content-Length body (the tests send no chunked ones here)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


async def fetch(
    upstream: Client, method: str = "GET", body: bytes | None = None
) -> tuple[int, bytes]:
    """One call to ``/x``, read whole and released: its status and body."""
    response = await upstream.request(method, "/x", [], body)
    try:
        return response.status, await response.read()
    finally:
        response.release()


def client(url: str, **kwargs: float) -> Client:
    options = {"limit": 8, "connect_timeout": 2.0, "read_timeout": 2.0, **kwargs}
    return Client(url, **options)  # type: ignore[arg-type]


async def test_keep_alive_reuses_one_connection_and_sends_an_exact_request():
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader)
            heads.append(head + body)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with raw_server(handler) as server:
        upstream = client(server.url + "/prefix")
        for _ in range(3):
            response = await upstream.request(
                "POST", "/v1beta/models/m:generateContent?alt=sse", [("X-A", "b")], b"{}"
            )
            assert (response.status, await response.read()) == (200, b"ok")
            response.release()
        await upstream.close()
        port = server.url.rsplit(":", 1)[1]
    assert server.connections == 1
    assert heads[0] == (
        b"POST /prefix/v1beta/models/m:generateContent?alt=sse HTTP/1.1\r\n"
        b"Host: 127.0.0.1:" + port.encode() + b"\r\nX-A: b\r\nContent-Length: 2\r\n\r\n{}"
    )


async def test_chunked_answers_after_an_informational_head_are_read_whole():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        writer.write(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-Id: 7\r\n\r\n")
        writer.write(b"5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        await reader.read()  # keep the connection until the client closes it

    async with raw_server(handler) as server:
        upstream = client(server.url)
        response = await upstream.request("GET", "/x", [])
        assert (response.status, response.headers["x-id"]) == (201, "7")
        assert [await response.next_chunk() for _ in range(3)] == [b"hello", b" world", b""]
        response.release()
        await upstream.close()


async def test_what_arrived_together_is_read_together_and_the_end_is_seen_with_it():
    arrived = asyncio.Event()
    more = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        # The head and three chunks in one write, as an upstream sends events it has ready.
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n"
        )
        await writer.drain()
        await more.wait()
        writer.write(b"4\r\nfour\r\n4\r\nfive\r\n0\r\n\r\n")  # the last ones with the end
        await writer.drain()
        arrived.set()
        await reader.read()

    async with raw_server(handler) as server:
        upstream = client(server.url)
        response = await upstream.request("GET", "/x", [])
        await asyncio.sleep(0.05)  # everything of the first write is in by now
        assert response.arrived and not response.ended
        assert await response.next_chunk() == b"onetwothree"
        assert not response.arrived and not response.ended
        more.set()
        await arrived.wait()
        await asyncio.sleep(0.05)
        assert await response.next_chunk() == b"fourfive"
        assert response.ended and response.arrived  # the next read is the end
        assert await response.next_chunk() == b""
        response.release()
        await upstream.close()


async def test_a_body_without_framing_ends_with_the_connection_which_is_not_reused():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()

    async with raw_server(handler) as server:
        upstream = client(server.url)
        for _ in range(2):
            assert await fetch(upstream) == (200, b"all of it")
        await upstream.close()
    assert server.connections == 2


async def test_a_connection_cut_mid_body_is_an_upstream_failure():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()

    async with raw_server(handler) as server:
        upstream = client(server.url)
        response = await upstream.request("GET", "/x", [])
        with pytest.raises(UpstreamBroke):
            await response.read()
        response.release()
        await upstream.close()


async def test_garbage_instead_of_http_is_an_upstream_failure():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await reader.read()

    async with raw_server(handler) as server:
        upstream = client(server.url)
        with pytest.raises(UpstreamBroke):
            await upstream.request("GET", "/x", [])
        await upstream.close()


async def test_bytes_after_a_whole_answer_keep_the_answer_and_retire_the_connection():
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
            )

    async with raw_server(chatty) as server:
        upstream = client(server.url)
        for _ in range(2):
            assert await fetch(upstream) == (200, b"ok")
        await upstream.close()
    assert server.connections == 2


async def test_silence_is_a_time_out_for_the_head_and_between_chunks():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfive.")
        await reader.read()

    async with raw_server(silent) as server:
        upstream = client(server.url, read_timeout=0.2)
        with pytest.raises(TimeoutError):
            await upstream.request("GET", "/x", [])
        await upstream.close()
    async with raw_server(stalls) as server:
        upstream = client(server.url, read_timeout=0.2)
        response = await upstream.request("GET", "/x", [])
        assert await response.next_chunk() == b"five."
        with pytest.raises(TimeoutError):
            await response.next_chunk()
        response.release()
        await upstream.close()


async def test_a_slow_but_steady_answer_is_not_timed_out():
    async def steady(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(6):
            await asyncio.sleep(0.1)
            writer.write(b"1\r\nx\r\n")
        writer.write(b"0\r\n\r\n")
        await reader.read()

    async with raw_server(steady) as server:
        upstream = client(server.url, read_timeout=0.25)  # less than the whole, more than a gap
        assert await fetch(upstream) == (200, b"xxxxxx")
        await upstream.close()


async def test_nothing_listening_is_an_upstream_failure():
    async with raw_server(read_request) as server:  # type: ignore[arg-type]
        url = server.url
    upstream = client(url)
    with pytest.raises(UpstreamBroke):
        await upstream.request("GET", "/x", [])
    await upstream.close()


@contextlib.contextmanager
def swallowing_address() -> Iterator[tuple[str, int]]:
    """An address whose connects hang, as in a container whose IPv6 swallows packets: a
    listener whose accept queue is full (Linux drops the SYNs past it), never accepting."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())  # the one the queue holds
    try:
        yield listener.getsockname()
    finally:
        filler.close()
        listener.close()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # accepts, says nothing


def _address(host: str, port: int) -> tuple[Any, ...]:
    return (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))


def _on_each_loop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``scenario`` on asyncio's event loop, then on uvloop's (serve's default)."""
    for factory in (None, uvloop.new_event_loop):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(scenario())


def test_an_address_that_swallows_packets_costs_the_delay_not_the_connect_time_out():
    async def scenario() -> None:
        async with raw_server(_silent) as server:
            good = server.address
            with swallowing_address() as hanging:
                # One after the other, the hanging address would keep the connect for the
                # kernel's SYN retries (minutes); within 5 s only the race reaches the second.
                async with asyncio.timeout(5):
                    sock = await connect_socket(
                        asyncio.get_running_loop(),
                        "upstream.test",
                        0,
                        delay=0.05,
                        addresses=[_address(*hanging), _address(*good)],
                    )
                with sock:
                    assert sock.getpeername() == good

    _on_each_loop(scenario)


def test_when_every_address_fails_the_call_says_why():
    async def scenario() -> None:
        async with raw_server(_silent) as server:
            closed = server.address
        refused = [_address(*closed), _address(*closed)]
        with pytest.raises(ConnectionRefusedError):
            await connect_socket(asyncio.get_running_loop(), "upstream.test", 0, addresses=refused)
        upstream = client(f"http://{closed[0]}:{closed[1]}")
        with pytest.raises(UpstreamBroke, match="Could not connect to the upstream"):
            await upstream.request("GET", "/x", [])
        await upstream.close()

    _on_each_loop(scenario)


def test_a_call_goes_through_on_uvloop_as_on_asyncio():
    async def scenario() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await reader.read()

        async with raw_server(answer) as server:
            upstream = client(server.url)
            assert await fetch(upstream) == (200, b"ok")
            await upstream.close()

    _on_each_loop(scenario)


async def test_the_pool_never_opens_more_than_its_limit():
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    async with raw_server(slow) as server:
        upstream = client(server.url, limit=2)

        answers = await asyncio.gather(*(fetch(upstream) for _ in range(7)))
        assert answers == [(200, b"")] * 7
        await upstream.close()
    assert server.most_open == 2
    assert server.connections == 2


async def test_an_unread_answer_gives_its_connection_up_and_frees_its_slot():
    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1_000_000)

    async with raw_server(big) as server:
        upstream = client(server.url, limit=1)
        for _ in range(3):
            response = await upstream.request("GET", "/x", [])
            assert await response.next_chunk()
            response.release()  # not read to the end: closed, not pooled
        await upstream.close()
    assert server.connections == 3


async def test_a_large_answer_read_slowly_is_not_buffered_whole():
    size = 64 * 1024 * 1024  # far more than the socket buffers of both ends hold
    sent = 0

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"y" * 65536
        while sent < size:
            writer.write(block)
            await writer.drain()
            sent += len(block)

    async with raw_server(flood) as server:
        upstream = client(server.url)
        response = await upstream.request("GET", "/x", [])
        assert await response.next_chunk()
        await asyncio.sleep(0.5)  # the relay is stuck; the upstream must be held back
        assert sent < size // 4, "the client kept reading with nobody consuming"
        received = 0
        while chunk := await response.next_chunk():
            received += len(chunk)
        assert received + 65536 >= size - 65536
        response.release()
        await upstream.close()


async def test_a_reused_connection_closed_unanswered_is_retried_for_get_only():
    async def first_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Each connection answers its first request; the next one on it finds it closed
        # unanswered, as when an upstream drops a keep-alive connection as it is reused.
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)

    async with raw_server(first_only) as server:
        upstream = client(server.url)
        for _ in range(2):
            assert await fetch(upstream) == (200, b"ok")
        assert server.connections == 2  # the second GET went again, on a new connection
        with pytest.raises(UpstreamBroke):
            await upstream.request("POST", "/x", [], b"{}")  # never sent twice
        assert await fetch(upstream) == (200, b"ok")  # a third connection

        async def body() -> AsyncIterator[bytes]:
            yield b"{}"

        # An idempotent PUT is not sent again either when its body came from an iterator:
        # the first attempt took it.
        with pytest.raises(UpstreamBroke):
            await upstream.request("PUT", "/x", [], body(), content_length=2)
        await upstream.close()
    assert server.connections == 3


async def test_a_streamed_body_goes_chunked_or_with_its_length():
    received: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"chunked" in head:
                body = await reader.readuntil(b"0\r\n\r\n")
            else:
                body = await reader.readexactly(6)
            received.append(head + body)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    async def pieces() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""
        yield b"def"

    async with raw_server(echo) as server:
        upstream = client(server.url)
        for length in (None, 6):
            response = await upstream.request("PUT", "/x", [], pieces(), content_length=length)
            await response.read()
            response.release()
        await upstream.close()
    assert received[0].endswith(
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"
    )
    assert received[1].endswith(b"Content-Length: 6\r\n\r\nabcdef")


async def test_an_answer_before_the_body_is_sent_is_returned_and_not_pooled():
    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        await reader.read()

    release_body = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        yield b"first"
        await release_body.wait()
        yield b"never read"

    async with raw_server(early) as server:
        upstream = client(server.url)
        response = await upstream.request("POST", "/x", [], endless())
        assert response.status == 413
        assert await response.read() == b""
        response.release()
        await fetch(upstream)
        await upstream.close()
    assert server.connections == 2


async def test_a_failing_body_fails_the_call_as_itself():
    async def listens(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    class TooLarge(Exception):
        pass

    async def breaks() -> AsyncIterator[bytes]:
        yield b"part"
        raise TooLarge

    async with raw_server(listens) as server:
        upstream = client(server.url)
        with pytest.raises(TooLarge):
            await upstream.request("POST", "/x", [], breaks())
        await upstream.close()


async def test_a_head_answer_ends_at_its_head():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        await reader.read()

    async with raw_server(handler) as server:
        upstream = client(server.url, read_timeout=1.0)
        response = await upstream.request("HEAD", "/x", [])
        assert (response.headers["content-length"], await response.read()) == ("1234", b"")
        response.release()
        await upstream.close()


@pytest.mark.parametrize("value", ["a\r\nInjected: yes", "a\nb", "a\rb", "a\x00b"])
async def test_a_header_with_a_line_break_or_nul_is_never_sent(value: str):
    async with raw_server(read_request) as server:  # type: ignore[arg-type]
        upstream = client(server.url)
        with pytest.raises(InvalidHeader):
            await upstream.request("GET", "/x", [("X-A", value)])
        await upstream.close()
    assert server.connections == 0


async def test_tls_is_verified_against_the_trusted_certificate(tls: Tls):
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="over tls")

    app = web.Application()
    app.router.add_get("/x", hello)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=tls.server)
    try:
        url = f"https://127.0.0.1:{server.port}"
        trusting = Client(url, limit=2, connect_timeout=2, read_timeout=2, ssl_context=tls.client)
        response = await trusting.request("GET", "/x", [])
        assert await response.read() == b"over tls"
        response.release()
        await trusting.close()
        # The system's trust store does not know the test's self-signed certificate.
        default = Client(url, limit=2, connect_timeout=2, read_timeout=2)
        with pytest.raises(UpstreamBroke) as refused:
            await default.request("GET", "/x", [])
        assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
        await default.close()
    finally:
        await server.close()
