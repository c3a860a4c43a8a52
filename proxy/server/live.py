"""The Live API relay: a client's WebSocket session, metered, to the upstream and back.

``GET /ws/google.ai.generativelanguage.{v1beta,v1alpha}.GenerativeService.BidiGenerateContent``
(and ``...BidiGenerateContentConstrained``, opened with an ephemeral token) is
what google-genai 3.6.1 ``AsyncLive.connect`` opens: the API key in
``x-goog-api-key`` (an ephemeral token as ``Authorization: Token auth_tokens/...``
and, since the SDK puts its "api key" in the default headers, in
``x-goog-api-key`` too), then a first text frame ``{"setup": {"model": ...}}``.
The SDK always turns the base URL's scheme into ``wss`` (``BaseApiClient.
_websocket_base_url``), so clients reach the proxy over TLS: a TLS-terminating load
balancer or reverse proxy in front of it (``gemini-meter serve`` speaks plain HTTP).

A session goes:

1. admission, before any upstream connection: the key (or the ephemeral
   token's handle, see ``auth_tokens`` below) resolves to a ``Principal``; the
   journal must have room; the caller's enforced budgets must admit the
   reservation (else 429, Gemini's error shape). A refused handshake is an
   ordinary HTTP error response.
2. one upstream WebSocket on the app's aiohttp ``ClientSession``, the client's
   credential swapped for the upstream key (or the real ephemeral token); an
   upstream that refuses the handshake is answered with its status.
3. the relay: two pumps, one per direction, forward every frame as it arrives
   (text as text, binary as binary, nothing held back); the first close, from
   either side, is passed on with its code and reason. The upstream's frames are
   fed to ``metering.live.LiveMeter`` on the way through.
4. one ``UsageRecord`` per session (``EndpointKind.LIVE_SESSION``,
   ``request_id`` = ``resource`` = the proxy's session id), final when the
   session ends however it ends: either side closes or vanishes (a client that
   vanishes mid-turn is drained, for at most ``live_drain_seconds``, until the
   upstream reports that turn's usage), or shutdown cuts it. While it runs, a
   provisional record of the usage so far replaces the previous one at most every
   ``live_provisional_interval_seconds``, so a crash loses little; each settles
   the budgets, and a session whose usage has used one up is closed after that
   turn (1008 to the client). The relay runs as a task in ``pumps_key`` and
   ``live_sessions_key``: at shutdown ``end_live_sessions`` gives it the grace
   period, then cuts it.

``auth_tokens``: in ``virtual_keys`` mode an ephemeral token minted with the
upstream key would let its holder open sessions at Google directly, past the
meter. So ``POST /{v}/auth_tokens`` (``client.auth_tokens.create``) is minted
here: the upstream token is kept sealed (``keys.seal``) in the ``resources``
table (kind ``AUTH_TOKEN``, owned by the caller, named by ``hash_key`` of the
handle) and the client gets a handle of the proxy's own (``auth_tokens/gm-...``:
the SDK picks the Constrained method by that prefix). A Constrained session
presenting the handle is billed to its owner, with the real token swapped in;
Google's token never leaves the proxy. In passthrough mode the client's own key
mints and the token is answered as it came; its minter is remembered (by the
token's keyed hash) so a session opened through the proxy with it bills them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from ..budgets.engine import Reservation
from ..budgets.estimate import Estimate, estimate
from ..errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProxyError,
    ResourceExhausted,
    ServiceUnavailable,
    Unauthenticated,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..metering.live import LiveMeter, model_name, setup_model
from ..metering.parsers import parse_json
from ..metering.records import EndpointKind, Principal, UsageRecord
from ..settings import AuthMode
from .admission import admit, check_journal, check_references, read_body
from .auth import PresentedKey, presented_key, swap_key
from .forward import record_unmetered
from .routes import BodyRefused, method_override, strict_json
from .typedefs import (
    authenticator_key,
    budgets_key,
    catalog_key,
    journal_key,
    live_sessions_key,
    metrics_key,
    pumps_key,
    recorder_key,
    settings_key,
    upstream_session_key,
)
from .upstream import (
    HOP_BY_HOP,
    Decoder,
    hop_by_hop,
    open_upstream,
    response_headers,
    upstream_url,
)

log = logging.getLogger("gemini_meter.live")

SERVICE: Final = re.compile(
    r"^google\.ai\.generativelanguage\.(?:v1beta|v1alpha)\.GenerativeService\."
    r"(?P<method>BidiGenerateContent|BidiGenerateContentConstrained)$"
)
# What the SDK's ephemeral tokens start with; the SDK switches to the Constrained
# method (and the ``Authorization: Token`` header) on this prefix (live.py).
TOKEN_PREFIX: Final = "auth_tokens/"
HANDLE_PREFIX: Final = TOKEN_PREFIX + "gm-"
# Query parameters that carry a credential on a Live handshake.
_CREDENTIAL_PARAMS: Final = frozenset({"key", "$key", "access_token"})
# The handshake's own headers: each hop negotiates its own.
_HANDSHAKE: Final = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
        "host",
        "content-length",
    }
)
# Close codes an endpoint may not send (RFC 6455 7.4.1): "no status", "abnormal
# closure" (the connection dropped without a close frame) and "TLS failure".
_RESERVED_CLOSE: Final = frozenset({1005, 1006, 1015})
GOING_AWAY: Final = 1001
POLICY_VIOLATION: Final = 1008
# RFC 6455 registry (IANA): 1014 "Bad Gateway", for an upstream that vanished.
BAD_GATEWAY: Final = 1014


def relayed_close(code: int | None, *, vanished_side: str) -> int:
    """The close code to pass on to the other side of the relay.

    A code that may be sent goes on unchanged. A close without a frame (1006),
    without a status (1005) or an out-of-range one becomes, toward the client,
    1014 (the upstream vanished) and, toward the upstream, 1001 (the client is
    gone); a frame without a status is a normal close (1000).
    """
    if code == 1005:
        return 1000
    if code is None or code in _RESERVED_CLOSE or not (1000 <= code <= 4999):
        return BAD_GATEWAY if vanished_side == "upstream" else GOING_AWAY
    if 1016 <= code < 3000:
        # Unassigned in the registry: not ours to forward as if it meant something.
        return BAD_GATEWAY if vanished_side == "upstream" else GOING_AWAY
    return code


@dataclass(slots=True)
class _End:
    """How one direction of the relay ended."""

    side: str  # "client" | "upstream" | "proxy": whose end it was
    code: int | None  # the close code received, None when the connection just dropped
    reason: str = ""


@dataclass(slots=True)
class LiveCall:
    """One Live session as the relay knows it."""

    id: str
    principal: Principal
    started: float
    created_at: datetime
    model: str | None = None
    meter: LiveMeter = field(default_factory=LiveMeter)
    ttfb: float | None = None
    client_disconnected: bool = False
    last_provisional: float = 0.0
    reservation: Reservation | None = None
    finished: bool = False
    # set whenever the upstream has reported the usage of every turn it started
    settled: asyncio.Event = field(default_factory=asyncio.Event)


async def live_handler(request: web.Request) -> web.StreamResponse:
    """Admit, connect upstream, upgrade the client, relay until either side ends."""
    match = SERVICE.match(request.match_info["service"])
    if match is None:
        raise NotFound(f"No Gemini API route at {request.path!r}.")
    if method_override(request.headers, request.query) is not None:
        raise InvalidArgument("Gemini Meter does not accept method overrides.")
    app = request.app
    settings = app[settings_key]
    started = time.perf_counter()
    constrained = match.group("method") == "BidiGenerateContentConstrained"
    principal, credential, model = await _admit(request, constrained)
    if not web.WebSocketResponse().can_prepare(request).ok:
        # Nothing is reserved or opened upstream for a request that cannot be upgraded.
        raise InvalidArgument("This Live API route expects a WebSocket upgrade.")
    journal = app[journal_key]
    if journal is not None and not journal.admit():
        raise ServiceUnavailable(
            "Gemini Meter cannot record more sessions right now (its journal is full)."
        )
    call = LiveCall(
        id=uuid.uuid4().hex,
        principal=principal,
        started=started,
        created_at=datetime.now(UTC),
        model=model,
        # the first provisional record after one interval, not at the first turn
        last_provisional=time.monotonic(),
    )

    def guess() -> Estimate:
        return estimate(
            app[catalog_key],
            model,
            body_bytes=0,
            body=None,
            generates=True,
            default_output_tokens=settings.budget_default_output_tokens,
            reserve_usd=settings.budget_reserve_usd,
            reserve_tokens=settings.budget_reserve_tokens,
        )

    budgets = app[budgets_key]
    call.reservation = await budgets.admit(principal, guess)
    try:
        upstream = await _connect(request, credential, constrained)
    except BaseException:
        budgets.release(call.reservation)
        raise
    call.ttfb = time.perf_counter() - started
    client = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        max_msg_size=settings.max_request_bytes,
    )
    try:
        await client.prepare(request)
    except BaseException:
        await upstream.close(code=GOING_AWAY)
        budgets.release(call.reservation)
        raise
    relay = asyncio.create_task(_relay(request, client, upstream, call))
    for running in (app[pumps_key], app[live_sessions_key]):
        running.add(relay)
        relay.add_done_callback(running.discard)
    # Shielded: a cancelled handler must not cut the relay before it has recorded the
    # session (the relay itself tells a client that left from one that was cut).
    return await asyncio.shield(relay)


async def end_live_sessions(app: web.Application) -> None:
    """``on_shutdown``: give open sessions the grace period, then cut them.

    Runs before aiohttp waits for its handlers: a session's handler returns only
    once its relay has ended, and a WebSocket need never end by itself. A cut
    session is closed on both sides with 1001 and recorded.
    """
    sessions = app[live_sessions_key]
    if not sessions:
        return
    grace = app[settings_key].shutdown_grace_seconds
    log.info("waiting up to %.0f s for %d Live sessions to end", grace, len(sessions))
    _, late = await asyncio.wait(set(sessions), timeout=grace)
    for relay in late:
        relay.cancel()
    if late:
        log.warning("cut %d Live sessions still open after the grace period", len(late))
        await asyncio.wait(late)


async def _admit(request: web.Request, constrained: bool) -> tuple[Principal, str, str | None]:
    """Who pays for the session, the credential to present upstream, a model locked in."""
    app = request.app
    auth = app[authenticator_key]
    settings = app[settings_key]
    if not constrained:
        key = presented_key(request.headers, request.query)
        principal = await auth.authenticate(key)
        if settings.auth_mode is AuthMode.VIRTUAL_KEYS:
            assert settings.upstream_api_key is not None
            return principal, settings.upstream_api_key.get_secret_value(), None
        assert key is not None
        return principal, key.value, None
    token = ephemeral_token(request.headers, request.query)
    if token is None:
        raise Unauthenticated(
            "Missing ephemeral token: send it as 'Authorization: Token auth_tokens/...'."
        )
    if settings.auth_mode is AuthMode.PASSTHROUGH:
        # The client's own token, minted with its own key: relayed as it is, billed to
        # whoever minted it through the proxy, else to the principal its fingerprint
        # names (like any passthrough credential).
        owner = await auth.minted_owner(token)
        principal = owner or await auth.authenticate(PresentedKey(token, "token"))
        return principal, token, None
    # A virtual key presented beside the handle must be one that may use it (its owner's).
    key = presented_key(request.headers, request.query)
    caller = await auth.authenticate(key) if key is not None and key.value != token else None
    grant = await auth.ephemeral_grant(token, caller)
    return grant.owner, grant.token, grant.model


def ephemeral_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """An ephemeral token from ``Authorization: Token``, ``?access_token=`` or
    ``x-goog-api-key`` (where the SDK puts it too), in that order."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "token" and value.strip():
        return value.strip()
    for candidate in (query.get("access_token"), headers.get("x-goog-api-key")):
        if candidate and candidate.strip().startswith(TOKEN_PREFIX):
            return candidate.strip()
    return None


def _upstream_headers(request: web.Request, credential: str, constrained: bool) -> CIMultiDict[str]:
    settings = request.app[settings_key]
    headers = CIMultiDict(request.headers)
    for name in hop_by_hop(headers, HOP_BY_HOP | _HANDSHAKE):
        headers.popall(name, None)
    if constrained:
        headers.popall("x-goog-api-key", None)
        headers.popall("authorization", None)
        # As the SDK sends a real token: in both headers.
        headers["authorization"] = f"Token {credential}"
        headers["x-goog-api-key"] = credential
    elif settings.auth_mode is AuthMode.VIRTUAL_KEYS:
        # No credential of the client's goes on beside the upstream key, of any scheme.
        headers.popall("authorization", None)
        headers = swap_key(headers, credential)
    return headers


async def _connect(
    request: web.Request, credential: str, constrained: bool
) -> aiohttp.ClientWebSocketResponse:
    """The upstream WebSocket, or the upstream's refusal as a Gemini-shaped error."""
    app = request.app
    settings = app[settings_key]
    virtual = settings.auth_mode is AuthMode.VIRTUAL_KEYS
    # The path as it was validated (SERVICE), not as it was spelled; the query raw.
    _, sep, query = request.raw_path.partition("?")
    url = upstream_url(
        settings.upstream,
        f"/ws/{request.match_info['service']}{sep}{query}",
        drop_key=virtual,
        drop=_CREDENTIAL_PARAMS,
    )
    offered = request.headers.get("sec-websocket-protocol", "")
    protocols = tuple(p.strip() for p in offered.split(",") if p.strip())
    try:
        return await app[upstream_session_key].ws_connect(
            url,
            headers=_upstream_headers(request, credential, constrained),
            protocols=protocols,
            max_msg_size=settings.max_request_bytes,
            autoping=True,
        )
    except aiohttp.WSServerHandshakeError as exc:
        app[metrics_key].upstream_error(exc.status)
        raise _refused(exc.status) from exc
    except TimeoutError as exc:
        raise UpstreamTimeout("The Gemini API did not answer the Live handshake in time.") from exc
    except (aiohttp.ClientError, OSError) as exc:
        log.warning("Live upstream unreachable: %s", type(exc).__name__)
        raise UpstreamUnavailable("The Gemini API could not be reached.") from exc


# An upstream's refusal of the handshake, by status (the WebSocket client does not
# read its body, so the message is the proxy's).
_REFUSALS: Final[dict[int, type[ProxyError]]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    429: ResourceExhausted,
}


def _refused(status: int) -> ProxyError:
    kind = _REFUSALS.get(status, UpstreamUnavailable if status >= 500 else InvalidArgument)
    return kind(f"The Gemini API refused the Live session (HTTP {status}).")


async def _relay(
    request: web.Request,
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    call: LiveCall,
) -> web.StreamResponse:
    """Both directions until the first ends; pass its close on; record the session."""
    up = asyncio.create_task(_client_to_upstream(request, client, upstream, call))
    down = asyncio.create_task(_upstream_to_client(request, client, upstream, call))
    cut = False
    end: _End | None = None
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        end = next(iter(done)).result()
        if end.side == "client" and end.code is None and call.meter.turn_open:
            # The client vanished mid-turn: the upstream still finishes (and bills)
            # the turn, so read on, for a while, until its usage arrives.
            call.client_disconnected = True
            drain = request.app[settings_key].live_drain_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.settled.wait(), drain)
    except asyncio.CancelledError:
        cut = True  # shutdown, past the grace period
    except Exception:
        log.exception("relaying a Live session failed")
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        try:
            await _close_other_side(client, upstream, end, cut, call)
        finally:
            _record(request, call, provisional=False)
    if cut:
        raise asyncio.CancelledError
    return client


async def _close_other_side(
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    end: _End | None,
    cut: bool,
    call: LiveCall,
) -> None:
    if cut or end is None:
        reason = b"Gemini Meter is shutting down." if cut else b"Gemini Meter relay error."
        code = GOING_AWAY if cut else 1011
        await asyncio.gather(
            client.close(code=code, message=reason),
            upstream.close(code=GOING_AWAY),
            return_exceptions=True,
        )
        return
    code = relayed_close(end.code, vanished_side=end.side)
    # A close frame's reason fits in 123 bytes, and must stay valid UTF-8 when cut.
    reason = end.reason.encode()[:123].decode(errors="ignore").encode()
    try:
        if end.side == "proxy":  # the proxy ends the session (a budget used up)
            await asyncio.gather(
                client.close(code=code, message=reason),
                upstream.close(code=1000),
                return_exceptions=True,
            )
        elif end.side == "client":
            if end.code is None:
                call.client_disconnected = True
            await upstream.close(code=code, message=reason)
        else:
            await client.close(code=code, message=reason)
    except (ConnectionError, aiohttp.ClientError):
        pass


async def _client_to_upstream(
    request: web.Request,
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    call: LiveCall,
) -> _End:
    first = True
    while True:
        msg = await client.receive()
        if msg.type is aiohttp.WSMsgType.CLOSE:
            return _End("client", msg.data, msg.extra or "")
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return _End("client", None)  # closed or broken without a close frame
        if first:
            first = False
            model = setup_model(msg.data)
            if call.model is None:
                call.model = model
        refused = await _refused_reference(request, msg.data, call.principal)
        if refused is not None:
            # Not forwarded: the frame names a cache, file or store the caller may not use.
            return _End("proxy", POLICY_VIOLATION, refused)
        try:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await upstream.send_str(msg.data)
            else:
                await upstream.send_bytes(msg.data)
        except (ConnectionError, aiohttp.ClientError):
            return _End("upstream", None)


async def _upstream_to_client(
    request: web.Request,
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    call: LiveCall,
) -> _End:
    interval = request.app[settings_key].live_provisional_interval_seconds
    while True:
        msg = await upstream.receive()
        if msg.type is aiohttp.WSMsgType.CLOSE:
            return _End("upstream", msg.data, msg.extra or "")
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return _End("upstream", None)
        over_budget = None
        if call.meter.feed(msg.data):
            now = time.monotonic()
            if now - call.last_provisional >= interval:
                call.last_provisional = now
                _record(request, call, provisional=True)
                # The record just settled the session's usage so far: has it used up
                # a budget? Then this turn is its last (relayed, then closed).
                over_budget = request.app[budgets_key].exhausted(call.principal)
        if call.meter.turn_open:
            call.settled.clear()
        else:
            call.settled.set()
        if call.client_disconnected:
            continue  # draining the turn the client left: metered, not relayed
        try:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await client.send_str(msg.data)
            else:
                await client.send_bytes(msg.data)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            # The other pump sees the client gone too, and decides about draining.
            call.client_disconnected = True
        if over_budget is not None:
            return _End("proxy", POLICY_VIOLATION, over_budget.message)


# Field names (both spellings) that can name an owned resource in a client frame: a
# setup's cached content or File Search tool, a turn's file parts; and a JSON escape, which
# could spell one of them unseen ("cached\u0043ontent"). Only a frame holding one is
# parsed, so streamed audio and video frames (base64: no backslash) cost a substring
# search, not a parse (nor a copy: a text frame is searched as text, a binary one as bytes).
_REFERENCE_NAMES: Final = (
    *(
        spelling
        for name in ("cachedContent", "fileUri", "fileName", "fileSearchStoreNames", '"uri"')
        for spelling in {name, re.sub(r"([A-Z])", r"_\1", name).lower()}
    ),
    "\\u",
)
_REFERENCE_MARKERS: Final = tuple(name.encode() for name in _REFERENCE_NAMES)


async def _refused_reference(
    request: web.Request, frame: str | bytes, principal: Principal
) -> str | None:
    """Why a client frame must not be forwarded (it names a cache, file or File Search
    store the caller may not use, or one the proxy cannot read), or None."""
    if isinstance(frame, str):
        if not any(name in frame for name in _REFERENCE_NAMES):
            return None
    elif not any(marker in frame for marker in _REFERENCE_MARKERS):
        return None
    try:
        parsed = strict_json(frame)
    except BodyRefused as exc:
        # A frame the proxy cannot read (a repeated key, say) may name something it
        # cannot check, as Google reads it.
        return f"Gemini Meter could not check this message: {exc}."[:123]
    try:
        await check_references(request, parsed, principal)
    except (NotFound, InvalidArgument) as exc:
        return exc.message[:123]
    return None


def _record(request: web.Request, call: LiveCall, *, provisional: bool) -> None:
    """Hand the session's record (so far) to the recorder; the final one only once."""
    if call.finished:
        return
    call.finished = not provisional
    meter = call.meter
    record = UsageRecord(
        request_id=call.id,
        created_at=call.created_at,
        principal=call.principal,
        model=call.model,
        endpoint=EndpointKind.LIVE_SESSION,
        streamed=True,
        upstream_status=101,
        latency_seconds=time.perf_counter() - call.started,
        ttfb_seconds=call.ttfb,
        usage=meter.usage,
        parse_error=meter.parse_errors > 0,
        client_disconnected=call.client_disconnected,
        provisional=provisional,
        resource=call.id,
    )
    reservation, call.reservation = call.reservation, None
    try:
        request.app[recorder_key].finish(record, reservation)
    except Exception:
        log.exception("recording a Live session failed")


def new_handle() -> str:
    """A fresh ephemeral-token handle of the proxy's own (256 bits of randomness)."""
    return HANDLE_PREFIX + secrets.token_urlsafe(32)


async def auth_tokens_handler(request: web.Request) -> web.StreamResponse:
    """``POST /{v}/auth_tokens``: mint a token, and keep who minted it.

    ``virtual_keys``: minted with the upstream key; the token is stored sealed and
    the client gets a handle of the proxy's own in its place. Passthrough: minted
    with the client's own key and answered as it came, recorded as
    ``auth_token.create`` like any unmetered call; the token's keyed hash is stored
    with its minter, so a session opened through the proxy with it bills them.
    """
    app = request.app
    settings = app[settings_key]
    virtual = settings.auth_mode is AuthMode.VIRTUAL_KEYS
    call = await admit(request, started=time.perf_counter())
    principal = call.principal
    assert principal is not None  # admit authenticates every call but upload legs
    check_journal(request, call.route)
    call.body = await read_body(request, settings.max_request_bytes)
    try:
        parsed = strict_json(call.body)
    except BodyRefused as exc:
        raise InvalidArgument(f"Gemini Meter could not check this request: {exc}.") from exc
    if not isinstance(parsed, dict):
        raise InvalidArgument("The auth_tokens request body must be a JSON object.")
    upstream = await open_upstream(request, call)
    if not virtual:
        record_unmetered(request, call, upstream)
    try:
        payload = await upstream.read()
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnavailable("The Gemini API connection broke mid-response.") from exc
    finally:
        upstream.release()
    as_it_came = web.Response(
        status=upstream.status, body=payload, headers=response_headers(upstream, keep_length=False)
    )
    encoding = upstream.headers.get("content-encoding", "identity").lower()
    minted = parse_json(Decoder(encoding)(payload) if encoding != "identity" else payload)
    token = minted.get("name") if isinstance(minted, dict) else None
    auth = app[authenticator_key]
    if upstream.status >= 400:
        app[metrics_key].upstream_error(upstream.status)
    elif not isinstance(minted, dict) or not isinstance(token, str):
        if virtual:
            raise UpstreamUnavailable("The Gemini API answered auth_tokens without a token.")
    else:
        # A model the token locks its sessions to (the SDK's live_connect_constraints).
        setup = parsed.get("bidiGenerateContentSetup") or parsed.get("bidi_generate_content_setup")
        model = model_name(setup.get("model")) if isinstance(setup, dict) else None
        if virtual:
            # Stored (sealed, under the handle's hash) before the handle reaches the client.
            handle = new_handle()
            await auth.commit_ephemeral(handle, principal, token, model)
            minted["name"] = handle
            return web.json_response(minted, status=upstream.status)
        await auth.remember_minted(token, principal, model)
    return as_it_came
