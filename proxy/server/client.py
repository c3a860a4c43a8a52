"""The upstream's HTTP/1.1 client: keep-alive connections on asyncio protocols, read by httptools.

``upstream.open_upstream`` sends every forwarded call through the app's one ``Client``;
the relays in ``forward``, ``owned`` and ``batches`` read its ``Response``. It replaces
aiohttp's client on that path because the proxy needs only a small part of it, and the
rest cost a fifth of the proxy's CPU per call (``docs/benchmarks.md``): no cookies, no
redirects, no decompression, no proxies, one upstream. What it does:

- **Connections.** At most ``limit`` to the upstream at once (a call waits for one beyond
  that); an idle one is reused, newest first, until ``idle_seconds`` have passed or the
  upstream closed it. TLS is verified against the system's trust store (loaded at the
  first https connection; ``SSL_CERT_FILE`` adds a private CA) or the context given, with
  the upstream's host name; the upstream's addresses are tried the RFC 8305 way (the next
  one after 0.25 s). A call on a reused connection that the upstream closed before
  answering is sent again on a new one only if its method is idempotent and its body was
  not an iterator's (the first attempt took it).
- **Requests.** The method, the target (the upstream URL's path then the client's raw path
  and query, as the proxy decided), ``Host``, then the headers given, which must carry no
  framing of their own: a body of bytes goes with its ``Content-Length``, a body from an
  iterator with the ``Content-Length`` the caller set, or chunked. A header with a line
  break or a NUL in it is refused (``InvalidHeader``), never sent.
- **Responses.** Informational heads (1xx) are skipped. The body arrives as the
  upstream sends it, chunked encoding undone; reading pauses while more than
  ``_HIGH_WATER`` bytes wait unread, so a large answer never sits whole in memory. A
  response's own framing decides where it ends, or the connection's close where it has
  none (the connection is not reused then).
- **Time-outs.** ``connect_timeout`` for the connection (TLS included); ``read_timeout``
  of silence while an exchange is under way (no byte either way, and the relay not the one
  behind), kept by one timer per exchange: ``TimeoutError``. Anything else that breaks
  the exchange is an ``UpstreamBroke`` (an ``OSError``).

Not supported, since the proxy never sends them: ``Expect: 100-continue`` waits (the
body goes at once), upgrades (the Live API's websockets use aiohttp's client), HTTP/2.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Final, cast
from urllib.parse import urlsplit

import aiohappyeyeballs
import httptools
from aiohappyeyeballs import AddrInfoType
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["Client", "InvalidHeader", "Response", "UpstreamBroke"]

# Unread body bytes past which a connection stops reading until the relay catches up.
_HIGH_WATER: Final = 256 * 1024
_LOW_WATER: Final = 64 * 1024
# RFC 8305: the next of the upstream's addresses is tried this long after the one before.
_HAPPY_EYEBALLS_DELAY: Final = 0.25
# RFC 9110 9.2.2; the ones sent again when a reused connection turned out closed.
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamBroke(OSError):
    """The upstream closed, reset or garbled the exchange before its answer was whole."""


class InvalidHeader(ValueError):
    """A header the proxy would have to send with a line break or NUL in it."""


class _Connection(asyncio.Protocol):
    """One connection to the upstream, carrying one exchange at a time."""

    def __init__(self, pool: Client) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._head: asyncio.Future[None] | None = None
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._head_done = False
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._until_close = False
        self._keep_alive = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._head_only = False
        # Set when an exchange ended with the request unfinished, or the upstream sent
        # more than its answer: never reused.
        self.spoiled = False
        self._unasked = False
        # One timer per exchange, not one per read: it fires read_timeout after the last
        # sign of life (bytes either way) and re-arms itself while there was one since.
        self._timeout = 0.0
        self._last_active = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._last_active = time.monotonic()
        if self._parser is None or self._unasked:
            # Bytes with no exchange under way, or after a whole answer: the connection
            # cannot be trusted any more; what was answered stands.
            self.spoiled = True
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamBroke("The upstream switched protocols unasked."))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBroke(f"The upstream's answer is not valid HTTP/1.1: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is not None and not self._complete:
            if self._head_done and self._until_close and exc is None:
                self._complete = True  # a body without framing ends with its connection
            else:
                self._error = UpstreamBroke("The upstream closed the connection mid-answer.")
                self._error.__cause__ = exc
        self._wake_head()
        self._wake_body()
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(UpstreamBroke("The upstream closed the connection."))
        self._pool._lost(self)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._complete:
            # More after a whole answer, unasked: kept from this one, and never reused.
            self._unasked = self.spoiled = True
            return
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._complete:
            return
        # As aiohttp reads them: UTF-8, any other byte kept as a surrogate.
        self._headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if self._complete or 100 <= status < 200:
            return  # an informational head (100 Continue, 103 Early Hints): the answer follows
        self._status = status
        self._head_done = True
        framed = any(n.lower() in ("content-length", "transfer-encoding") for n, _ in self._headers)
        self._until_close = not framed and status not in (204, 304)
        if self._head_only:
            # HEAD: the head is the whole answer, whatever length it announces.
            self._complete = True
            self._keep_alive = False
        self._wake_head()

    def on_body(self, chunk: bytes) -> None:
        if self._head_only or self._complete or not chunk:
            return
        self._body.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_body()

    def on_message_complete(self) -> None:
        assert self._parser is not None
        if not self._head_done or self._complete:
            return  # the end of an informational head, or of what came unasked
        self._keep_alive = self._parser.should_keep_alive() and not self._head_only
        self._complete = True
        self._wake_body()

    # the exchange

    def start(self, head_only: bool, read_timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._head = loop.create_future()
        self._status, self._headers = 0, []
        self._head_done = self._complete = self._until_close = self._keep_alive = False
        self._body.clear()
        self._buffered = 0
        self._error = None
        self._head_only = head_only
        self._timeout = read_timeout
        self._last_active = time.monotonic()
        self._watchdog = loop.call_at(loop.time() + read_timeout, self._check_idle)

    def _check_idle(self) -> None:
        self._watchdog = None
        if self._parser is None or self._complete or self._error is not None:
            return
        now = time.monotonic()
        if self._reading_paused:
            self._last_active = now  # the relay, not the upstream, is behind
        idle = now - self._last_active
        if idle < self._timeout:
            loop = asyncio.get_running_loop()
            self._watchdog = loop.call_at(loop.time() + self._timeout - idle, self._check_idle)
            return
        self._fail(TimeoutError("The upstream sent nothing for the read time-out."))

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise UpstreamBroke("The upstream closed the connection.")
        self.transport.write(data)
        self._last_active = time.monotonic()
        if self._writable is not None and not self._writable.done():
            await self._writable

    async def head(self) -> tuple[int, list[tuple[str, str]]]:
        assert self._head is not None
        if not self._head.done():
            await self._head
        if self._error is not None:
            raise self._error
        return self._status, self._headers

    async def chunk(self) -> bytes:
        """Every byte of the body that has arrived and not been read yet (at least one,
        waiting for it), or b"" at its end. What arrived together is read together: a relay
        writes it in one piece, one system call, not one per piece of chunked encoding."""
        while not self._body:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        body = self._body
        chunk = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._reading_paused and self._buffered < _LOW_WATER and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()
        return chunk

    @property
    def reusable(self) -> bool:
        return (
            self._complete
            and self._keep_alive
            and not self.closed
            and not self.spoiled
            and self._error is None
        )

    def finish(self) -> None:
        self._parser = None
        self._head = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def _fail(self, error: OSError) -> None:
        self._error = error
        self._wake_head()
        self._wake_body()
        self.close()

    def _wake_head(self) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def _wake_body(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _seen(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


class Response:
    """The upstream's answer: its head at once, its body as it arrives.

    ``release`` must follow: it gives the connection back once the body was read to its
    end, and closes it otherwise.
    """

    __slots__ = ("_connection", "_done", "headers", "status")

    def __init__(
        self, connection: _Connection, status: int, headers: CIMultiDictProxy[str]
    ) -> None:
        self._connection: _Connection | None = connection
        self._done = False
        self.status = status
        self.headers = headers

    @property
    def arrived(self) -> bool:
        """Whether some of the body is here, unread, or the body has ended."""
        connection = self._connection
        return self.ended or (connection is not None and bool(connection._body))

    @property
    def ended(self) -> bool:
        """Whether the whole body has arrived and been read: the next ``next_chunk`` is
        b"". A relay that sees it after a read knows that read was the last."""
        connection = self._connection
        return connection is None or self._done or (connection._complete and not connection._body)

    async def next_chunk(self) -> bytes:
        """The body's bytes as they arrive, all that arrived since the last read at once,
        b"" at its end (``TimeoutError`` once the upstream sent nothing for the read
        time-out)."""
        connection = self._connection
        if connection is None or self._done:
            return b""
        chunk = await connection.chunk()
        if not chunk:
            self._done = True
        return chunk

    async def read(self) -> bytes:
        """The whole body."""
        first = await self.next_chunk()
        if not first:
            return first
        parts = [first]
        while chunk := await self.next_chunk():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection._pool._release(connection, reuse=self._done and connection.reusable)


async def connect_socket(
    loop: asyncio.AbstractEventLoop,
    host: str,
    port: int,
    *,
    delay: float = _HAPPY_EYEBALLS_DELAY,
    addresses: Sequence[AddrInfoType] | None = None,
) -> socket.socket:
    """A TCP socket connected to ``host:port``, its addresses tried the RFC 8305 way by
    aiohappyeyeballs (what aiohttp's connector uses): the families taken in turn, the next
    address ``delay`` after the one before, the first to connect kept. An address family
    that swallows packets (IPv6 in many containers) then costs ``delay``, not the whole
    connect time-out, on any event loop (uvloop's ``create_connection`` has no
    ``happy_eyeballs_delay``). ``addresses`` (``getaddrinfo``'s entries) skips the lookup.
    """
    if addresses is None:
        addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not addresses:
        raise OSError(f"no address for {host}")
    # With a delay given, the library interleaves the address families itself.
    return await aiohappyeyeballs.start_connection(addresses, happy_eyeballs_delay=delay, loop=loop)


class Client:
    """Calls to one upstream (``base``: ``scheme://host[:port][/path]``) over a pool of
    at most ``limit`` keep-alive connections."""

    def __init__(
        self,
        base: str,
        *,
        limit: int,
        connect_timeout: float,
        read_timeout: float,
        idle_seconds: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = urlsplit(base)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("the upstream must be an http(s) URL with a host")
        self._tls = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._tls else 80)
        default_port = self._port == (443 if self._tls else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._authority = host if default_port else f"{host}:{self._port}"
        self._prefix = url.path.rstrip("/")
        # The system's trust store is loaded at the first connection, not at start-up.
        self._ssl: ssl.SSLContext | None = ssl_context
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle_seconds = idle_seconds
        self._idle: list[_Connection] = []
        self._open = 0
        self._slots: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closing = False

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None = None,
        *,
        content_length: int | None = None,
    ) -> Response:
        """Send one request (``target``: the path and query after the base URL's path) and
        return its answer's head; the body is the ``Response``'s to read.

        ``headers`` must not carry ``Host``, ``Content-Length`` or ``Transfer-Encoding``:
        the client writes those. ``content_length`` is the length of a body from an
        iterator, which otherwise goes chunked.
        """
        head = self._head(method, target, headers, body, content_length)
        for attempt in (1, 2):
            connection = self._idle_connection() or await self._connect()
            try:
                connection.start(method == "HEAD", self._read_timeout)
                if body is None or isinstance(body, bytes):
                    await connection.write(head + body if body else head)
                    status, raw = await connection.head()
                else:
                    chunked = content_length is None
                    writing = asyncio.create_task(self._stream(connection, head, body, chunked))
                    # Whatever ends it once the call no longer waits on it, it is seen.
                    writing.add_done_callback(_seen)
                    status, raw = await self._answer(connection, writing)
            except UpstreamBroke:
                self._release(connection, reuse=False)
                # A body from an iterator went (in part) with the first attempt: never again.
                resendable = body is None or isinstance(body, bytes)
                if attempt == 1 and connection.reused and resendable and method in _IDEMPOTENT:
                    continue  # it was closed while idle: a fresh connection may answer
                raise
            except BaseException:
                self._release(connection, reuse=False)
                raise
            return Response(connection, status, CIMultiDictProxy(CIMultiDict(raw)))
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Close every connection; calls still under way see theirs break."""
        self._closing = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()
        for waiter in self._slots:
            if not waiter.done():
                waiter.set_exception(UpstreamBroke("The upstream client is closing."))

    # internals

    def _head(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        content_length: int | None,
    ) -> bytes:
        lines = [f"{method} {self._prefix}{target} HTTP/1.1", f"Host: {self._authority}"]
        for name, value in headers:
            lines.append(f"{name}: {value}")
        if isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body)}")
        elif body is not None:
            lines.append(
                f"Content-Length: {content_length}"
                if content_length is not None
                else "Transfer-Encoding: chunked"
            )
        text = "\r\n".join(lines)
        breaks = len(lines) - 1
        if "\x00" in text or text.count("\r") != breaks or text.count("\n") != breaks:
            raise InvalidHeader("A header holds a line break or NUL; it is not sent.")
        # Header values came from aiohttp's parser as UTF-8 (surrogates for other bytes).
        return (text + "\r\n\r\n").encode("utf-8", "surrogateescape")

    async def _stream(
        self, connection: _Connection, head: bytes, body: AsyncIterator[bytes], chunked: bool
    ) -> None:
        await connection.write(head)
        async for piece in body:
            if not piece:
                continue
            if chunked:
                await connection.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            else:
                await connection.write(piece)
        if chunked:
            await connection.write(b"0\r\n\r\n")

    async def _answer(
        self, connection: _Connection, writing: asyncio.Task[None]
    ) -> tuple[int, list[tuple[str, str]]]:
        # The body goes while the head is awaited: an upstream may answer (413, say)
        # before it has read everything. A body that fails first fails the call as itself.
        head_task = asyncio.ensure_future(connection.head())
        try:
            done, _ = await asyncio.wait({head_task, writing}, return_when=asyncio.FIRST_COMPLETED)
            if writing in done and head_task not in done and (failure := writing.exception()):
                raise failure
            answer = await head_task
        except BaseException:
            head_task.cancel()
            writing.cancel()
            raise
        if not writing.done():
            # Answered before the body was all sent: the connection carries no other call.
            connection.spoiled = True
            writing.cancel()
        return answer

    def _idle_connection(self) -> _Connection | None:
        """The newest idle connection still open and not idle too long, if any."""
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self._idle_seconds:
                connection.reused = True
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        """A new connection, once fewer than ``limit`` are open (or an idle one freed)."""
        while self._open >= self._limit:
            waiter = asyncio.get_running_loop().create_future()
            self._slots.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._wake_one()  # pass on the slot this call no longer takes
                raise
            finally:
                if waiter in self._slots:
                    self._slots.remove(waiter)
            if (connection := self._idle_connection()) is not None:
                return connection
        if self._closing:
            raise UpstreamBroke("The upstream client is closing.")
        if self._tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        self._open += 1
        try:
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(self._connect_timeout):
                sock = await connect_socket(loop, self._host, self._port)
                try:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self),
                        sock=sock,
                        ssl=self._ssl if self._tls else None,
                        server_hostname=self._host if self._tls else None,
                    )
                except BaseException:
                    sock.close()
                    raise
        except BaseException as exc:
            self._open -= 1
            self._wake_one()
            # A TimeoutError is an OSError too: kept as it is, the call answers 504 for it.
            if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
                reason = exc.strerror or exc
                raise UpstreamBroke(f"Could not connect to the upstream: {reason}") from exc
            raise
        return connection

    def _release(self, connection: _Connection, *, reuse: bool) -> None:
        connection.finish()
        if reuse and not self._closing and not connection.closed:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
            self._wake_one()
            return
        connection.close()

    def _lost(self, connection: _Connection) -> None:
        """Every connection ends here once, when its transport closes."""
        self._open -= 1
        if connection in self._idle:
            self._idle.remove(connection)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._slots:
            waiter = self._slots.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
