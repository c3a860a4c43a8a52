"""Owned resources: who owns what the Gemini API creates through the proxy.

Beside ``forward``'s relays, on a response's way back: what ``admission`` checks
against an owner is written here, each owner before the client learns the name
(``register_owner`` and ``_own`` say what happens when the database is slow):

- an interaction's creator (``register_owner``, the one database write on the
  hot path), as soon as a whole answer or a stream names it;
- the starter of a resumable upload (``remember_upload``), whose keyless byte
  legs ``admission`` lets through for that upload id only;
- a Veo operation's creator, and once it is done its videos (``register_media``,
  which also hands ``forward`` the operation's one bill);
- cached contents, files and File Search stores (``relay_owned``): their
  responses are read whole, then a create's owner is committed, a list is
  filtered to the caller's own, an upload's URL is pointed back at the proxy, and
  a cache's create, TTL change and delete record its storage
  (``metering.caching`` has the rules).

``stable_request_id`` gives a storage line, or an operation's bill, the same id
however often (or wherever) it is seen.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from multidict import CIMultiDict

from ..errors import ServiceUnavailable, UpstreamUnavailable
from ..metering.caching import (
    CacheState,
    created_storage,
    deleted_storage,
    now_seconds,
    requested_ttl,
    snapshot,
    updated_storage,
)
from ..metering.parsers import parse_json
from ..metering.records import Principal, Usage, UsageRecord, new_request_id
from ..settings import AuthMode
from ..storage.schema import ResourceKind
from .admission import Call
from .client import Response
from .media import operation_bill, operation_created
from .references import filtered_listing
from .routes import Action, body_model
from .typedefs import ApiRequest, authenticator_key, metrics_key, recorder_key
from .upstream import read_whole, response_headers

__all__ = [
    "register_media",
    "register_owner",
    "relay_owned",
    "remember_upload",
    "stable_request_id",
]

log = logging.getLogger("gemini_meter.proxy")


async def remember_upload(request: ApiRequest, principal: Principal, upstream: Response) -> None:
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


async def register_media(request: ApiRequest, call: Call, payload: object, status: int) -> None:
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


async def register_owner(
    request: ApiRequest, call: Call, interaction_id: str | None, status: int
) -> None:
    """Make an interaction's creator its owner, in the database before the id is released.

    The row is journaled and queued for the batching writer first, as a record is:
    from then on it outlives a crash. In ``virtual_keys`` mode it is also committed at
    once (the one database write on the hot path, creates only), so that any replica
    answers the owner the moment the client has the id; that commit does not wait for
    a sync (``storage.bulk.OwnerCommits``: the journal's group commit makes the row
    durable). If the database does not take it in time, this process answers from
    memory until the writer has stored it. Passthrough mode checks no owners, so the
    writer's queue is enough there.
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
    row = app[recorder_key].own(interaction_id, principal, call.meta.model)
    if auth.mode is not AuthMode.VIRTUAL_KEYS:
        auth.remember_owner(interaction_id, principal)
    elif not await auth.commit_owner(interaction_id, principal, row):
        app[metrics_key].owner_commit_fallbacks.inc()


# Where a list response carries its items, by the kind of resource listed.
_LIST_FIELDS = {
    ResourceKind.CACHED_CONTENT: "cachedContents",
    ResourceKind.FILE: "files",
    ResourceKind.FILE_SEARCH_STORE: "fileSearchStores",
}


async def relay_owned(request: ApiRequest, upstream: Response, call: Call) -> web.StreamResponse:
    """A response that names owned resources: read it whole, act on it, then answer it.

    An upload's files become the uploader's, and a new cache its creator's, before the
    client learns their names (``_own``); a cache's create, TTL change and delete bill its
    storage (``_bill_storage``); a list keeps only the caller's own items. Only small
    JSON bodies come this way: a download is relayed as a stream like any other body.
    """
    body, decoded = await read_whole(upstream, call)
    status = upstream.status
    headers = CIMultiDict(response_headers(upstream, keep_length=False))
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
    request: ApiRequest, call: Call, kind: ResourceKind, decoded: bytes
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


def _through_proxy(request: ApiRequest, upload_url: str) -> str:
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


async def _own_files(request: ApiRequest, call: Call, payload: object) -> None:
    # A keyless leg's files are its session's starter's; a keyed call's, the caller's.
    owner = call.uploader or call.principal
    if owner is None:
        return
    for name in _uploaded_files(payload):
        await _own(request, ResourceKind.FILE, name, owner, model=None, state=None)


async def _own_store(request: ApiRequest, call: Call, payload: object) -> None:
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
    request: ApiRequest,
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


def stable_request_id(*parts: str) -> str:
    """The same id for the same storage line however often (or wherever) it is seen."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "gemini-meter:" + ":".join(parts)).hex


async def _bill_storage(request: ApiRequest, call: Call, status: int, payload: object) -> bool:
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
            stable_request_id(cache.name, "create"),
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
            stable_request_id(name, "update", stored.expire_text, cache.expire_text),
            name,
            storage=updated_storage(stored, cache),
        )
    if stored is None:
        return _storage_record(request, call, status, new_request_id(), name, parse_error=True)
    refund = deleted_storage(stored, now_seconds())
    if refund == 0:
        return False
    return _storage_record(
        request, call, status, stable_request_id(name, "delete"), name, storage=refund
    )


def _storage_record(
    request: ApiRequest,
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
