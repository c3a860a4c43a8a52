"""The application factory: wires state, routes, middlewares and cleanup contexts.

``create_app(settings)`` builds everything from the settings it is given and
holds no state at import time. Each resource has one cleanup context (set up,
``yield``, tear down), in dependency order: database, journal and writer,
upstream session, budgets (their counters, refreshed from the database, and
Redis when configured), authenticator and recorder, then keys' last use and budget
alerts (the evaluator and delivery worker of ``budgets.alerts``, unless
``alerts_enabled`` is off, stopped first). On start the journal's rows left by a
previous run are handed to the writer again; on shutdown streams still being relayed
finish, the writer flushes every queued record, then the journal is closed and the
engine disposed.

``ProxyRunner`` (used by ``server.run.serve`` and the tests) runs the app with one
change to aiohttp's connection handler: requests aiohttp refuses before any handler
runs (a bad request line, oversized headers, conflicting lengths) are answered
in Gemini's JSON error shape, and neither that answer nor the log repeats the
request line, which may carry a ``?key=``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from ..admin import add_admin_routes, add_meter_routes
from ..budgets.alerts import AlertDelivery, AlertEvaluator
from ..budgets.engine import BudgetEngine, build_budget_metrics
from ..errors import (
    INTERNAL_ERROR,
    INTERNAL_MESSAGE,
    ConfigError,
    InvalidArgument,
    MethodNotAllowed,
    NotFound,
    ProxyError,
    RequestTooLarge,
    error_body,
)
from ..metering.recorder import Recorder
from ..pricing.catalog import Catalog, load_catalog
from ..settings import AuthMode, Settings
from ..storage.journal import Journal, JournalBusy
from ..storage.migrate import at_head, upgrade_async
from ..storage.schema import make_engine
from ..storage.writer import UsageWriter
from .auth import Authenticator
from .batches import BatchMeter
from .client import Client
from .forward import proxy_handler
from .front import FrontServer
from .live import auth_tokens_handler, end_live_sessions, live_handler
from .metrics import build_metrics, exposition, watch_budgets, watch_journal, watch_writer
from .otel import otel_ctx
from .typedefs import (
    ApiRequest,
    InFlight,
    alert_delivery_key,
    alert_evaluator_key,
    authenticator_key,
    batch_meter_key,
    budgets_key,
    catalog_key,
    engine_key,
    in_flight_key,
    journal_key,
    keyless_uploads_key,
    live_sessions_key,
    metrics_key,
    pumps_key,
    recorder_key,
    sessionmaker_key,
    settings_key,
    upstream_client_key,
    upstream_session_key,
    writer_key,
)

log = logging.getLogger("gemini_meter.app")

# aiohttp's web.Request, or the lean lane's request (server.front)
AnyRequest = TypeVar("AnyRequest", bound=ApiRequest)
Handler = Callable[[AnyRequest], Awaitable[web.StreamResponse]]


def _json_error(exc: ProxyError) -> web.Response:
    return web.Response(
        status=exc.code, body=exc.body(), content_type="application/json", headers=exc.headers
    )


_HTTP_STATUS = {
    400: InvalidArgument,
    404: NotFound,
    405: MethodNotAllowed,
    413: RequestTooLarge,
}


@web.middleware
async def in_flight_middleware(
    request: AnyRequest, handler: Handler[AnyRequest]
) -> web.StreamResponse:
    """Counts the calls being handled, for a graceful shutdown to report and wait on."""
    counter = request.app[in_flight_key]
    counter.value += 1
    try:
        return await handler(request)
    finally:
        counter.value -= 1


@web.middleware
async def error_middleware(request: AnyRequest, handler: Handler[AnyRequest]) -> web.StreamResponse:
    """Every error the proxy itself answers, in Gemini's JSON error shape."""
    # An absolute-form target ("GET http://elsewhere/ HTTP/1.1") keeps its scheme in raw_path.
    if request.method == "CONNECT" or not request.raw_path.startswith("/"):
        # A reverse proxy to one upstream: never a forward proxy to anywhere else.
        return _json_error(InvalidArgument("Gemini Meter only proxies to its configured upstream."))
    try:
        return await handler(request)
    except ProxyError as exc:
        return _json_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = _HTTP_STATUS.get(exc.status)
        if kind is not None:
            return _json_error(kind(exc.reason))
        return web.Response(
            status=exc.status,
            body=error_body(exc.status, exc.reason, "INVALID_ARGUMENT"),
            content_type="application/json",
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.Response(
            status=500,
            body=INTERNAL_ERROR,
            content_type="application/json",
        )


# What aiohttp's own rejections become: a fixed message per status, never the
# parser's, which quotes the offending request line.
_PROTOCOL_ERRORS = {
    400: ("INVALID_ARGUMENT", "The request could not be read as HTTP."),
    413: ("INVALID_ARGUMENT", "The request is too large."),
    414: ("INVALID_ARGUMENT", "The request URL is too long."),
    431: ("INVALID_ARGUMENT", "The request headers are too large."),
    500: ("INTERNAL", INTERNAL_MESSAGE),
    504: ("DEADLINE_EXCEEDED", "Gemini Meter did not answer in time."),
}


class _GeminiRequestHandler(RequestHandler):
    """aiohttp's connection handler, with its own error answers in Gemini's shape."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError) or exc is None:
            # The parser's message and traceback may quote the request line (and a
            # key in its query): the type of error is all that is logged.
            log.warning(
                "refused a request aiohttp could not parse: %d %s",
                status,
                type(exc).__name__ if exc else "-",
            )
        else:
            log.error("unhandled error in a request handler", exc_info=exc)
        if request.writer.output_size > 0:
            # Part of a response is out already: the connection can only be cut.
            raise ConnectionError("Response already started; cannot send an error.")
        grpc_status, text = _PROTOCOL_ERRORS.get(
            status, ("INVALID_ARGUMENT" if status < 500 else "INTERNAL", "Request refused.")
        )
        response = web.Response(
            status=status,
            body=error_body(status, text, grpc_status),
            content_type="application/json",
        )
        response.force_close()
        return response


async def _guarded(request: ApiRequest) -> web.StreamResponse:
    return await error_middleware(request, proxy_handler)


async def _lean(request: ApiRequest) -> web.StreamResponse:
    """A request on the lean lane (``server.front``): the app's middlewares, then
    ``proxy_handler``, where aiohttp's router would have sent it."""
    return await in_flight_middleware(request, _guarded)


class _GeminiServer(FrontServer):
    def aiohttp_handler(self) -> RequestHandler:
        # aiohttp's Server builds a RequestHandler from the same keyword arguments.
        return _GeminiRequestHandler(self, loop=self._loop, **self._kwargs)


class ProxyRunner(web.AppRunner):
    """An ``AppRunner`` whose connections start on the lean lane (``server.front``), and
    whose aiohttp connections answer aiohttp's own rejections as Gemini does.

    aiohttp offers no setting for the latter: its ``RequestHandler.handle_error``
    writes plain text. The runner builds the same ``Server`` as aiohttp and
    hands connections to a handler that overrides that one method.
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _GeminiServer(
            server.request_handler,
            app=self.app,
            lean=_lean,
            max_body=self.app[settings_key].max_request_bytes,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    engine = make_engine(settings.database_url)
    if settings.is_sqlite and not await at_head(engine):
        # The embedded default manages its own schema; PostgreSQL is upgraded
        # deliberately with `gemini-meter db upgrade` before a deploy.
        await upgrade_async(settings.database_url)
    app[engine_key] = engine
    app[sessionmaker_key] = async_sessionmaker(engine, expire_on_commit=False)
    yield
    await engine.dispose()


async def _writer_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    journal = None
    if settings.journal_enabled:
        journal = Journal(
            settings.journal_path(),
            max_bytes=settings.journal_max_bytes,
            segment_bytes=settings.journal_segment_bytes,
            policy=settings.journal_full_policy,
            sync_interval=settings.journal_sync_interval_ms / 1000,
        )
        try:
            replay = await asyncio.to_thread(journal.open)
        except JournalBusy as exc:
            raise ConfigError(str(exc)) from exc
        watch_journal(app[metrics_key], journal)
    app[journal_key] = journal
    writer = UsageWriter(
        app[sessionmaker_key],
        batch_size=settings.writer_batch_size,
        flush_interval=settings.writer_flush_interval_seconds,
        queue_limit=settings.writer_queue_limit,
        journal=journal,
        on_batch=app[metrics_key].writer_batch.observe,
    )
    watch_writer(app[metrics_key], writer)
    await writer.start()
    if journal is not None:
        writer.replay(replay)
    app[writer_key] = writer
    yield
    await writer.close()
    if journal is not None:
        await journal.close()


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    client = Client(
        settings.upstream,
        limit=settings.upstream_pool_size,
        connect_timeout=settings.upstream_connect_timeout_seconds,
        read_timeout=settings.upstream_read_timeout_seconds,
    )
    # aiohttp's client carries only the Live API's websockets (server.live).
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=settings.upstream_connect_timeout_seconds,
        sock_read=settings.upstream_read_timeout_seconds,
    )
    connector = aiohttp.TCPConnector(
        limit=settings.upstream_pool_size, ttl_dns_cache=300, enable_cleanup_closed=True
    )
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        # The client's headers go as they came: aiohttp adds none of its own.
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        # Relay cookies as headers; never keep a jar shared between users.
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:
        app[upstream_client_key] = client
        app[upstream_session_key] = session
        try:
            yield
        finally:
            await client.close()


async def _budgets_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    client = None
    if settings.redis_url is not None:
        import redis.asyncio  # only when configured: it is not needed otherwise

        client = redis.asyncio.Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
        )
    engine = BudgetEngine(
        settings,
        app[sessionmaker_key],
        build_budget_metrics(app[metrics_key].registry),
        redis_client=client,
    )
    await engine.start()
    watch_budgets(app[metrics_key], engine)
    app[budgets_key] = engine
    yield
    # After the services: streams still relayed at shutdown settle first.
    await engine.close()


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    app[authenticator_key] = Authenticator(settings, app[sessionmaker_key], settings.secret_bytes())
    app[recorder_key] = Recorder(
        app[catalog_key], app[writer_key], app[metrics_key], budgets=app[budgets_key]
    )
    app[pumps_key] = set()
    app[live_sessions_key] = set()
    app[keyless_uploads_key] = asyncio.Semaphore(settings.keyless_upload_limit)
    app[batch_meter_key] = BatchMeter()
    yield
    # Streams still relayed or draining (their clients left) finish and hand their
    # records to the writer before it flushes, within the shutdown grace period.
    pumps = app[pumps_key]
    if pumps:
        log.info(
            "waiting up to %.0f s for %d streams to end",
            settings.shutdown_grace_seconds,
            len(pumps),
        )
        _, late = await asyncio.wait(pumps, timeout=settings.shutdown_grace_seconds)
        # Past the grace period a stream is cut; its pump records the usage seen so far.
        for pump in late:
            pump.cancel()
        if late:
            log.warning("cut %d streams still running after the grace period", len(late))
            await asyncio.wait(late)
    await app[batch_meter_key].close(timeout=settings.owner_commit_timeout_seconds)
    await app[authenticator_key].close(timeout=settings.owner_commit_timeout_seconds)


async def _alerts_ctx(app: web.Application) -> AsyncIterator[None]:
    """Budget alerts: the evaluator and the delivery worker, in the background."""
    settings = app[settings_key]
    if not settings.alerts_enabled:
        yield
        return
    metrics = app[metrics_key]
    writer = app[writer_key]
    delivery = AlertDelivery(
        app[sessionmaker_key],
        settings.secret_bytes(),
        timeout=settings.alert_webhook_timeout_seconds,
        retry_max=settings.alert_retry_max_seconds,
        poll=settings.alert_interval_seconds,
        on_sent=metrics.alerts_sent.inc,
        on_failed=metrics.alerts_failed.inc,
    )
    evaluator = AlertEvaluator(
        app[sessionmaker_key],
        interval=settings.alert_interval_seconds,
        # Records committed by this process bring the next evaluation forward: read
        # in memory, so the request path is not involved.
        changes=lambda: writer.written_total,
        on_alerts=delivery.wake,
    )
    app[alert_delivery_key] = delivery
    app[alert_evaluator_key] = evaluator
    delivery.start()
    evaluator.start()
    yield
    await evaluator.stop()
    await delivery.stop()


# How often keys' last use is written: at most once a minute per key, in one statement.
KEY_USE_FLUSH_SECONDS = 60.0


async def _key_use_ctx(app: web.Application) -> AsyncIterator[None]:
    """Write keys' last use in the background, and once more at shutdown."""
    authenticator = app[authenticator_key]

    async def flush() -> None:
        try:
            await authenticator.flush_key_use()
        except Exception as exc:  # kept for the next round; never fatal
            log.warning("key last-use not written (%s)", type(exc).__name__)

    async def loop() -> None:
        while True:
            await asyncio.sleep(KEY_USE_FLUSH_SECONDS)
            await flush()

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await flush()


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: the database answers a trivial query within two seconds."""
    try:
        async with asyncio.timeout(2.0), request.app[sessionmaker_key]() as session:
            await session.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means not ready; the reason is logged, not shown
        log.warning("readiness check failed: %s", type(exc).__name__)
        return web.json_response({"status": "unavailable", "database": "unreachable"}, status=503)
    return web.json_response({"status": "ok", "database": "ok"})


async def metrics_handler(request: web.Request) -> web.Response:
    return exposition(request.app[metrics_key].registry)


# Objects allocated (net) between two young collections while serving: CPython's 700 made
# the collector walk the calls in flight every few hundred allocations under load, 600 to
# 1,100 young collections in some 27,000 calls at c=50 (docs/benchmarks.md).
YOUNG_GENERATION_THRESHOLD = 10_000


async def _frozen_start_ctx(_: web.Application) -> AsyncIterator[None]:
    """Last at start-up: what start-up built is put out of the garbage collector's sight,
    and the young generation made larger.

    Modules, the schema, the catalog and the rest live as long as the process (some 120,000
    objects). A full collection walks every one of them, which took 130 ms on the 2-core
    test machine; frozen (``gc.freeze``), it walks only what serving makes, so the
    collector's pauses stay out of the request path's tail. Each young collection walks
    every call in flight; with ``YOUNG_GENERATION_THRESHOLD`` they come some fourteen times
    less often, and the cycles a call leaves are freed a few calls later instead of at
    once. The collector's settings are given back on cleanup.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, *thresholds[1:])
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def create_app(
    settings: Settings,
    *,
    catalog: Catalog | None = None,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The proxy application for ``settings``; tests pass their own registry."""
    if settings.auth_mode is AuthMode.VIRTUAL_KEYS and settings.upstream_api_key is None:
        raise ConfigError(
            "virtual_keys mode needs the upstream key: set GEMINI_METER_UPSTREAM_API_KEY"
        )
    app = web.Application(
        middlewares=[in_flight_middleware, error_middleware],
        client_max_size=settings.max_request_bytes,
    )
    app[in_flight_key] = InFlight()
    app[settings_key] = settings
    app[catalog_key] = catalog or load_catalog(settings.price_catalog)
    app[metrics_key] = build_metrics(
        registry or CollectorRegistry(),
        principal=settings.metrics_principal,
        principal_limit=settings.metrics_principal_limit,
        resolve_model=app[catalog_key].resolve,
    )
    app.cleanup_ctx.append(otel_ctx)  # torn down last: records finished late are exported
    app.cleanup_ctx.extend([_database_ctx, _writer_ctx, _upstream_ctx, _budgets_ctx, _services_ctx])
    app.cleanup_ctx.extend([_key_use_ctx, _alerts_ctx, _frozen_start_ctx])
    app.on_shutdown.append(end_live_sessions)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if settings.metrics_port is None:
        # Else served on its own port only (server.run), not to the proxy's clients.
        app.router.add_get("/metrics", metrics_handler)
    add_meter_routes(app)
    if settings.admin_token is not None:
        # Off unless configured: without a token /admin/ is an unknown path (404).
        add_admin_routes(app)
    # The Live API's WebSocket (server.live): outside the forwarded prefixes.
    app.router.add_get("/ws/{service}", live_handler)
    app.router.add_post("/{version:v1|v1beta|v1alpha}/auth_tokens", auth_tokens_handler)
    app.router.add_route("*", "/{tail:.*}", proxy_handler)
    return app
