"""The proxy handler: one call's path end to end, from admission to its record.

``proxy_handler`` takes every request under the API prefixes through four
steps, read top to bottom here:

1. ``admission``: ``admit`` refuses what the proxy could not check the way the
   upstream will read it, resolves the key to a ``Principal`` and checks the
   owner of everything the call names; then the journal must have room
   (``check_journal``) and a billable call reserves its estimate against its
   enforced budgets (``reserve``), or is refused with 429. The reservation is
   settled by the recorder, or released if the call yields no record.
2. ``upstream``: ``open_upstream`` sends one request on the app's upstream
   ``client.Client``, with the client's key swapped for the upstream key in
   ``virtual_keys`` mode and hop-by-hop headers dropped. Connection failures
   become 502, silence 504.
3. relay (``_forward`` picks one): a whole JSON body is answered as it came
   (``_relay_whole``); an SSE or JSON-array stream is written to the client
   as it arrives, what arrived together in one write (``_relay_stream``, its
   ``_pump`` a task of its own), while a tap (``metering.streams``) reads the
   usage out of the same bytes. The Batch API's answers go through
   ``batches``, and those naming cached contents, files and File Search stores
   through ``owned.relay_owned``.
4. ``_finish``: build the ``UsageRecord`` and hand it to the recorder, which
   never awaits the database (``billing`` says whether a response is recorded).

Response bytes are relayed unchanged; the proxy decompresses only a copy for
the tap. A compressed request body is forwarded as aiohttp decoded it, without
its Content-Encoding. One exception each way: a streamed OpenAI-compatible chat
completion whose client did not ask for usage is forwarded asking for it, and
the usage-only event that adds is taken out of the stream
(``admission._ask_stream_usage``). An interaction's owner is committed before
its id is released (``owned.register_owner``): the one database write on the
request path.

Cached contents, files and File Search stores are owned the same way
(``owned.relay_owned``): their methods (a store's documents, operations and
imports too) are checked against the owner at admission, as is every cache,
file or store a request body names (``references``); the response that creates
one commits its owner before it is relayed, a cache's create, TTL change and
delete record its storage (``metering.caching``), and a list is filtered to the
caller's own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import cast

import aiohttp
from aiohttp import web

from ..errors import NotFound, PermissionDenied, ServiceUnavailable
from ..metering.media import summarize_predict
from ..metering.openai import (
    OpenAIChatStreamTap,
    OpenAIImagesStreamTap,
    UsageChunkFilter,
    summarize_chat,
    summarize_embeddings,
    summarize_images,
)
from ..metering.parsers import (
    ResponseSummary,
    parse_json,
    summarize_embed,
    summarize_generate,
    summarize_interaction,
    usage_due,
)
from ..metering.records import EndpointKind, Usage, UsageRecord, new_request_id
from ..metering.streams import InteractionStreamTap, StreamTap, stream_tap
from . import batches
from .admission import Call, admit, check_journal, mints_unmetered_access, reserve
from .client import Response
from .front import FrontRequest, FrontStream
from .owned import register_media, register_owner, relay_owned, remember_upload, stable_request_id
from .routes import Action, is_forwarded
from .typedefs import (
    ApiRequest,
    budgets_key,
    keyless_uploads_key,
    metrics_key,
    pumps_key,
    recorder_key,
    settings_key,
)
from .upstream import UPSTREAM_FAILURES, Decoder, open_upstream, read_whole, response_headers

__all__ = ["billing", "proxy_handler", "record_unmetered"]

log = logging.getLogger("gemini_meter.proxy")


async def proxy_handler(request: ApiRequest) -> web.StreamResponse:
    """Forward any request under the API prefixes; meter the ones that bill."""
    if not is_forwarded(request.path):
        raise NotFound(f"No Gemini API route at {request.path!r}.")
    call = await admit(request, started=time.perf_counter())
    if mints_unmetered_access(call.route, request.app[settings_key].auth_mode):
        # Only the canonical route (server.live.auth_tokens_handler) mints, with a handle
        # of the proxy's own in place of the token; no other spelling reaches Google.
        raise PermissionDenied(
            "Gemini Meter mints ephemeral tokens only at POST /v1alpha/auth_tokens."
        )
    check_journal(request, call.route)
    if call.principal is not None:
        await reserve(request, call)
        try:
            return await _forward(request, call)
        finally:
            # A stream's pump settles or releases it when it ends (see _start_pump).
            if not call.streamed:
                request.app[budgets_key].release(call.reservation)
    # A keyless upload leg holds an upstream connection for as long as its client
    # takes to send the bytes: only so many at once, so keyed calls always get one.
    limiter = request.app[keyless_uploads_key]
    if limiter.locked():
        request.app[metrics_key].keyless_upload_refusals.labels("busy").inc()
        raise ServiceUnavailable("Too many upload legs in flight; retry shortly.")
    async with limiter:
        return await _forward(request, call)


async def _forward(request: ApiRequest, call: Call) -> web.StreamResponse:
    opened = time.perf_counter()
    try:
        upstream = await open_upstream(request, call)
    finally:
        call.upstream_wait += time.perf_counter() - opened
    call.ttfb = time.perf_counter() - call.started
    call.upstream_headers = upstream.headers
    if upstream.status >= 400:
        request.app[metrics_key].upstream_error(upstream.status)
    if call.principal is not None and "x-goog-upload-url" in upstream.headers:
        await remember_upload(request, call.principal, upstream)
    route = call.route
    content_type = upstream.headers.get("content-type", "")
    endpoint = route.endpoint
    if route.action in _BATCH_ANSWERS:
        try:
            return await _relay_batch(request, upstream, call)
        finally:
            upstream.release()
    if route.action is Action.FILE_DOWNLOAD:
        # Metered only when it is a batch's responses file; a refusal is relayed, not recorded.
        ok = upstream.status < 400
        lines = batches.download_tap(request, _batch_call(call)) if ok else None
        return await _relay_stream(request, upstream, call, tap=lines)
    if route.owns_response:
        # Small JSON naming owned resources: read whole, then owned, billed or filtered.
        try:
            return await relay_owned(request, upstream, call)
        finally:
            upstream.release()
    if endpoint is None:
        if route.unmetered is not None:
            record_unmetered(request, call, upstream)
        return await _relay_stream(request, upstream, call, tap=None)
    if content_type.startswith("text/event-stream"):
        tap: StreamTap
        if endpoint is EndpointKind.OPENAI_CHAT_COMPLETIONS:
            tap = OpenAIChatStreamTap()
        elif endpoint is EndpointKind.OPENAI_IMAGES:
            tap = OpenAIImagesStreamTap(per_image=call.per_image)
        else:
            tap = stream_tap(endpoint, sse=True)
        return await _relay_stream(request, upstream, call, tap=tap)
    if route.action is Action.STREAM_GENERATE and upstream.status < 400:
        return await _relay_stream(request, upstream, call, tap=stream_tap(endpoint, sse=False))
    try:
        return await _relay_whole(request, upstream, call)
    finally:
        upstream.release()


# Batch API answers read whole: to own a new batch, or to record inline results.
_BATCH_ANSWERS = frozenset(
    {Action.BATCH_CREATE, Action.BATCH_EMBED_CREATE, Action.BATCH_GET, Action.BATCH_LIST}
)


async def _relay_whole(request: ApiRequest, upstream: Response, call: Call) -> web.StreamResponse:
    """A metered call answered with one JSON body: read it, meter it, answer it."""
    body, decoded = await read_whole(upstream, call)
    response = web.Response(
        status=upstream.status, body=body, headers=response_headers(upstream, keep_length=False)
    )
    payload = parse_json(decoded)
    await register_media(request, call, payload, upstream.status)
    summary = _summarize(call, payload, upstream.status)
    await register_owner(request, call, summary.interaction_id, upstream.status)
    # The record is in the journal once _finish returns: a client never holds a
    # response the meter could still lose.
    _finish(request, call, upstream.status, summary)
    return response


def _batch_call(call: Call) -> batches.Call:
    assert call.principal is not None  # batch routes are always keyed
    return batches.Call(call.route, call.principal, call.owned, call.started)


async def _relay_batch(request: ApiRequest, upstream: Response, call: Call) -> web.StreamResponse:
    """A batch's create, get or list: read whole, own or record, answer (a list filtered)."""
    body, decoded = await read_whole(upstream, call)
    replaced = await batches.answer(
        request, _batch_call(call), upstream.status, parse_json(decoded)
    )
    if replaced is not None:
        body = replaced
    headers = response_headers(upstream, keep_length=False, keep_encoding=replaced is None)
    return web.Response(status=upstream.status, body=body, headers=headers)


def _summarize(call: Call, payload: object, status: int) -> ResponseSummary:
    if status >= 400:
        return ResponseSummary()
    if call.route.action in (Action.INTERACTION_CREATE, Action.INTERACTION_GET):
        return summarize_interaction(payload)
    if call.route.action in (Action.EMBED, Action.BATCH_EMBED):
        return summarize_embed(payload, call.parsed)
    if call.route.action is Action.OPENAI_CHAT:
        return summarize_chat(payload)
    if call.route.action is Action.OPENAI_EMBED:
        return summarize_embeddings(payload, call.parsed)
    if call.route.action is Action.PREDICT:
        return summarize_predict(payload)
    if call.route.action is Action.OPENAI_IMAGES:
        return summarize_images(payload, per_image=call.per_image)
    if call.route.action is Action.OPERATION_GET:
        return call.bill.summary if call.bill is not None else ResponseSummary()
    if call.route.action is Action.PREDICT_LONG_RUNNING:
        return ResponseSummary()  # billed when the operation is done
    return summarize_generate(payload)


async def _relay_stream(
    request: ApiRequest,
    upstream: Response,
    call: Call,
    tap: StreamTap | batches.DownloadTap | None,
) -> web.StreamResponse:
    """Relay the body as it arrives, feeding a tap if metered.

    Whatever arrived together goes out in one write: the head with the body's first
    bytes when they came with it, each read of the upstream (all it sent since the
    last) in one piece, and the last bytes with the end of the answer, once the call
    is recorded. What the upstream sends apart goes out apart, as soon as it arrives.
    Each write saved is a system call, and a wake-up of the client (a streamed call
    through the meter went from 6.5 sends to 2.5 against the benchmark's stub).

    The pump runs as its own task, shielded from the handler: if the client
    goes away mid-stream (and the server cancels the handler) the upstream is
    still read to its end, within the read timeout, so the call is billed on
    its final usage. A client that left before the reply even started is no
    different: the pump still reads and bills it. The app's cleanup waits for
    pumps still running (and cuts them after the shutdown grace period).
    """
    # With the usage chunk dropped, the client gets the decoded events the filter passes
    # on, not the upstream's bytes.
    rewritten = call.drops_usage_chunk
    headers = response_headers(upstream, keep_length=not rewritten, keep_encoding=not rewritten)
    response = (
        FrontStream(status=upstream.status, headers=headers)
        if isinstance(request, FrontRequest)
        else web.StreamResponse(status=upstream.status, headers=headers)
    )
    if upstream.arrived:
        # The body's first bytes came with the head: they go out together, in one write.
        # (aiohttp's own switch, which web.Response turns off; a stream's head is otherwise
        # sent at once, as it must be when its first bytes are still to come.)
        response._send_headers_immediately = False
    call.streamed = True
    try:
        await response.prepare(cast(web.BaseRequest, request))  # each answers its own kind
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
    request: ApiRequest,
    response: web.StreamResponse,
    upstream: Response,
    call: Call,
    tap: StreamTap | batches.DownloadTap | None,
) -> asyncio.Task[web.StreamResponse]:
    pump = asyncio.create_task(_pump(request, response, upstream, call, tap))
    pumps = request.app[pumps_key]
    pumps.add(pump)
    pump.add_done_callback(pumps.discard)
    budgets = request.app[budgets_key]
    # The stream's record settled the reservation; without one it is given back.
    pump.add_done_callback(lambda _: budgets.release(call.reservation))
    return pump


async def _pump(
    request: ApiRequest,
    response: web.StreamResponse,
    upstream: Response,
    call: Call,
    tap: StreamTap | batches.DownloadTap | None,
) -> web.StreamResponse:
    decode = Decoder(upstream.headers.get("content-encoding", "identity").lower())
    relayed = UsageChunkFilter() if call.drops_usage_chunk else None
    # A tap that only reads (a generateContent or chat stream's, an interaction's) reads
    # each chunk once it is relayed: its parse is not part of the client's wait for the
    # bytes. The others read first: the filter rewrites the chunk, and a responses file's
    # tap yields while it records. A new interaction's stream is read first until its
    # owner is committed, which must come before the client sees its id.
    owner_first = (
        tap
        if isinstance(tap, InteractionStreamTap) and call.route.action is Action.INTERACTION_CREATE
        else None
    )
    after: StreamTap | None = None
    if relayed is None and owner_first is None and not isinstance(tap, batches.DownloadTap | None):
        after = tap
    broken = False
    cut = False
    # The body's last bytes, held back to go out with its end in one write, once the
    # call is recorded.
    last = b""
    try:
        async for chunk in _timed(upstream, call):
            if after is None and (tap is not None or relayed is not None):
                plain = decode(chunk)
                if isinstance(tap, batches.DownloadTap):
                    await tap.feed(plain)  # it may hold many results: it yields between them
                elif tap is not None:
                    tap.feed(plain)
                if relayed is not None:
                    chunk = relayed.feed(plain)
                if not call.owner_registered and isinstance(tap, InteractionStreamTap):
                    # Own the interaction as soon as the stream names it, before the
                    # chunk that completes that event is relayed: the client may fetch
                    # or continue it (on any replica) before this stream has ended.
                    await register_owner(request, call, tap.interaction_id, upstream.status)
            if call.client_disconnected:
                if tap is None:
                    break
            elif upstream.ended:
                last = chunk
            else:
                try:
                    if chunk:
                        await response.write(chunk)
                except (ConnectionError, aiohttp.ClientConnectionResetError):
                    call.client_disconnected = True
                    if tap is None:
                        break
            if after is not None:
                after.feed(decode(chunk))
            elif owner_first is not None and call.owner_registered:
                after = owner_first  # from the next chunk on: the id is out
    except (TimeoutError, *UPSTREAM_FAILURES):
        broken = True
        log.warning("upstream stream broke off: %s %s", request.method, request.path)
    except asyncio.CancelledError:
        # Cut at shutdown after the grace period: record what was seen, then stop.
        cut = True
    except Exception:
        # A bug while relaying must not lose the record of what the upstream served.
        broken = True
        log.exception("relaying a stream failed: %s %s", request.method, request.path)
    finally:
        upstream.release()
    if isinstance(tap, batches.DownloadTap):
        # Each line was recorded as it completed; a file cut short is not marked recorded.
        try:
            tap.finish(complete=not (broken or cut))
        except Exception:
            log.exception("recording the last results of a responses file failed")
    elif tap is not None:
        if request.transport is None or request.transport.is_closing():
            # Gone before the answer's last bytes went out (or before any did, when they
            # all came at once and nothing was written yet).
            call.client_disconnected = True
        # Journaled before the last byte goes out, as for a whole answer.
        summary = _summary_of(tap)
        await register_owner(request, call, summary.interaction_id, upstream.status)
        _finish(request, call, upstream.status, summary)
    if cut:
        raise asyncio.CancelledError
    if broken or call.client_disconnected:
        # The client must not take a truncated body for a whole one.
        if request.transport is not None:
            request.transport.close()
        return response
    try:
        if relayed is not None:
            last += relayed.close()
        await response.write_eof(last)
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        pass
    return response


async def _timed(upstream: Response, call: Call) -> AsyncIterator[bytes]:
    """The upstream body's chunks as they arrive, adding the time blocked on each
    to ``call.upstream_wait``."""
    while True:
        waiting = time.perf_counter()
        try:
            chunk = await upstream.next_chunk()
        finally:
            call.upstream_wait += time.perf_counter() - waiting
        if not chunk:
            return
        yield chunk


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
    if action is Action.PREDICT_LONG_RUNNING and status < 400:
        return None  # the operation's first poll that sees it done is its bill
    return False


def _finish(request: ApiRequest, call: Call, status: int, summary: ResponseSummary) -> bool:
    """Decide whether this response is billable and hand its record on; returns whether
    a record was kept (it is in the journal by then)."""
    action = call.route.action
    principal = call.principal
    assert principal is not None  # metered calls are always authenticated
    interaction_id = summary.interaction_id
    provisional = billing(action, status, call.streamed, summary)
    bill = call.bill
    if provisional is None or (action is Action.OPERATION_GET and bill is None):
        # (an operation's poll bills only the first time it is seen done)
        return False
    if status >= 400:
        interaction_id = None
    headers = call.upstream_headers
    effective_tier = headers.get("x-gemini-service-tier") if headers is not None else None
    record = UsageRecord(
        # one bill per operation, however often or wherever it is seen done
        request_id=(stable_request_id("operation", bill.resource) if bill else new_request_id()),
        created_at=datetime.now(UTC),
        principal=call.owner or principal,
        model=call.meta.model or call.route.model or summary.model,
        endpoint=call.route.endpoint,  # type: ignore[arg-type]  # metered: never None
        streamed=call.streamed or call.meta.stream or action is Action.STREAM_GENERATE,
        upstream_status=status,
        latency_seconds=time.perf_counter() - call.started,
        ttfb_seconds=call.ttfb,
        upstream_seconds=call.upstream_wait,
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
        estimated=summary.estimated,
        provisional=provisional,
        resource=bill.resource if bill else None,
        # (given, so that the default's empty Usage is not built only to be replaced)
        usage=summary.usage if summary.usage is not None else Usage(),
    )
    return request.app[recorder_key].finish(record, call.reservation)


def record_unmetered(request: ApiRequest, call: Call, upstream: Response) -> bool:
    """Record a call on a billable route the meter cannot read: zero tokens, flagged.

    Recorded as soon as the upstream's status is known (so ``latency_seconds``
    is the time to the response head), before the body is relayed untouched.
    An upload's keyless byte legs are part of the call their first leg started,
    which is the one recorded.
    """
    route = call.route
    assert route.unmetered is not None
    if call.principal is None:
        return False
    content_type = upstream.headers.get("content-type", "")
    return request.app[recorder_key].finish(
        UsageRecord(
            request_id=new_request_id(),
            created_at=datetime.now(UTC),
            principal=call.principal,
            model=call.meta.model or route.model,
            endpoint=route.unmetered.kind,
            streamed=content_type.startswith("text/event-stream"),
            upstream_status=upstream.status,
            latency_seconds=time.perf_counter() - call.started,
            ttfb_seconds=call.ttfb,
            upstream_seconds=call.upstream_wait,
            unmetered_route=True,
        ),
        call.reservation,
    )
