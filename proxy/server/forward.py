"""The proxy handler: admit a call, relay it to the upstream, meter what comes back.

A request goes through four steps, each a small function:

1. ``admit``: resolve the key to a ``Principal`` (cached), read the JSON body of
   metered calls to learn the model, and check interaction ownership. Budgets
   join here later: everything that may refuse a call before it is forwarded.
2. ``_open_upstream``: one request on the app's shared ``ClientSession``, with
   the client's key swapped for the upstream key in ``virtual_keys`` mode and
   hop-by-hop headers dropped. Connection failures become 502, silence 504.
3. relay: a whole JSON body is answered as it came; an SSE or JSON-array
   stream is written to the client chunk by chunk as it arrives, while a tap
   (``metering.streams``) reads the usage out of the same bytes.
4. ``_finish``: build the ``UsageRecord`` and hand it to the recorder, which
   never awaits the database.

Bytes are relayed unchanged; the proxy decompresses only a copy for the tap.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote_plus

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..errors import (
    NotFound,
    RequestTooLarge,
    ServiceUnavailable,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..metering.parsers import (
    ResponseSummary,
    parse_json,
    summarize_generate,
    summarize_interaction,
    usage_due,
)
from ..metering.records import Principal, UsageRecord
from ..metering.streams import InteractionStreamTap, StreamTap, stream_tap
from ..settings import AuthMode
from .auth import presented_key, swap_key
from .routes import EMPTY_META, Action, RequestMeta, Route, classify, is_forwarded, request_meta
from .typedefs import (
    authenticator_key,
    journal_key,
    pumps_key,
    recorder_key,
    settings_key,
    upstream_session_key,
)

log = logging.getLogger("gemini_meter.proxy")

# RFC 9110 7.6.1, plus the non-standard ones proxies conventionally drop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length"}
# Encodings the tap can undo; for metered calls the upstream is asked for no other.
_DECODABLE = ("gzip", "deflate", "identity")
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_UPSTREAM_FAILURES = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError)


@dataclass(slots=True)
class _Call:
    """What the handler knows about one call as it goes along."""

    route: Route
    principal: Principal | None  # None only on an upload's keyless byte legs
    started: float
    meta: RequestMeta = EMPTY_META
    # whose interaction this is, when the call names one (billing goes to the owner)
    owner: Principal | None = None
    body: bytes | None = None
    ttfb: float | None = None
    client_disconnected: bool = False
    streamed: bool = False  # the response was relayed as a stream
    owner_registered: bool = False
    upstream_headers: CIMultiDictProxy[str] | None = None


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    """Forward any request under the API prefixes; meter the ones that bill."""
    if not is_forwarded(request.path):
        raise NotFound(f"No Gemini API route at {request.path!r}.")
    call = await admit(request, started=time.perf_counter())
    _check_journal(request, call.route)
    upstream = await _open_upstream(request, call)
    call.ttfb = time.perf_counter() - call.started
    call.upstream_headers = upstream.headers
    route = call.route
    content_type = upstream.headers.get("content-type", "")
    endpoint = route.endpoint
    if endpoint is None:
        return await _relay_stream(request, upstream, call, tap=None)
    if content_type.startswith("text/event-stream"):
        return await _relay_stream(request, upstream, call, tap=stream_tap(endpoint, sse=True))
    if route.action is Action.STREAM_GENERATE and upstream.status < 400:
        return await _relay_stream(request, upstream, call, tap=stream_tap(endpoint, sse=False))
    try:
        return await _relay_whole(request, upstream, call)
    finally:
        upstream.release()


async def admit(request: web.Request, started: float) -> _Call:
    """Everything that may refuse a call before it reaches the upstream."""
    app = request.app
    auth = app[authenticator_key]
    route = classify(request.method, request.path)
    key = presented_key(request.headers, request.query)
    if key is None and _is_upload_leg(request, route):
        # The byte legs of a resumable upload carry no API key: the upload id the
        # first (authenticated) leg obtained is their credential upstream.
        return _Call(route=route, principal=None, started=started)
    principal = await auth.authenticate(key)
    call = _Call(route=route, principal=principal, started=started)
    if route.action in (Action.INTERACTION_CREATE, Action.GENERATE, Action.STREAM_GENERATE):
        call.body = await _read_body(request, app[settings_key].max_request_bytes)
        call.meta = request_meta(route, parse_json(call.body))
        if call.meta.previous_interaction_id is not None:
            await auth.check_owner(call.meta.previous_interaction_id, principal)
    elif route.interaction_id is not None:
        call.owner = await auth.check_owner(route.interaction_id, principal)
    return call


def _check_journal(request: web.Request, route: Route) -> None:
    """Refuse a billable call before forwarding it when its record could not be kept."""
    journal = request.app[journal_key]
    if route.metered and journal is not None and not journal.admit():
        raise ServiceUnavailable(
            "Gemini Meter cannot record more calls right now (its journal is full); retry later."
        )


def _is_upload_leg(request: web.Request, route: Route) -> bool:
    return (
        route.action is Action.FORWARD
        and request.path.startswith("/upload/")
        and "upload_id" in request.query
    )


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"Request body exceeds the proxy's limit of {limit} bytes.")


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise _too_large(limit) from exc


def _upstream_url(base: str, raw_path: str, drop_key: bool) -> URL:
    """The upstream URL: the raw path and query as the client sent them.

    The query is kept byte for byte (no re-encoding), except that a ``key``
    parameter is removed when the proxy supplies the upstream key itself.
    """
    path, sep, query = raw_path.partition("?")
    if sep and drop_key:
        kept = [p for p in query.split("&") if unquote_plus(p.partition("=")[0]) != "key"]
        query = "&".join(kept)
        sep = "?" if query else ""
    return URL(base + path + sep + query, encoded=True)


def _upstream_headers(request: web.Request, call: _Call) -> CIMultiDict[str]:
    settings = request.app[settings_key]
    if settings.auth_mode is AuthMode.VIRTUAL_KEYS and call.principal is not None:
        assert settings.upstream_api_key is not None
        headers = swap_key(request.headers, settings.upstream_api_key.get_secret_value())
    else:
        # Passthrough, or an upload's keyless byte leg: never lend it the upstream key,
        # or anyone could spend it by adding an upload_id to a request.
        headers = CIMultiDict(request.headers)
    # Headers the client marked hop-by-hop in Connection go too (RFC 9110 7.6.1).
    named = {h.strip().lower() for h in headers.get("connection", "").split(",") if h.strip()}
    for name in _REQUEST_DROP | named:
        headers.popall(name, None)
    if call.route.metered and "accept-encoding" in headers:
        accepted = [
            token
            for token in headers["accept-encoding"].split(",")
            if token.split(";")[0].strip().lower() in _DECODABLE
        ]
        headers["accept-encoding"] = ",".join(accepted) if accepted else "identity"
    if request.content_length is not None and call.body is None:
        # A streamed upload keeps its length so the upstream sees no chunking.
        headers["content-length"] = str(request.content_length)
    return headers


async def _limited(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, refused once it passes ``limit`` bytes."""
    seen = 0
    async for chunk in request.content.iter_any():
        seen += len(chunk)
        if seen > limit:
            raise _too_large(limit)
        yield chunk


async def _open_upstream(request: web.Request, call: _Call) -> aiohttp.ClientResponse:
    settings = request.app[settings_key]
    session = request.app[upstream_session_key]
    virtual = settings.auth_mode is AuthMode.VIRTUAL_KEYS
    url = _upstream_url(settings.upstream, request.raw_path, drop_key=virtual)
    headers = _upstream_headers(request, call)
    data: bytes | AsyncIterator[bytes] | None = call.body
    if data is None and request.body_exists:
        limit = settings.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(limit)
        data = _limited(request, limit)
    try:
        return await session.request(
            request.method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
        )
    except RequestTooLarge:
        raise
    except TimeoutError as exc:
        raise UpstreamTimeout("The Gemini API did not answer in time.") from exc
    except _UPSTREAM_FAILURES as exc:
        if isinstance(exc.__cause__, RequestTooLarge) or isinstance(
            exc.__context__, RequestTooLarge
        ):
            raise _too_large(settings.max_request_bytes) from exc
        log.warning("upstream unreachable: %s", type(exc).__name__)
        raise UpstreamUnavailable("The Gemini API could not be reached.") from exc


def _response_headers(upstream: aiohttp.ClientResponse, *, keep_length: bool) -> CIMultiDict[str]:
    headers = CIMultiDict(upstream.headers)
    named = {h.strip().lower() for h in headers.get("connection", "").split(",") if h.strip()}
    for name in HOP_BY_HOP | named:
        headers.popall(name, None)
    if not keep_length:
        headers.popall("content-length", None)
    return headers


class _Decoder:
    """Undoes gzip/deflate on a copy of the body for the tap; the client gets the original."""

    __slots__ = ("_z",)

    def __init__(self, encoding: str) -> None:
        # wbits 47 accepts both gzip and zlib headers. A body it cannot undo stops
        # feeding the tap, so its usage shows up as missing (and flagged), not wrong.
        self._z: zlib._Decompress | None = (
            zlib.decompressobj(47) if encoding in ("gzip", "deflate", "x-gzip") else None
        )

    def __call__(self, chunk: bytes) -> bytes:
        if self._z is None:
            return chunk
        try:
            return self._z.decompress(chunk)
        except zlib.error:
            self._z = None
            return b""


async def _relay_whole(
    request: web.Request, upstream: aiohttp.ClientResponse, call: _Call
) -> web.StreamResponse:
    """A metered call answered with one JSON body: read it, meter it, answer it."""
    try:
        body = await upstream.read()
    except TimeoutError as exc:
        raise UpstreamTimeout("The Gemini API stopped answering mid-response.") from exc
    except _UPSTREAM_FAILURES as exc:
        raise UpstreamUnavailable("The Gemini API connection broke mid-response.") from exc
    response = web.Response(
        status=upstream.status, body=body, headers=_response_headers(upstream, keep_length=False)
    )
    encoding = upstream.headers.get("content-encoding", "identity").lower()
    decoded = _Decoder(encoding)(body) if encoding != "identity" else body
    summary = _summarize(call, parse_json(decoded), upstream.status)
    durable = _finish(request, call, upstream.status, summary)
    if durable is not None:
        # The answer goes out once its record is on disk (a group commit's fsync):
        # a client never holds a response the meter could still lose.
        await asyncio.shield(durable)
    return response


def _summarize(call: _Call, payload: object, status: int) -> ResponseSummary:
    if status >= 400:
        return ResponseSummary()
    if call.route.action in (Action.INTERACTION_CREATE, Action.INTERACTION_GET):
        return summarize_interaction(payload)
    return summarize_generate(payload)


async def _relay_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    call: _Call,
    tap: StreamTap | None,
) -> web.StreamResponse:
    """Relay the body chunk by chunk as it arrives, feeding a tap if metered.

    The pump runs as its own task, shielded from the handler: if the client
    goes away mid-stream (and the server cancels the handler) the upstream is
    still read to its end, within the read timeout, so the call is billed on
    its final usage. A client that left before the reply even started is no
    different: the pump still reads and bills it. The app's cleanup waits for
    pumps still running (and cuts them after the shutdown grace period).
    """
    response = web.StreamResponse(
        status=upstream.status, headers=_response_headers(upstream, keep_length=True)
    )
    call.streamed = True
    try:
        await response.prepare(request)
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        call.client_disconnected = True
    except BaseException:
        # Cancelled before the pump exists: bill what the upstream sends, detached.
        call.client_disconnected = True
        _start_pump(request, response, upstream, call, tap)
        raise
    pump = _start_pump(request, response, upstream, call, tap)
    try:
        return await asyncio.shield(pump)
    except asyncio.CancelledError:
        call.client_disconnected = True
        raise


def _start_pump(
    request: web.Request,
    response: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    call: _Call,
    tap: StreamTap | None,
) -> asyncio.Task[web.StreamResponse]:
    pump = asyncio.create_task(_pump(request, response, upstream, call, tap))
    pumps = request.app[pumps_key]
    pumps.add(pump)
    pump.add_done_callback(pumps.discard)
    return pump


async def _pump(
    request: web.Request,
    response: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    call: _Call,
    tap: StreamTap | None,
) -> web.StreamResponse:
    decode = _Decoder(upstream.headers.get("content-encoding", "identity").lower())
    broken = False
    cut = False
    durable: asyncio.Future[None] | None = None
    try:
        async for chunk in upstream.content.iter_any():
            if tap is not None:
                tap.feed(decode(chunk))
                if not call.owner_registered and isinstance(tap, InteractionStreamTap):
                    # Own the interaction as soon as the stream names it: the client
                    # may fetch or continue it before this stream has ended.
                    _register_owner(request, call, tap.interaction_id, upstream.status)
            if call.client_disconnected:
                if tap is None:
                    break
                continue
            try:
                await response.write(chunk)
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                call.client_disconnected = True
                if tap is None:
                    break
    except (TimeoutError, *_UPSTREAM_FAILURES):
        broken = True
        log.warning("upstream stream broke off: %s %s", request.method, request.path)
    except asyncio.CancelledError:
        # Cut at shutdown after the grace period: record what was seen, then stop.
        cut = True
    finally:
        upstream.release()
        if tap is not None:
            durable = _finish(request, call, upstream.status, _summary_of(tap))
    if cut:
        raise asyncio.CancelledError
    if broken or call.client_disconnected:
        # The client must not take a truncated body for a whole one.
        if request.transport is not None:
            request.transport.close()
        return response
    if durable is not None:
        await asyncio.shield(durable)  # the last byte only once the record is on disk
    try:
        await response.write_eof()
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        pass
    return response


def _summary_of(tap: StreamTap) -> ResponseSummary:
    try:
        return tap.finish()
    except Exception:
        # A bug in a tap must not lose the record: it is kept, flagged.
        log.exception("a stream tap failed; the call is recorded without its usage")
        return ResponseSummary(parse_error=True)


def billing(action: Action, status: int, streamed: bool, summary: ResponseSummary) -> bool | None:
    """Whether a metered response is recorded: None (not now), False (a final
    record) or True (a provisional one).

    An interaction bills once, when a response first shows it no longer pending
    (garbage included: it is recorded with parse_error); a whole response that
    shows it pending bills nothing yet (a later poll will). A stream that ends
    while the interaction is pending (cut, or resumed and cut again) leaves a
    provisional record of the usage it carried, zero if none, which the terminal
    usage seen later replaces. Everything else is a final record.
    """
    if status < 400 and action in (Action.INTERACTION_CREATE, Action.INTERACTION_GET):
        if not usage_due(summary.status):
            return True if streamed else None
    return False


def _finish(
    request: web.Request, call: _Call, status: int, summary: ResponseSummary
) -> asyncio.Future[None] | None:
    """Decide whether this response is billable and hand its record on; returns a
    future done once the record is journaled (None when there is nothing to wait for)."""
    action = call.route.action
    principal = call.principal
    assert principal is not None  # metered calls are always authenticated
    interaction_id = summary.interaction_id
    _register_owner(request, call, interaction_id, status)
    provisional = billing(action, status, call.streamed, summary)
    if provisional is None:
        return None
    if status >= 400:
        interaction_id = None
    headers = call.upstream_headers
    effective_tier = headers.get("x-gemini-service-tier") if headers is not None else None
    record = UsageRecord(
        request_id=uuid.uuid4().hex,
        created_at=datetime.now(UTC),
        principal=call.owner or principal,
        model=call.meta.model or call.route.model or summary.model,
        endpoint=call.route.endpoint,  # type: ignore[arg-type]  # metered: never None
        streamed=call.streamed or call.meta.stream or action is Action.STREAM_GENERATE,
        upstream_status=status,
        latency_seconds=time.perf_counter() - call.started,
        ttfb_seconds=call.ttfb,
        interaction_id=interaction_id,
        response_id=summary.response_id,
        previous_interaction_id=call.meta.previous_interaction_id,
        requested_service_tier=call.meta.service_tier,
        effective_service_tier=(effective_tier or summary.service_tier or None),
        labels=call.meta.labels or {},
        code_execution_calls=summary.code_execution_calls,
        code_execution_errors=summary.code_execution_errors,
        # a provisional record's usage was not due yet: none is not an error
        parse_error=summary.parse_error and status < 400 and not provisional,
        client_disconnected=call.client_disconnected,
        provisional=provisional,
    )
    if summary.usage is not None:
        record.usage = summary.usage
    return request.app[recorder_key].finish(record)


def _register_owner(
    request: web.Request, call: _Call, interaction_id: str | None, status: int
) -> None:
    """Remember who created an interaction, in this process and (via the writer) for all."""
    principal = call.principal
    if (
        call.owner_registered
        or interaction_id is None
        or principal is None
        or status >= 400
        or call.route.action is not Action.INTERACTION_CREATE
    ):
        return
    call.owner_registered = True
    request.app[authenticator_key].remember_owner(interaction_id, principal)
    request.app[recorder_key].own(interaction_id, principal, call.meta.model)
