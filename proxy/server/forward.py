"""The proxy handler: admit a call, relay it to the upstream, meter what comes back.

A request goes through four steps, each a small function:

1. ``admission``: ``admit`` refuses what the proxy could not check the way the
   upstream will read it, resolves the key to a ``Principal`` and checks the
   owner of everything the call names; then the journal must have room
   (``check_journal``) and a billable call reserves its estimate against its
   enforced budgets (``reserve``), or is refused with 429.
2. ``upstream``: ``open_upstream`` sends one request on the app's shared
   ``ClientSession``, with the client's key swapped for the upstream key in
   ``virtual_keys`` mode and hop-by-hop headers dropped. Connection failures
   become 502, silence 504.
3. relay: a whole JSON body is answered as it came; an SSE or JSON-array
   stream is written to the client chunk by chunk as it arrives, while a tap
   (``metering.streams``) reads the usage out of the same bytes.
4. ``_finish``: build the ``UsageRecord`` and hand it to the recorder, which
   never awaits the database.

Response bytes are relayed unchanged; the proxy decompresses only a copy for
the tap. A compressed request body is forwarded as aiohttp decoded it, without
its Content-Encoding. One exception each way: a streamed OpenAI-compatible chat
completion whose client did not ask for usage is forwarded asking for it, and
the usage-only event that adds is taken out of the stream
(``admission._ask_stream_usage``).
An interaction's owner is committed before its id is released
(``_register_owner``): the one database write on the request path.

Cached contents, files and File Search stores are owned the same way
(``_relay_owned``): their methods (a store's documents, operations and imports too)
are checked against the owner at admission, as is every cache, file or store a
request body names (``references``); the response that creates one commits its
owner before it is relayed, a cache's create, TTL change and delete record its
storage (``metering.caching``), and a list is filtered to the caller's own.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import aiohttp
from aiohttp import web

from ..errors import NotFound, PermissionDenied, ServiceUnavailable, UpstreamUnavailable
from ..metering.caching import (
    CacheState,
    created_storage,
    deleted_storage,
    now_seconds,
    requested_ttl,
    snapshot,
    updated_storage,
)
from ..metering.media import summarize_predict
from ..metering.openai import (
    OpenAIChatStreamTap,
    UsageChunkFilter,
    summarize_chat,
    summarize_embeddings,
)
from ..metering.parsers import (
    ResponseSummary,
    parse_json,
    summarize_embed,
    summarize_generate,
    summarize_interaction,
    usage_due,
)
from ..metering.records import EndpointKind, Principal, Usage, UsageRecord, new_request_id
from ..metering.streams import InteractionStreamTap, StreamTap, stream_tap
from ..settings import AuthMode
from ..storage.schema import ResourceKind
from . import batches
from .admission import Call, admit, check_journal, mints_unmetered_access, reserve
from .media import operation_bill, operation_created
from .references import filtered_listing
from .routes import Action, body_model, is_forwarded
from .typedefs import (
    authenticator_key,
    budgets_key,
    keyless_uploads_key,
    metrics_key,
    pumps_key,
    recorder_key,
    settings_key,
)
from .upstream import UPSTREAM_FAILURES, Decoder, open_upstream, read_whole, response_headers

log = logging.getLogger("gemini_meter.proxy")


async def proxy_handler(request: web.Request) -> web.StreamResponse:
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


async def _forward(request: web.Request, call: Call) -> web.StreamResponse:
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
        await _remember_upload(request, call.principal, upstream)
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
            return await _relay_owned(request, upstream, call)
        finally:
            upstream.release()
    if endpoint is None:
        if route.unmetered is not None:
            _record_unmetered(request, call, upstream)
        return await _relay_stream(request, upstream, call, tap=None)
    if content_type.startswith("text/event-stream"):
        tap: StreamTap = (
            OpenAIChatStreamTap()
            if endpoint is EndpointKind.OPENAI_CHAT_COMPLETIONS
            else stream_tap(endpoint, sse=True)
        )
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


async def _remember_upload(
    request: web.Request, principal: Principal, upstream: aiohttp.ClientResponse
) -> None:
    """Record the upload id a start leg obtained, before its URL reaches the client."""
    url = upstream.headers["x-goog-upload-url"]
    upload_ids = parse_qs(urlsplit(url).query).get("upload_id", [])
    try:
        for upload_id in upload_ids:
            await request.app[authenticator_key].remember_upload(upload_id, principal)
    except Exception as exc:
        upstream.release()
        log.warning("upload session not recorded: %s", type(exc).__name__)
        raise ServiceUnavailable(
            "Gemini Meter could not record the upload session; retry shortly."
        ) from exc


async def _relay_whole(
    request: web.Request, upstream: aiohttp.ClientResponse, call: Call
) -> web.StreamResponse:
    """A metered call answered with one JSON body: read it, meter it, answer it."""
    body, decoded = await read_whole(upstream, call)
    response = web.Response(
        status=upstream.status, body=body, headers=response_headers(upstream, keep_length=False)
    )
    payload = parse_json(decoded)
    await _register_media(request, call, payload, upstream.status)
    summary = _summarize(call, payload, upstream.status)
    await _register_owner(request, call, summary.interaction_id, upstream.status)
    # The record is in the journal once _finish returns: a client never holds a
    # response the meter could still lose.
    _finish(request, call, upstream.status, summary)
    return response


def _batch_call(call: Call) -> batches.Call:
    assert call.principal is not None  # batch routes are always keyed
    return batches.Call(call.route, call.principal, call.owned, call.started)


async def _relay_batch(
    request: web.Request, upstream: aiohttp.ClientResponse, call: Call
) -> web.StreamResponse:
    """A batch's create, get or list: read whole, own or record, answer (a list filtered)."""
    body, decoded = await read_whole(upstream, call)
    replaced = await batches.answer(
        request, _batch_call(call), upstream.status, parse_json(decoded)
    )
    headers = response_headers(upstream, keep_length=False)
    if replaced is not None:
        body = replaced
        headers.popall("content-encoding", None)
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
    if call.route.action is Action.OPERATION_GET:
        return call.bill.summary if call.bill is not None else ResponseSummary()
    if call.route.action is Action.PREDICT_LONG_RUNNING:
        return ResponseSummary()  # billed when the operation is done
    return summarize_generate(payload)


async def _register_media(request: web.Request, call: Call, payload: object, status: int) -> None:
    """Own a new Veo operation, or bill a done one and own its videos, before relaying."""
    principal = call.principal
    if status >= 400 or principal is None:
        return
    route = call.route
    if route.action is Action.PREDICT_LONG_RUNNING:
        created = operation_created(payload, call.parsed)
        if created is not None:
            name, state = created
            model = call.meta.model or route.model
            await _own(request, ResourceKind.OPERATION, name, principal, model=model, state=state)
    elif route.action is Action.OPERATION_GET and route.resource is not None:
        auth = request.app[authenticator_key]
        bill = await operation_bill(auth, route.resource, call.resource, payload)
        if bill is None:
            return
        call.bill = bill
        if bill.owner is not None:
            call.owner = bill.owner  # the creator's, whoever of their team polled it
            for video in bill.videos:
                await _own(
                    request, ResourceKind.FILE, video, bill.owner, model=bill.model, state=None
                )
        if bill.state is not None:
            try:
                await auth.update_resource_state(ResourceKind.OPERATION, bill.resource, bill.state)
            except Exception as exc:  # the bill's request_id keeps a second one out anyway
                log.warning("operation state not updated: %s", type(exc).__name__)


async def _relay_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    call: Call,
    tap: StreamTap | batches.DownloadTap | None,
) -> web.StreamResponse:
    """Relay the body chunk by chunk as it arrives, feeding a tap if metered.

    The pump runs as its own task, shielded from the handler: if the client
    goes away mid-stream (and the server cancels the handler) the upstream is
    still read to its end, within the read timeout, so the call is billed on
    its final usage. A client that left before the reply even started is no
    different: the pump still reads and bills it. The app's cleanup waits for
    pumps still running (and cuts them after the shutdown grace period).
    """
    headers = response_headers(upstream, keep_length=not call.drops_usage_chunk)
    if call.drops_usage_chunk:
        # The client gets the decoded events the filter passes on, not the upstream's bytes.
        headers.popall("content-encoding", None)
    response = web.StreamResponse(status=upstream.status, headers=headers)
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
    request: web.Request,
    response: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    call: Call,
    tap: StreamTap | batches.DownloadTap | None,
) -> web.StreamResponse:
    decode = Decoder(upstream.headers.get("content-encoding", "identity").lower())
    relayed = UsageChunkFilter() if call.drops_usage_chunk else None
    broken = False
    cut = False
    try:
        async for chunk in _timed(upstream, call):
            if tap is not None or relayed is not None:
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
                    await _register_owner(request, call, tap.interaction_id, upstream.status)
            if call.client_disconnected:
                if tap is None:
                    break
                continue
            try:
                if chunk:
                    await response.write(chunk)
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                call.client_disconnected = True
                if tap is None:
                    break
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
        # Journaled before the last byte goes out, as for a whole answer.
        summary = _summary_of(tap)
        await _register_owner(request, call, summary.interaction_id, upstream.status)
        _finish(request, call, upstream.status, summary)
    if cut:
        raise asyncio.CancelledError
    if broken or call.client_disconnected:
        # The client must not take a truncated body for a whole one.
        if request.transport is not None:
            request.transport.close()
        return response
    try:
        if relayed is not None and (rest := relayed.close()):
            await response.write(rest)
        await response.write_eof()
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        pass
    return response


async def _timed(upstream: aiohttp.ClientResponse, call: Call) -> AsyncIterator[bytes]:
    """The upstream body's chunks as they arrive, adding the time blocked on each
    to ``call.upstream_wait``."""
    chunks = upstream.content.iter_any()
    while True:
        waiting = time.perf_counter()
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        finally:
            call.upstream_wait += time.perf_counter() - waiting
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


def _finish(request: web.Request, call: Call, status: int, summary: ResponseSummary) -> bool:
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
        request_id=(_stable_request_id("operation", bill.resource) if bill else new_request_id()),
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
    )
    if summary.usage is not None:
        record.usage = summary.usage
    return request.app[recorder_key].finish(record, call.reservation)


def _record_unmetered(request: web.Request, call: Call, upstream: aiohttp.ClientResponse) -> bool:
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


async def _register_owner(
    request: web.Request, call: Call, interaction_id: str | None, status: int
) -> None:
    """Make an interaction's creator its owner, in the database before the id is released.

    Committed at once in ``virtual_keys`` mode (the one database write on the
    hot path, creates only), so any replica answers the owner the moment the
    client has the id; if the database does not take it in time, the row goes
    to the batching writer and this process answers from memory meanwhile.
    Passthrough mode checks no owners, so the writer's queue is enough there.
    """
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
    app = request.app
    auth = app[authenticator_key]
    if auth.mode is AuthMode.VIRTUAL_KEYS:
        if await auth.commit_owner(interaction_id, principal, call.meta.model):
            return
        app[metrics_key].owner_commit_fallbacks.inc()
    else:
        auth.remember_owner(interaction_id, principal)
    app[recorder_key].own(interaction_id, principal, call.meta.model)


# --- owned resources: uploaded files and cached contents ------------------------------

# Where a list response carries its items, by the kind of resource listed.
_LIST_FIELDS = {
    ResourceKind.CACHED_CONTENT: "cachedContents",
    ResourceKind.FILE: "files",
    ResourceKind.FILE_SEARCH_STORE: "fileSearchStores",
}


async def _relay_owned(
    request: web.Request, upstream: aiohttp.ClientResponse, call: Call
) -> web.StreamResponse:
    """A response that names owned resources: read it whole, act on it, then answer it.

    An upload's files become the uploader's, and a new cache its creator's, before the
    client learns their names (``_own``); a cache's create, TTL change and delete bill its
    storage (``_bill_storage``); a list keeps only the caller's own items. Only small
    JSON bodies come this way: a download is relayed as a stream like any other body.
    """
    body, decoded = await read_whole(upstream, call)
    status = upstream.status
    headers = response_headers(upstream, keep_length=False)
    route = call.route
    if "x-goog-upload-url" in headers:
        headers["x-goog-upload-url"] = _through_proxy(request, headers["x-goog-upload-url"])
    if route.lists is not None:
        if status < 400:
            body = await _filtered_list(request, call, route.lists, decoded)
            headers.popall("content-encoding", None)
    elif route.action is Action.FILE_UPLOAD:
        if status < 400:
            await _own_files(request, call, parse_json(decoded))
    elif route.action is Action.STORE_CREATE:
        if status < 400:
            await _own_store(request, call, parse_json(decoded))
    else:
        await _bill_storage(request, call, status, parse_json(decoded))
    return web.Response(status=status, body=body, headers=headers)


async def _filtered_list(
    request: web.Request, call: Call, kind: ResourceKind, decoded: bytes
) -> bytes:
    """A list response with only the items the caller may use (passthrough: all of them)."""
    auth = request.app[authenticator_key]
    if auth.mode is AuthMode.PASSTHROUGH or call.principal is None:
        return decoded
    payload = parse_json(decoded)
    field = _LIST_FIELDS[kind]
    items = payload.get(field, []) if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or not isinstance(items, list):
        # Relaying what the proxy cannot filter could show other users' resources.
        raise UpstreamUnavailable("The Gemini API answered a list Gemini Meter could not read.")
    names = [_name_of(item) for item in items]
    mine = await auth.owned_names(kind, call.principal, {n for n in names if n is not None})
    kept = [item for item, name in zip(items, names, strict=True) if name in mine]
    return filtered_listing(payload, field, kept)


def _through_proxy(request: web.Request, upload_url: str) -> str:
    """An upload session's URL with the proxy's origin for Google's.

    The SDK sends a resumable upload's byte legs to the URL the start leg answered
    with (google-genai 3.6.1 keeps its host unless the caller passes its own
    ``base_url`` per upload): left as Google's, the last leg, whose answer names the
    file, would go past the proxy and the file would have no owner. The origin is the
    one the client reached the proxy at (its scheme as this server sees it).
    """
    parts = urlsplit(upload_url)
    return parts._replace(scheme=request.scheme, netloc=request.host).geturl()


def _name_of(resource: object) -> str | None:
    name = resource.get("name") if isinstance(resource, dict) else None
    return name if isinstance(name, str) and name else None


def _uploaded_files(payload: object) -> list[str]:
    """The files an upload response names: ``{"file": {...}}``, or ``{"files": [...]}``
    (``files:register``)."""
    if not isinstance(payload, dict):
        return []
    found = [payload.get("file")]
    listed = payload.get("files")
    if isinstance(listed, list):
        found.extend(listed)
    names = (_name_of(item) for item in found)
    return [name for name in names if name is not None and name.startswith("files/")]


async def _own_files(request: web.Request, call: Call, payload: object) -> None:
    # A keyless leg's files are its session's starter's; a keyed call's, the caller's.
    owner = call.uploader or call.principal
    if owner is None:
        return
    for name in _uploaded_files(payload):
        await _own(request, ResourceKind.FILE, name, owner, model=None, state=None)


async def _own_store(request: web.Request, call: Call, payload: object) -> None:
    """A new File Search store becomes its creator's, before its name reaches the client.

    Google names the store (``FileSearchStore.name`` is output only; the create request
    has no id parameter: https://ai.google.dev/api/file-search/file-search-stores, read
    2026-11-29), so no client can create a store under a name another user once owned.
    """
    name = _name_of(payload)
    assert call.principal is not None  # a create is always authenticated
    if name is None or not name.startswith("fileSearchStores/") or name.count("/") != 1:
        # Nothing the proxy can own: the client could not use it through the proxy either.
        log.warning("a File Search store's create answered no store name")
        return
    # The embedding model indexing bills at: the model of the store's import records.
    model = (
        body_model({"model": payload.get("embeddingModel")}) if isinstance(payload, dict) else None
    )
    await _own(
        request, ResourceKind.FILE_SEARCH_STORE, name, call.principal, model=model, state=None
    )


async def _own(
    request: web.Request,
    kind: ResourceKind,
    name: str,
    owner: Principal,
    *,
    model: str | None,
    state: dict[str, object] | None,
) -> None:
    """Store the owner of a resource just created, before its name reaches the client.

    Should the database not take it in time, the write goes on in the background and
    this process already answers the owner (``Authenticator.commit_resource``).
    """
    auth = request.app[authenticator_key]
    if not await auth.commit_resource(kind, name, owner, model=model, state=state):
        request.app[metrics_key].owner_commit_fallbacks.inc()


def _stable_request_id(*parts: str) -> str:
    """The same id for the same storage line however often (or wherever) it is seen."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "gemini-meter:" + ":".join(parts)).hex


async def _bill_storage(request: web.Request, call: Call, status: int, payload: object) -> bool:
    """Own a new cache and record its storage line (``metering.caching`` has the rules).

    create: the lifetime asked, charged whole; PATCH: the change of expiry; DELETE: the
    unexpired rest given back, no line once expired. An upstream error is recorded with
    no usage, like every metered route's; a response (or a stored state) the proxy cannot
    read is recorded with ``parse_error`` and no usage, never guessed.
    """
    route = call.route
    if status >= 400:
        return _storage_record(request, call, status, new_request_id(), route.resource)
    cache = snapshot(payload)
    if route.action is Action.CACHE_CREATE:
        owner = call.principal
        name = cache.name if cache is not None else _name_of(payload)
        assert owner is not None  # a create is always authenticated
        if name is not None:
            state = CacheState.of(cache).to_json() if cache is not None else None
            model = cache.model if cache is not None else None
            await _own(
                request,
                ResourceKind.CACHED_CONTENT,
                name,
                owner,
                model=model or call.meta.model,
                state=state,
            )
        if cache is None:
            return _storage_record(request, call, status, new_request_id(), name, parse_error=True)
        seconds = created_storage(cache, requested_ttl(call.parsed), now_seconds())
        return _storage_record(
            request,
            call,
            status,
            _stable_request_id(cache.name, "create"),
            cache.name,
            storage=seconds,
            model=cache.model,
        )
    name = route.resource
    assert name is not None  # a cache's own methods name it
    stored = CacheState.from_json(call.resource.state) if call.resource is not None else None
    if route.action is Action.CACHE_UPDATE:
        if cache is None or stored is None:
            return _storage_record(request, call, status, new_request_id(), name, parse_error=True)
        try:
            await request.app[authenticator_key].update_resource_state(
                ResourceKind.CACHED_CONTENT,
                name,
                CacheState(stored.tokens, cache.expire_text).to_json(),
            )
        except Exception as exc:
            # Google already made the change: the call still succeeds and is recorded. A
            # later change or delete of this cache will count from the old expiry.
            log.warning("cache state not stored (%s): %s", type(exc).__name__, name)
        return _storage_record(
            request,
            call,
            status,
            _stable_request_id(name, "update", stored.expire_text, cache.expire_text),
            name,
            storage=updated_storage(stored, cache),
        )
    if stored is None:
        return _storage_record(request, call, status, new_request_id(), name, parse_error=True)
    refund = deleted_storage(stored, now_seconds())
    if refund == 0:
        return False
    return _storage_record(
        request, call, status, _stable_request_id(name, "delete"), name, storage=refund
    )


def _storage_record(
    request: web.Request,
    call: Call,
    status: int,
    request_id: str,
    resource: str | None,
    *,
    storage: int = 0,
    model: str | None = None,
    parse_error: bool = False,
) -> bool:
    """Hand on one cache-storage line, billed to the cache's owner; whether it was kept."""
    principal = call.owner or call.principal
    endpoint = call.route.endpoint
    assert principal is not None and endpoint is not None  # cache storage calls: metered
    record = UsageRecord(
        request_id=request_id,
        created_at=datetime.now(UTC),
        principal=principal,
        model=model or call.meta.model,
        endpoint=endpoint,
        streamed=False,
        upstream_status=status,
        latency_seconds=time.perf_counter() - call.started,
        ttfb_seconds=call.ttfb,
        upstream_seconds=call.upstream_wait,
        usage=Usage(storage_token_seconds=storage),
        resource=resource,
        parse_error=parse_error,
    )
    return request.app[recorder_key].finish(record, call.reservation)
