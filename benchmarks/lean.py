"""A lean forwarder for the benchmarks: what relaying costs below aiohttp, on asyncio protocols.

``bare.py`` measures the floor aiohttp puts under any forwarder built on it; on the
benchmark machine that floor alone costs more CPU per call than issue 10 allows the meter.
This forwarder answers the next question: how low can a forwarder go on lower layers? It
relays as ``bare.py`` does (the whole request read, then sent on with the client's headers
less the hop-by-hop ones, over a pool of keep-alive connections to the upstream; a JSON
answer relayed whole, an SSE answer chunk by chunk as it arrives), but on bare
``asyncio.Protocol`` objects on both sides, with httptools (the C parser uvicorn uses)
reading requests and responses. ``--uvloop`` runs it on uvloop's event loop instead of
asyncio's own. ``compare.py`` runs it both ways beside the bare forwarder. Like that one,
it reads no usage, checks no key and records nothing.

It is a measuring stick, not a proxy, and leaves out whatever the benchmark does not use:
plain HTTP/1.1 only (no TLS, no HTTP/2, no upgrades); one request at a time per connection
(a client that pipelines is dropped); no ``Expect: 100-continue``; no HEAD (an answer's
body is read by its own headers alone); no time-outs; no bound on connections to the
upstream, only on the idle ones kept; no retry when a pooled connection turns out closed;
and its only error answer is a 502 when the upstream fails before its answer began.

    python benchmarks/lean.py --port 8093 --upstream http://127.0.0.1:8091 [--uvloop]

``GET /_lean/ready`` answers 200 once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

# bare.py's hop-by-hop headers, and Content-Length: this forwarder writes its own, since a
# chunked request goes upstream with a length and an SSE answer goes back chunked.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"trailer",
        b"host",
        b"content-length",
    }
)
# Idle upstream connections kept for reuse: bare.py's pool holds 256.
IDLE_LIMIT: Final = 256
READY: Final = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
BAD_GATEWAY: Final = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class PipelinedError(Exception):
    """A client sent its next request before the answer to the previous one."""


class Pool:
    """Keep-alive connections to the upstream: the last idle one reused, else a new one."""

    def __init__(self, upstream: str) -> None:
        url = urlsplit(upstream)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 80
        self.authority = url.netloc.encode()
        self.idle: list[Upstream] = []
        self.connecting: set[asyncio.Task[None]] = set()  # held, or a task may be collected

    def send(self, client: Client, request: bytes) -> None:
        while self.idle:
            upstream = self.idle.pop()
            if not upstream.transport.is_closing():
                upstream.start(client, request)
                return
        task = asyncio.get_running_loop().create_task(self._connect(client, request))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _connect(self, client: Client, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(lambda: Upstream(self), self.host, self.port)
        except OSError:
            client.upstream_failed(relaying=False)
            return
        if client.transport.is_closing():  # the client left while we connected
            upstream.transport.close()
            return
        upstream.start(client, request)

    def release(self, upstream: Upstream) -> None:
        if len(self.idle) < IDLE_LIMIT:
            self.idle.append(upstream)
        else:
            upstream.transport.close()


class Client(asyncio.Protocol):
    """One client connection: reads each request whole and hands it to the pool."""

    transport: asyncio.Transport

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.upstream: Upstream | None = None  # relaying the current answer, once connected
        self.busy = False  # between a request's last byte and its answer's
        self.waiting = b""  # what came in meanwhile (the next request), read after
        self.paused = False  # our write buffer is full: the upstream must wait
        self.keep_alive = True
        self.url = b""
        self.headers: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.busy:
            # One request at a time: the next one waits, unread, until this answer is done.
            self.waiting += data
            self.transport.pause_reading()
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.abandon()
            self.upstream = None

    def pause_writing(self) -> None:
        self.paused = True
        if self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.upstream is not None:
            self.upstream.transport.resume_reading()

    # httptools' callbacks, in the order it makes them

    def on_message_begin(self) -> None:
        if self.busy:
            raise PipelinedError  # feed_data raises, and the connection is closed
        self.url = b""
        self.headers = []
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url  # it may come in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP_BY_HOP:
            self.headers.append(b"%s: %s\r\n" % (name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.busy = True
        self.keep_alive = self.parser.should_keep_alive()
        method = self.parser.get_method()
        if method == b"GET" and self.url == b"/_lean/ready":
            self.transport.write(READY)
            self.answered()
            return
        body = b"".join(self.body)
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n" % (
            method,
            self.url,
            self.pool.authority,
            b"".join(self.headers),
            len(body),
        )
        self.pool.send(self, head + body)

    # the upstream's side

    def answered(self) -> None:
        """The answer went out whole: read the next request, or close."""
        self.busy = False
        self.upstream = None
        if not self.keep_alive:
            self.transport.close()
        elif self.waiting:
            data, self.waiting = self.waiting, b""
            self.transport.resume_reading()
            self.data_received(data)

    def upstream_failed(self, *, relaying: bool) -> None:
        self.upstream = None
        if not relaying:
            self.transport.write(BAD_GATEWAY)
        self.transport.close()


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream, relaying one answer at a time to a client."""

    transport: asyncio.Transport

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.client: Client | None = None
        self.reason = b""
        self.headers: list[bytes] = []
        self.head = b""  # the status line and headers, as the client gets them
        self.stream = False  # an SSE answer, relayed chunk by chunk
        self.relaying = False  # its head went to the client
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def start(self, client: Client, request: bytes) -> None:
        self.client = client
        client.upstream = self
        if client.paused:
            self.transport.pause_reading()
        self.transport.write(request)

    def abandon(self) -> None:
        """The client left: the rest of this answer cannot be read past, so drop the connection."""
        self.client = None
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        if self.client is not None:
            self.client.upstream_failed(relaying=self.relaying)
            self.client = None

    # httptools' callbacks, in the order it makes them

    def on_message_begin(self) -> None:
        if self.client is None:
            raise RuntimeError("an answer nobody asked for")  # feed_data raises: closed
        self.reason = b""
        self.headers = []
        self.stream = False
        self.relaying = False
        self.body = []

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-type":
            self.stream = value.startswith(b"text/event-stream")
        if lower not in HOP_BY_HOP:
            self.headers.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        self.head = b"HTTP/1.1 %d %s\r\n%s" % (
            self.parser.get_status_code(),
            self.reason,
            b"".join(self.headers),
        )
        if self.stream and self.client is not None:
            self.client.transport.write(self.head + b"Transfer-Encoding: chunked\r\n\r\n")
            self.relaying = True

    def on_body(self, body: bytes) -> None:
        if not self.stream:
            self.body.append(body)
        elif self.client is not None:
            # As it arrives, in the client's own chunked framing.
            self.client.transport.write(b"%x\r\n%s\r\n" % (len(body), body))

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        if self.stream:
            client.transport.write(b"0\r\n\r\n")
        else:
            body = b"".join(self.body)
            client.transport.write(b"%sContent-Length: %d\r\n\r\n%s" % (self.head, len(body), body))
        if client.paused:
            self.transport.resume_reading()  # idle now: nothing left to hold back
        # Back to the pool before the client reads its next request, which may reuse it.
        if self.parser.should_keep_alive():
            self.pool.release(self)
        else:
            self.transport.close()
        client.answered()


async def serve(port: int, upstream: str) -> None:
    loop = asyncio.get_running_loop()
    pool = Pool(upstream)
    server = await loop.create_server(lambda: Client(pool), "127.0.0.1", port, backlog=128)
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop  # only when asked: the asyncio run needs no uvloop installed

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
