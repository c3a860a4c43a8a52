"""Admission: everything that may refuse a call before the upstream is contacted.

Second on a request's path, after ``routes`` has said what it is:
``forward.proxy_handler`` calls ``admit``, which refuses what the proxy could not
check the way the upstream will read it (an ambiguous path, a method override, an
unknown method on an interaction, a usage-stripping field mask or encoding, a
metered body that is not plain JSON: ``routes`` has the pure checks) and, in
``virtual_keys`` mode, any route the proxy does not know (``Route.offered``); resolves
the key to a ``Principal`` (``auth``, cached), or admits a keyless upload leg only for
an upload id started here; reads the JSON body of metered calls (``read_body``,
within ``max_request_bytes``) to learn the model; and checks the owner of every
interaction, batch, cache, file or store the call names (``references``). What it
learns travels on in a ``Call``, which every later step reads and adds to.

The handler then refuses what would go past the meter (``mints_unmetered_access``)
or could not be recorded (``check_journal``, 503), and ``reserve`` has a billable
call reserve its estimate against the enforced budgets that cover it
(``budgets.engine``), or refuses it with 429; the reservation is settled by the
recorder, or released if the call yields no record. ``server.live`` admits its
``auth_tokens`` calls and checks a Live session's frames with the same functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from aiohttp import web
from multidict import CIMultiDictProxy

from ..budgets.engine import Reservation
from ..budgets.estimate import Estimate, estimate, estimate_usage
from ..errors import (
    InvalidArgument,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    ServiceUnavailable,
)
from ..metering.openai import ask_stream_usage
from ..metering.records import EndpointKind, Principal
from ..settings import AuthMode
from ..storage.accounts import OwnedResource
from . import batches
from .auth import Authenticator, presented_key
from .media import OperationBill, priced_per_image, requested_usage
from .references import UncheckedReference, references
from .routes import (
    EMPTY_META,
    Action,
    BodyRefused,
    RequestMeta,
    Route,
    body_model,
    classify,
    masking_parameter,
    method_override,
    path_problem,
    previous_interaction_ids,
    request_meta,
    strict_json,
)
from .typedefs import (
    ApiRequest,
    authenticator_key,
    budgets_key,
    catalog_key,
    journal_key,
    metrics_key,
    settings_key,
)

__all__ = [
    "Call",
    "admit",
    "check_journal",
    "check_references",
    "mints_unmetered_access",
    "read_body",
    "reserve",
    "too_large",
]


@dataclass(slots=True)
class Call:
    """What the handler knows about one call as it goes along."""

    route: Route
    principal: Principal | None  # None only on an upload's keyless byte legs
    started: float
    meta: RequestMeta = EMPTY_META
    # whose interaction (or cached content) this is, when the call names one (billing
    # goes to the owner)
    owner: Principal | None = None
    # the cache or file the path names, as its owner check found it (None in passthrough)
    resource: OwnedResource | None = None
    # an upload leg's uploader: who started its session through this proxy
    uploader: Principal | None = None
    body: bytes | None = None
    # ``body`` as JSON, parsed once at admission (None when unread or not JSON)
    parsed: object = None
    ttfb: float | None = None
    # Seconds spent waiting on the upstream (its head, then each body chunk): the
    # call's duration less this is the proxy's own overhead (a metric).
    upstream_wait: float = 0.0
    client_disconnected: bool = False
    streamed: bool = False  # the response was relayed as a stream
    owner_registered: bool = False
    upstream_headers: CIMultiDictProxy[str] | None = None
    # held against the caller's budgets until the record settles it
    reservation: Reservation | None = None
    # the batch or file the path names, as admission checked it (server.batches)
    owned: batches.Owned | None = None
    # A streamed chat completion whose client did not ask for usage: the proxy asked
    # upstream (metering.openai.ask_stream_usage) and drops the usage-only chunk.
    drops_usage_chunk: bool = False
    # a Veo operation's poll that first saw it done: the record it bills
    bill: OperationBill | None = None
    # an OpenAI-compatible image generation whose model the catalog prices per image
    # (Imagen): billed by its images, not by any tokens its answer reports
    per_image: bool = False


async def admit(request: ApiRequest, started: float) -> Call:
    """Everything that may refuse a call before it reaches the upstream.

    The path is checked as it came (``routes.path_problem``) and classified as
    decoded, which is then the same path the upstream routes: what the proxy
    checks is what it forwards.
    """
    app = request.app
    auth = app[authenticator_key]
    problem = path_problem(request.raw_path)
    if problem is not None:
        raise InvalidArgument(f"The request path has {problem}; send its canonical form.")
    if method_override(request.headers, request.query) is not None:
        # Refused rather than applied: the override would have to be classified,
        # checked and forwarded consistently, and no Gemini SDK sends one.
        raise InvalidArgument(
            "Gemini Meter does not accept method overrides (X-HTTP-Method-Override, "
            "$httpMethod and the like): send the request with its own method."
        )
    route = classify(request.method, request.path)
    if route.action is Action.INTERACTION_UNKNOWN:
        raise MethodNotAllowed(
            f"{request.method} on this interactions path is not supported through Gemini Meter."
        )
    if route.action is Action.RESOURCE_UNKNOWN:
        raise MethodNotAllowed(
            f"{request.method} on this path is not supported through Gemini Meter."
        )
    if route.action is Action.BARE_OPERATION:
        # The same answer as for an operation that does not exist (routes._BARE_OPERATIONS).
        raise NotFound(
            "No operation is reachable by a bare id through Gemini Meter: use the name its "
            "creating call returned."
        )
    if not route.offered and app[settings_key].auth_mode is AuthMode.VIRTUAL_KEYS:
        # Behind the shared upstream key a route the proxy does not know would act on the
        # whole organisation's project for any caller, unmetered: 404, as for the unknown
        # routes above. Refused before the key is read, like them: the answer depends on
        # the method, the path and the configured mode alone (docs/metering.md lists every
        # route offered), never on a key, an owner or the upstream, so it tells a caller
        # without a key nothing that page does not, and a flood of unlisted paths costs no
        # key lookup. Passthrough mode forwards them: the client's own key answers for
        # what it reaches.
        raise NotFound(
            f"{request.method} {request.path} is not offered through Gemini Meter, which "
            "forwards only the Gemini API routes it knows."
        )
    key = presented_key(request.headers, request.query)
    if key is None and _is_upload_leg(request, route):
        # The byte legs of a resumable upload carry no API key: the upload id the
        # first (authenticated) leg obtained is their credential upstream. Only ids
        # started through this proxy are let through.
        try:
            uploader = await auth.upload_principal(request.query["upload_id"])
        except NotFound:
            app[metrics_key].keyless_upload_refusals.labels("unknown_upload").inc()
            raise
        if route.resource is not None and route.resource_kind is not None:
            # A File Search upload's byte leg: its session's starter must still own the
            # store the path names, so an upload id cannot be pointed at another's store.
            await auth.check_resource(route.resource_kind, route.resource, uploader)
        return Call(route=route, principal=None, started=started, uploader=uploader)
    principal = await auth.authenticate(key)
    call = Call(route=route, principal=principal, started=started)
    if route.metered and (masking := masking_parameter(request.headers, request.query)):
        raise InvalidArgument(
            f"Gemini Meter refuses {masking} on a metered call: it could strip the usage "
            "the call is billed by. Send the call without it."
        )
    previous = _previous_interactions(None, request)
    if route.action in _READS_BODY:
        call.body = await read_body(request, app[settings_key].max_request_bytes)
        try:
            parsed = strict_json(call.body)
        except BodyRefused as exc:
            raise InvalidArgument(f"Gemini Meter could not check this request: {exc}.") from exc
        previous = _previous_interactions(parsed, request)
        call.parsed = parsed
        call.meta = request_meta(route, parsed)
        if route.action in (Action.BATCH_CREATE, Action.BATCH_EMBED_CREATE):
            # Reserved at the batch rate its results will be billed at.
            call.meta = replace(call.meta, service_tier=batches.BATCH_TIER)
        if route.action is Action.CACHE_CREATE:
            call.meta = replace(call.meta, model=body_model(parsed))
        if route.action is Action.OPENAI_CHAT:
            _ask_stream_usage(call)
        if route.action is Action.OPENAI_IMAGES:
            call.per_image = priced_per_image(app[catalog_key], call.meta.model)
    for interaction_id in sorted(previous):
        await auth.check_owner(interaction_id, principal)
    if route.action in _BATCH_CHECKED:
        call.owned = await batches.check_batch_call(request, route, principal, call.parsed)
        if call.owned is not None and call.owned.owner is not None:
            call.owner = call.owned.owner
    if route.interaction_id is not None:
        call.owner = await auth.check_owner(route.interaction_id, principal)
    elif route.resource is not None and route.resource_kind is not None:
        call.resource = await _owned_resource(auth, route, principal)
        if call.resource is not None:
            call.owner = call.resource.owner
            call.meta = replace(call.meta, model=call.resource.model)
        if route.action is Action.FILE_DOWNLOAD:
            call.owned = await batches.download_owned(auth, route, call.resource)
    elif route.action is Action.FILE_UPLOAD and _names_a_new_file(request):
        call.body = await read_body(request, app[settings_key].max_request_bytes)
        try:
            call.parsed = strict_json(call.body)
        except BodyRefused as exc:
            raise InvalidArgument(f"Gemini Meter could not check this request: {exc}.") from exc
        _refuse_chosen_name(call.parsed)
    if call.body is not None:
        await check_references(request, call.parsed, principal)
    return call


def _names_a_new_file(request: ApiRequest) -> bool:
    """A JSON request that creates a file (a resumable upload's start, ``files.create``):
    its metadata could choose the file's name."""
    return "upload_id" not in request.query and request.content_type == "application/json"


def _refuse_chosen_name(body: object) -> None:
    """Refuse a file name the client chooses itself.

    Google lets a create name its file (``File.name``). A name someone else once owned
    here stays theirs (owners never change), so a file created under it again, by
    another user, would be readable by the first owner, not by its creator.
    """
    metadata = body.get("file", body) if isinstance(body, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if name is not None and name != "":
        raise InvalidArgument(
            "Gemini Meter does not accept a file name chosen by the client: leave the name "
            "out and the Gemini API picks one."
        )


async def _owned_resource(
    auth: Authenticator, route: Route, principal: Principal
) -> OwnedResource | None:
    """The resource the path names, or 404 unless the caller may use it.

    A cache's PATCH and DELETE bill from its stored state, which another replica may
    have changed since this one cached it: those read the row itself. In passthrough
    mode nothing is checked, but the state is still read for the bill.
    """
    kind, name = route.resource_kind, route.resource
    assert kind is not None and name is not None
    fresh = route.action in (Action.CACHE_UPDATE, Action.CACHE_DELETE)
    found = await auth.check_resource(kind, name, principal, fresh=fresh)
    if found is None and fresh:
        found = await auth.resource(kind, name, fresh=True)
    return found


async def check_references(request: ApiRequest, body: object, principal: Principal) -> None:
    """Refuse (404, like a missing one) a body naming a cache or file the caller may not use."""
    try:
        named = references(body, request.query)
    except UncheckedReference as exc:
        raise InvalidArgument(f"Gemini Meter could not check this request: {exc}.") from exc
    auth = request.app[authenticator_key]
    for reference in sorted(named):
        await auth.check_resource(reference.kind, reference.name, principal)


# Reading an interaction (the poll that bills a background one included), cancelling
# or deleting one costs nothing at admission: only these reserve against budgets.
_BUDGETED = frozenset(
    {
        Action.INTERACTION_CREATE,
        Action.GENERATE,
        Action.STREAM_GENERATE,
        Action.EMBED,
        Action.BATCH_EMBED,
        Action.OPENAI_CHAT,
        Action.OPENAI_EMBED,
        Action.OPENAI_IMAGES,
        Action.CACHE_CREATE,
        Action.CACHE_UPDATE,
        Action.PREDICT,
        Action.PREDICT_LONG_RUNNING,
        # free itself, but refused once the budgets it would spend are
        Action.BATCH_CREATE,
        Action.BATCH_EMBED_CREATE,
    }
)


# Bodies read at admission: a budgeted call's (its estimate, and the caches, files and
# stores it names; a cache's requested lifetime), countTokens' (the caches and files it
# names) and a File Search import's (the file it imports, ``fileName``).
_READS_BODY = _BUDGETED | {Action.COUNT_TOKENS, Action.STORE_IMPORT}


# Batch API calls whose batch (or input file) has an owner to check (a responses file's
# download is checked like any file's, then ``batches.download_owned`` reads its state).
_BATCH_CHECKED = frozenset(
    {
        Action.BATCH_CREATE,
        Action.BATCH_EMBED_CREATE,
        Action.BATCH_GET,
        Action.BATCH_CANCEL,
        Action.BATCH_DELETE,
        Action.BATCH_UPDATE,
        Action.BATCH_UNKNOWN,
    }
)


def _ask_stream_usage(call: Call) -> None:
    """Make a streamed chat completion carry its usage, which only ``include_usage`` brings.

    The one request body the proxy changes: re-serialised with
    ``stream_options.include_usage`` set, and the usage-only chunk that adds is
    taken out of the client's stream again (``UsageChunkFilter``), so the call
    is metered on the upstream's own figures and the client gets what it asked for.
    """
    asked = ask_stream_usage(call.parsed)
    if asked is None:
        return
    call.parsed = asked
    call.body = json.dumps(asked, ensure_ascii=False, separators=(",", ":")).encode()
    call.drops_usage_chunk = True


def _previous_interactions(body: object, request: ApiRequest) -> set[str]:
    try:
        return previous_interaction_ids(body, request.query)
    except BodyRefused as exc:
        raise InvalidArgument(f"Gemini Meter could not check this request: {exc}.") from exc


def mints_unmetered_access(route: Route, mode: AuthMode) -> bool:
    """An ephemeral token would let its holder spend the upstream key at Google directly."""
    return (
        mode is AuthMode.VIRTUAL_KEYS
        and route.unmetered is not None
        and route.unmetered.kind is EndpointKind.AUTH_TOKEN_CREATE
    )


# Calls that generate no output: their estimate is their input alone.
_EMBEDDINGS = frozenset(
    {
        Action.EMBED,
        Action.BATCH_EMBED,
        Action.OPENAI_EMBED,
        Action.CACHE_CREATE,
        Action.CACHE_UPDATE,
        Action.BATCH_EMBED_CREATE,
    }
)


_EMBEDDING_KINDS = frozenset({EndpointKind.ASYNC_BATCH_EMBED_CONTENT})


def _budgeted(request: ApiRequest, route: Route) -> bool:
    """A billable call that may spend: metered creates and generations, and the
    unmetered routes' writes (reading a batch or an operation costs nothing)."""
    if route.unmetered is not None:
        return request.method != "GET"
    return route.action in _BUDGETED


async def reserve(request: ApiRequest, call: Call) -> None:
    """Reserve the call's estimate against its budgets, or refuse it (429)."""
    route = call.route
    principal = call.owner or call.principal
    if principal is None or not _budgeted(request, route):
        return
    app = request.app
    settings = app[settings_key]
    body = call.body

    def guess() -> Estimate:
        media = requested_usage(route.action, call.parsed, per_image=call.per_image)
        if media is not None:
            # Images and video seconds, priced like the record will be.
            return estimate_usage(
                app[catalog_key],
                call.meta.model or route.model,
                media,
                reserve_usd=settings.budget_reserve_usd,
                reserve_tokens=settings.budget_reserve_tokens,
            )
        kind = route.unmetered.kind if route.unmetered is not None else None
        return estimate(
            app[catalog_key],
            call.meta.model or route.model,
            body_bytes=len(body) if body is not None else (request.content_length or 0),
            body=call.parsed,
            generates=route.action not in _EMBEDDINGS and kind not in _EMBEDDING_KINDS,
            default_output_tokens=settings.budget_default_output_tokens,
            reserve_usd=settings.budget_reserve_usd,
            reserve_tokens=settings.budget_reserve_tokens,
            service_tier=call.meta.service_tier,
        )

    call.reservation = await app[budgets_key].admit(principal, guess)


def check_journal(request: ApiRequest, route: Route) -> None:
    """Refuse a billable call before forwarding it when its record could not be kept."""
    journal = request.app[journal_key]
    recorded = route.metered or route.unmetered is not None
    if recorded and journal is not None and not journal.admit():
        raise ServiceUnavailable(
            "Gemini Meter cannot record more calls right now (its journal is full); retry later."
        )


# Routes a keyless upload leg may take (an unlisted one only in passthrough mode: virtual
# keys refuse it before the key is looked for).
_UPLOAD_LEGS = frozenset(
    {Action.FORWARD, Action.UNLISTED, Action.UNMETERED, Action.FILE_UPLOAD, Action.STORE_UPLOAD}
)


def _is_upload_leg(request: ApiRequest, route: Route) -> bool:
    return (
        route.action in _UPLOAD_LEGS
        and request.path.startswith("/upload/")
        and "upload_id" in request.query
    )


def too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"Request body exceeds the proxy's limit of {limit} bytes.")


async def read_body(request: ApiRequest, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise too_large(limit) from exc
