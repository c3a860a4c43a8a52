"""The emulator's aiohttp application: routes, the one middleware, and the server runner.

``create_emulator_app`` wires the handlers of ``interactions``, ``generate``,
``embeddings``, ``openai``, ``batches``, ``files``, ``caches``, ``file_search`` and
``media`` behind ``_emulate``, the middleware every request passes: it records the request
in ``EmulatorState.requests``, authenticates it (a non-empty ``x-goog-api-key``, ``?key=``
or ``Authorization: Bearer``, or a known upload session), applies the delay and failure
triggers of ``triggers`` and maps every error to Gemini's JSON shape. ``run_emulator``
serves it for ``gemini-meter emulate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from .batches import add_batch_routes, requested_outcome
from .caches import add_cache_routes
from .embeddings import add_embedding_routes
from .file_search import add_file_search_routes
from .files import add_file_routes
from .generate import count_tokens, generate_content, stream_generate
from .interactions import (
    cancel_interaction,
    create_interaction,
    delete_interaction,
    get_interaction,
)
from .live import create_auth_token, live_session, live_token_of
from .media import add_media_routes, operation_error
from .openai import add_openai_routes
from .state import EmulatorConfig, EmulatorState, SeenRequest, emulator_state_key
from .triggers import (
    chunk_delay,
    cut_after,
    header_ms,
    requested_continuations,
    requested_usage_mode,
)
from .usage import MEDIA_TOKENS
from .wire import (
    DEFAULT_TIER,
    SERVICE_TIERS,
    ApiError,
    api_key_of,
    error_response,
    get_field,
    int_or_none,
)

logger = logging.getLogger(__name__)


_DEFAULT_CONFIG: Final = EmulatorConfig()


def create_emulator_app(config: EmulatorConfig = _DEFAULT_CONFIG) -> web.Application:
    """The emulator as an aiohttp application; its state is ``app[emulator_state_key]``."""
    # JSON bodies carry inline media as base64, so allow more than aiohttp's
    # 1 MiB default; uploads are streamed and not bound by this.
    app = web.Application(middlewares=[_emulate], client_max_size=64 * 1024**2)
    app[emulator_state_key] = EmulatorState(config)
    version = r"{version:v\d+[a-z0-9]*}"
    model = r"{model:[^/:]+}"
    app.router.add_post(f"/{version}/interactions", create_interaction)
    app.router.add_get(f"/{version}/interactions/{{interaction_id}}", get_interaction)
    app.router.add_delete(f"/{version}/interactions/{{interaction_id}}", delete_interaction)
    app.router.add_post(f"/{version}/interactions/{{interaction_id}}/cancel", cancel_interaction)
    app.router.add_post(f"/{version}/models/{model}:generateContent", generate_content)
    app.router.add_post(f"/{version}/models/{model}:streamGenerateContent", stream_generate)
    app.router.add_post(f"/{version}/models/{model}:countTokens", count_tokens)
    add_embedding_routes(app.router, version, model, MEDIA_TOKENS)
    add_batch_routes(app.router, version, model)
    add_openai_routes(app, version)
    add_file_routes(app.router, version)
    add_cache_routes(app.router, version)
    add_file_search_routes(app.router, version)
    app.router.add_post(f"/{version}/auth_tokens", create_auth_token)
    app.router.add_get("/ws/{service}", live_session)
    add_media_routes(app.router, version, model)
    return app


async def run_emulator(host: str, port: int, config: EmulatorConfig) -> None:
    """Serve the emulator on ``host:port`` until cancelled."""
    # No access log: benchmarks push thousands of requests a second through it.
    runner = web.AppRunner(create_emulator_app(config), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        logger.info("Gemini emulator listening on %s", ", ".join(map(str, runner.addresses)))
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


@web.middleware
async def _emulate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record, authenticate, apply the delay and failure triggers, map errors."""
    state = request.app[emulator_state_key]
    api_key = api_key_of(request)
    state.requests.append(
        SeenRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={name.lower(): value for name, value in request.headers.items()},
            api_key=api_key,
        )
    )
    try:
        # An upload session URL is its own credential, as with Google: the
        # SDK sends the file bytes there without the API key.
        # An ephemeral token is the credential of a Constrained Live session.
        if (
            api_key is None
            and request.query.get("upload_id") not in state.upload_sessions
            and live_token_of(request) is None
        ):
            raise ApiError(
                401,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity "
                "to call this API.",
            )
        # Check every trigger up front, so a typo fails loudly on any endpoint.
        delay = header_ms(request, "x-emulator-delay-ms")
        chunk_delay(request)
        requested_usage_mode(request)
        cut_after(request)
        requested_continuations(request)
        requested_outcome(request)
        operation_error(request)
        await asyncio.sleep(state.config.latency_seconds if delay is None else delay)
        fail = request.headers.get("x-emulator-fail")
        if fail is not None:
            code = int_or_none(fail)
            if code is None or not 400 <= code <= 599:
                raise ApiError(400, "x-emulator-fail must be an HTTP error status (400-599).")
            return error_response(
                ApiError(code, f"Failure requested by x-emulator-fail: {code}."),
                await _requested_tier(request),
            )
        return await handler(request)
    except ApiError as error:
        return error_response(error)
    except web.HTTPException as exc:
        # Unmatched paths and methods, and aiohttp's own refusals (body too large).
        if exc.status in (404, 405):
            return error_response(
                ApiError(404, f"The requested URL {request.path} was not found on this server.")
            )
        if exc.status < 400:
            raise
        return error_response(ApiError(exc.status, exc.reason))
    except Exception:
        # A bug here must still look like Gemini to the proxy under test.
        logger.exception("Gemini emulator failed on %s %s", request.method, request.path)
        return error_response(ApiError(500, "Internal error in the Gemini emulator."))


async def _requested_tier(request: web.Request) -> str:
    """The tier a request asked for, read only when answering a failure trigger."""
    if request.method != "POST" or request.path.startswith("/upload/"):
        return DEFAULT_TIER
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        body = json.loads(await request.read() or b"{}")
        if isinstance(body, dict):
            tier = get_field(body, "serviceTier")
            if isinstance(tier, str) and tier.lower() in SERVICE_TIERS:
                return tier.lower()
    return DEFAULT_TIER
