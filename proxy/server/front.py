"""The proxy's front connections: a lean HTTP/1.1 lane for the API's plain calls.

aiohttp's server side costs about what a whole call of the upstream costs
(``docs/benchmarks.md``). Every connection ``serve`` accepts (and ``ProxyRunner``'s in the
tests) starts here, on a bare ``asyncio.Protocol``, and each request's head is read with
httptools, the same C parser (llhttp) aiohttp's server is built on. A request takes the
lean lane only when it is unremarkable:

- its target is origin-form, ASCII, under ``/v1/``, ``/v1beta/``, ``/v1alpha/`` or
  ``/download/``, and its path has no percent-escape, empty or dot segment, fragment, or
  ``auth_tokens`` of its own: what aiohttp would route to ``forward.proxy_handler``
  with the path exactly as written;
- its method is one the API uses (GET, POST, PATCH, PUT, DELETE), its version HTTP/1.0
  or 1.1, its head within aiohttp's limits (and ``HEAD_LIMIT``) and parsed without an
  error;
- its body, if any, has a ``Content-Length`` within the proxy's ``max_request_bytes``,
  and no ``Transfer-Encoding``, ``Content-Encoding``, ``Expect`` or ``Upgrade``.

Everything else (uploads, the Live API's websockets, the admin API and pages, health and
metrics, a compressed or chunked body, a malformed or oversized request) is handed, with
every byte read so far, to aiohttp's connection handler (``app._GeminiRequestHandler``)
on the same transport, which keeps the connection from then on: no request answers
differently for having arrived here first.

A lean request runs the app's own handler (``forward.proxy_handler``) behind the same
two middlewares aiohttp runs it behind, with a ``FrontRequest`` in place of aiohttp's
request, and its answer goes out as aiohttp would frame it: a whole ``web.Response``
with its length, a ``FrontStream`` with the upstream's length or chunked (HTTP/1.0:
to the connection's close), a body-less status without one; ``Date`` added,
``Connection`` as the request and the answer decide. One request at a time per
connection: bytes of the next one wait, unread past ``_PENDING_LIMIT``, until the answer
is out. A client that leaves does not cancel the handler (as with aiohttp's default):
the call is still recorded, and writes to it raise ``ConnectionResetError``. A
connection closes ``keepalive_timeout`` after its start or its last answer if no request
is being answered then (a request half sent included), as aiohttp's do. At shutdown,
idle connections close at once and busy ones once their answer is out, or when the grace
period ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

import httptools
from aiohttp import web
from aiohttp.helpers import parse_content_type, rfc822_formatted_time
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11
from aiohttp.log import access_logger
from aiohttp.web_log import AccessLogger
from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy
from yarl import URL

from ..errors import INTERNAL_ERROR

if TYPE_CHECKING:
    from aiohttp.abc import AbstractAccessLogger
    from aiohttp.web_protocol import RequestHandler

__all__ = ["FrontConnection", "FrontRequest", "FrontStream", "lean_path"]

log = logging.getLogger("gemini_meter.front")

# A head (request line and headers) longer than this goes to aiohttp, which refuses it
# in Gemini's shape (its limits: 8,190 bytes a line or field, 128 fields).
HEAD_LIMIT: Final = 16 * 1024
# aiohttp's default keepalive_timeout (the runner's own setting, if given, is used).
KEEPALIVE_SECONDS: Final = 3630.0
# Bytes of a next request read while an answer is being made; past this, reading pauses.
_PENDING_LIMIT: Final = 64 * 1024
_VERSIONS: Final = {"1.1": HttpVersion11, "1.0": HttpVersion10}
_METHODS: Final = frozenset({"GET", "POST", "PATCH", "PUT", "DELETE"})
# The path of a lean request: an API prefix, then segments of the characters Gemini's
# paths use, none empty or starting with a dot; an optional query of URL characters.
_LEAN_TARGET: Final = re.compile(
    rb"/(?:v1|v1beta|v1alpha|download)(?:/[A-Za-z0-9_\-:@!$&'()*+,;=~][A-Za-z0-9_\-.:@!$&'()*+,;=~]*)+"
    rb"(?:\?[A-Za-z0-9_\-.:@!$&'()*+,;=~/?%\[\]]*)?\Z"
)
# Request headers that send a request to aiohttp (a body or an exchange this lane does
# not read the way aiohttp does).
_TO_AIOHTTP: Final = frozenset(
    {b"transfer-encoding", b"content-encoding", b"expect", b"upgrade", b"http2-settings"}
)
# Statuses whose answer has no body (RFC 9110 6.4.1), besides 1xx.
_BODILESS: Final = frozenset({204, 304})

_CONNECTION_HEADERS: Final = frozenset({"connection", "keep-alive", "transfer-encoding"})


def _bodiless(status: int) -> bool:
    return status < 200 or status in _BODILESS


def lean_path(target: bytes) -> bool:
    """Whether a request target may take the lean lane (its method and head aside)."""
    if _LEAN_TARGET.match(target) is None:
        return False
    path = target.partition(b"?")[0]
    return not path.endswith(b"/auth_tokens") or path.count(b"/") != 2


Handler = Callable[["FrontRequest"], Awaitable[web.StreamResponse]]


class FrontServer(web.Server):
    """aiohttp's ``Server`` whose connections start on the lean lane.

    ``lean`` runs a lean request (the app's middlewares and handler); ``aiohttp_handler``
    makes the connection handler a handed-off connection continues on. The front
    connections are kept here too, for the shutdown.
    """

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        app: web.Application,
        lean: Handler,
        max_body: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.app = app
        self.lean = lean
        self.max_body = max_body
        self.access_logger: AbstractAccessLogger | None = None
        if kwargs.get("access_log", access_logger) is not None:
            # as aiohttp's RequestHandler makes its own
            self.access_logger = kwargs.get("access_log_class", AccessLogger)(
                kwargs.get("access_log", access_logger),
                kwargs.get("access_log_format", AccessLogger.LOG_FORMAT),
            )
        # aiohttp's limits on a head: a request past any of them goes to aiohttp, which
        # refuses it
        self.max_line = int(kwargs.get("max_line_size", 8190))
        self.max_field = int(kwargs.get("max_field_size", 8190))
        self.max_headers = int(kwargs.get("max_headers", 128))
        self.keepalive = float(kwargs.get("keepalive_timeout", KEEPALIVE_SECONDS))
        self.fronts: set[FrontConnection] = set()

    def aiohttp_handler(self) -> RequestHandler:
        return super().__call__()

    def __call__(self) -> FrontConnection:  # type: ignore[override]
        return FrontConnection(self)

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        for front in self.fronts:
            front.close()

    async def shutdown(self, timeout: float | None = None) -> None:
        await asyncio.gather(
            super().shutdown(timeout), *(front.shutdown(timeout) for front in list(self.fronts))
        )


class FrontRequest:
    """A lean request: what the proxy's handler reads of aiohttp's ``web.Request``."""

    __slots__ = (
        "_body",
        "_connection",
        "_query",
        "app",
        "content_length",
        "headers",
        "method",
        "path",
        "raw_path",
        "version",
    )

    def __init__(
        self,
        connection: FrontConnection,
        app: web.Application,
        method: str,
        target: str,
        headers: CIMultiDictProxy[str],
        version: HttpVersion,
        content_length: int | None,
        body: bytes,
    ) -> None:
        self._connection = connection
        self.app = app
        self.method = method
        self.raw_path = target
        self.path = target.partition("?")[0]  # lean_path: no escapes, so decoded as is
        self.headers = headers
        self.version = version
        self.content_length = content_length  # (its head's, checked when it was read)
        self._body = body
        self._query: MultiDictProxy[str] | None = None

    @property
    def query(self) -> MultiDictProxy[str]:
        """Parsed as aiohttp parses it (yarl), on first use."""
        if self._query is None:
            self._query = URL.build(
                path=self.path, query_string=self.raw_path.partition("?")[2], encoded=True
            ).query
        return self._query

    @property
    def path_qs(self) -> str:
        return self.raw_path

    @property
    def body_exists(self) -> bool:
        return bool(self._body)

    @property
    def content_type(self) -> str:
        """As aiohttp reads it, with its own parser (and its default)."""
        value = self.headers.get("content-type")
        return "application/octet-stream" if value is None else parse_content_type(value)[0]

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._connection.transport

    @property
    def scheme(self) -> str:
        transport = self._connection.transport
        tls = transport is not None and transport.get_extra_info("sslcontext") is not None
        return "https" if tls else "http"

    @property
    def host(self) -> str:
        return self.headers.get("host") or "localhost"

    @property
    def remote(self) -> str | None:
        transport = self._connection.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        return str(peer[0]) if isinstance(peer, tuple) else None

    @property
    def content(self) -> FrontRequest:
        return self

    async def read(self) -> bytes:
        return self._body

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body (read whole already, within the proxy's limit), as one chunk."""
        if self._body:
            yield self._body


class FrontStream(web.StreamResponse):
    """A streamed answer on the lean lane: aiohttp's ``StreamResponse`` as far as the
    handler can tell, written straight to the connection."""

    def __init__(self, *, status: int, headers: list[tuple[str, str]]) -> None:
        super().__init__(status=status, headers=headers)
        self._connection: FrontConnection | None = None
        self._held = b""  # the head, until the first bytes, when it goes with them
        self._chunked = False
        self._started = False

    @property
    def prepared(self) -> bool:
        return self._started

    async def prepare(self, request: web.BaseRequest) -> None:
        assert isinstance(request, FrontRequest), "a FrontStream answers a FrontRequest"
        connection = request._connection
        self._connection = connection
        self._started = True
        head, self._chunked = connection.head(request, self, length=None)
        if self._send_headers_immediately:
            await connection.send(head)
        else:
            self._held = head

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        connection = self._connection
        assert connection is not None, "prepare() first"
        if self._chunked and data:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if self._held:
            data, self._held = self._held + data, b""
        await connection.send(bytes(data))

    async def write_eof(self, data: bytes = b"") -> None:
        connection = self._connection
        assert connection is not None, "prepare() first"
        if self._eof_sent:
            return
        self._eof_sent = True
        if self._chunked:
            data = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)) if data else b"0\r\n\r\n"
        if self._held:
            data, self._held = self._held + data, b""
        if data:
            await connection.send(data)


@dataclass(slots=True)
class _Head:
    """A lean request's head, while its body arrives."""

    method: str
    target: str
    headers: CIMultiDictProxy[str]
    version: HttpVersion
    end: int  # where the body starts in the buffer
    length: int | None  # its Content-Length


class FrontConnection(asyncio.Protocol):
    """One client connection, on the lean lane until a request must go to aiohttp."""

    def __init__(self, server: FrontServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()  # read, not yet taken by a request
        self._head: _Head | None = None  # the next request's, while its body arrives
        self.busy: asyncio.Task[None] | None = None  # the request being answered
        self.keep_alive = True
        self.closing = False  # shutdown: close once the answer is out
        self._drained: asyncio.Future[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._writing_paused = False
        self._reading_paused = False
        # the head being parsed
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._lengths: list[bytes] = []  # its Content-Length values
        self._to_aiohttp = False

    # asyncio's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        self.server.fronts.add(self)
        self._wait_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.fronts.discard(self)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_exception(ConnectionResetError("the client closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.busy is None:
            self._next()
        elif len(self.buffer) > _PENDING_LIMIT and not self._reading_paused:
            assert self.transport is not None
            self._reading_paused = True
            self.transport.pause_reading()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # reading requests

    def _next(self) -> None:
        """Start the next request from the buffer once its head and body are all here;
        aiohttp takes the connection at the first request this lane does not take."""
        if self._head is None:
            self._head = self._read_head()
            if self._head is None:
                return
        buffer = self.buffer
        head = self._head
        end = head.end + (head.length or 0)
        if len(buffer) < end:
            return  # the body is still arriving
        self._head = None
        body = bytes(buffer[head.end : end])
        del buffer[:end]
        request = FrontRequest(
            self,
            self.server.app,
            head.method,
            head.target,
            head.headers,
            head.version,
            head.length,
            body,
        )
        self.busy = asyncio.get_running_loop().create_task(self._answer(request))

    def _read_head(self) -> _Head | None:
        """The next request's head, once it is all here and it is the lean lane's; else
        None, and the connection handed to aiohttp if the request is not the lane's."""
        buffer = self.buffer
        if not buffer:
            return None
        end = buffer.find(b"\r\n\r\n", 0, HEAD_LIMIT)
        if end < 0:
            if len(buffer) >= HEAD_LIMIT:
                self._hand_off()
            return None
        end += 4
        server = self.server
        if buffer.find(b"\r\n", 0, server.max_line + 2) < 0:
            self._hand_off()  # a request line past aiohttp's limit
            return None
        self._url = b""
        self._headers = []
        self._lengths = []
        self._to_aiohttp = False
        parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(buffer[:end])
            method = parser.get_method().decode("ascii")
            version = parser.get_http_version()
            lengths = [int(value) for value in self._lengths]
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, ValueError):
            self._hand_off()
            return None
        if (
            self._to_aiohttp
            or len(self._headers) > server.max_headers
            or len(lengths) > 1  # aiohttp refuses it
            or method not in _METHODS
            or version not in _VERSIONS
            or not lean_path(self._url)
            or (lengths and lengths[0] > server.max_body)
        ):
            self._hand_off()
            return None
        self.keep_alive = parser.should_keep_alive()
        return _Head(
            method,
            self._url.decode("ascii"),
            CIMultiDictProxy(CIMultiDict(self._headers)),
            _VERSIONS[version],
            end,
            lengths[0] if lengths else None,
        )

    # httptools' callbacks for the head

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered in _TO_AIOHTTP or len(name) + len(value) > self.server.max_field:
            self._to_aiohttp = True
        elif lowered == b"content-length":
            self._lengths.append(value)
        # (as written: a header is forwarded unchanged)
        self._headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def _hand_off(self) -> None:
        """aiohttp takes the connection, with every byte read since the last answer."""
        transport = self.transport
        if transport is None:
            return
        self.transport = None
        self.server.fronts.discard(self)
        if self._idle is not None:
            self._idle.cancel()  # aiohttp's handler keeps its own time
            self._idle = None
        handler = self.server.aiohttp_handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._writing_paused:
            handler.pause_writing()
        data, self.buffer = bytes(self.buffer), bytearray()
        handler.data_received(data)
        if self._reading_paused:
            transport.resume_reading()

    # answering

    async def _answer(self, request: FrontRequest) -> None:
        started = time.perf_counter()
        response: web.StreamResponse | None = None
        try:
            response = await self.server.lean(request)
            if isinstance(response, FrontStream):
                await response.write_eof()  # (a no-op once the handler has written it)
            else:
                await self._send_whole(request, response)
        except ConnectionError:
            self.keep_alive = False
        except Exception:
            log.exception("unhandled error answering %s %s", request.method, request.path)
            self.keep_alive = False
            if response is None or not response.prepared:
                response = web.Response(
                    status=500, body=INTERNAL_ERROR, content_type="application/json"
                )
                with contextlib.suppress(ConnectionError):
                    await self._send_whole(request, response)
        finally:
            self.busy = None
            logger = self.server.access_logger
            if logger is not None and response is not None and logger.enabled:
                logger.log(request, response, time.perf_counter() - started)  # type: ignore[arg-type]
        self._done()

    async def _send_whole(self, request: FrontRequest, response: web.StreamResponse) -> None:
        if not isinstance(response, web.Response) or not isinstance(
            body := response.body if response.body is not None else b"", bytes | bytearray
        ):
            raise TypeError(f"the lean lane cannot send {type(response).__name__}")
        if response.keep_alive is False:
            self.keep_alive = False
        head, _ = self.head(request, response, length=len(body))
        response._eof_sent = True
        await self.send(head + body if body and not _bodiless(response.status) else head)

    def head(
        self, request: FrontRequest, response: web.StreamResponse, *, length: int | None
    ) -> tuple[bytes, bool]:
        """The status line and headers of ``response``, framed as aiohttp frames them, and
        whether its body goes chunked.

        ``length`` is a whole body's (it replaces any ``Content-Length`` given); None is a
        stream's, which keeps the one given, else goes chunked (HTTP/1.1) or to the
        connection's close (HTTP/1.0). A 1xx, 204 or 304 answer has no body: no length
        (a 304's own left as given) and no type. A body without a type is
        ``application/octet-stream``; ``Date`` is added, ``Connection`` as needed.
        """
        status = response.status
        headers = response.headers
        http10 = request.version is HttpVersion10
        chunked = False
        if _bodiless(status):
            length = None
            drop_length = status != 304
            body = False
        elif length is not None:
            drop_length = True
            body = length > 0
        else:
            drop_length = False
            given = headers.get("content-length")
            body = given != "0"
            if given is None:
                if http10:
                    self.keep_alive = False  # the body ends with the connection
                else:
                    chunked = True
        keep_alive = self.keep_alive = self.keep_alive and not self.closing
        lines = [f"HTTP/{'1.0' if http10 else '1.1'} {status} {response.reason}\r\n"]
        has_type = has_date = False
        for name, value in headers.items():
            lowered = name.lower()
            if lowered in _CONNECTION_HEADERS or (drop_length and lowered == "content-length"):
                continue
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise ValueError("a line break in an answer's header")
            if lowered == "content-type":
                has_type = True
            elif lowered == "date":
                has_date = True
            lines.append(f"{name}: {value}\r\n")
        if length is not None:
            lines.append(f"Content-Length: {length}\r\n")
        elif chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        if body and not has_type:
            lines.append("Content-Type: application/octet-stream\r\n")
        if not has_date:
            lines.append(f"Date: {rfc822_formatted_time()}\r\n")  # (aiohttp's, once a second)
        if http10:
            if keep_alive:
                lines.append("Connection: keep-alive\r\n")
        elif not keep_alive:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape"), chunked

    async def send(self, data: bytes) -> None:
        """Write to the client, waiting while its buffer is full; ``ConnectionResetError``
        once it is gone."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        transport.write(data)
        if self._writing_paused:
            self._drained = asyncio.get_running_loop().create_future()
            try:
                await self._drained
            finally:
                self._drained = None

    def _done(self) -> None:
        """The answer is out: read the next request, or close."""
        transport = self.transport
        if transport is None:
            return
        if not self.keep_alive or self.closing:
            transport.close()
            return
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        self._wait_idle()
        self._next()

    def _wait_idle(self) -> None:
        """Close the connection ``keepalive`` seconds from now unless a request is being
        answered then (aiohttp's keep-alive: from the start or the last answer, not from
        the last byte, so a head sent a byte at a time does not hold it open)."""
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(self.server.keepalive, self._close_idle)

    def _close_idle(self) -> None:
        self._idle = None
        if self.busy is None and self.transport is not None:
            self.transport.close()

    # shutdown

    def close(self) -> None:
        """Close now if idle, else once the answer is out."""
        self.closing = True
        if self.busy is None and self.transport is not None:
            self.transport.close()

    async def shutdown(self, timeout: float | None) -> None:
        """Wait for the answer being made up to ``timeout``, then cut it."""
        busy = self.busy
        if busy is not None:
            _, late = await asyncio.wait({busy}, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if self.transport is not None:
            self.transport.close()
