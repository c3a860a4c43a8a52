"""Serving the app until a signal, then a graceful shutdown that records every call.

``serve(settings)`` (what ``gemini-meter serve`` runs) listens until SIGTERM or
SIGINT, then:

1. stops accepting connections (the listening socket is closed, so a load
   balancer's next attempt goes to another replica);
2. logs that it is draining and how many calls are in flight;
3. lets calls in flight (streams included) finish, for up to
   ``shutdown_grace_seconds``; each is recorded as it ends. A stream still
   running after that is cut and recorded with the usage it carried
   (provisional for an interaction);
4. runs the app's cleanup: the writer flushes every record to the database,
   then the journal is closed (rows the database could not take stay in it
   for the next start) and the engine disposed.

A SIGKILL skips all this; the journal is what makes that safe.

With ``metrics_port`` set, ``/metrics`` is served by a second small app on that
port (same host, same event loop, the proxy's registry) and not on the proxy's.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..settings import Settings
from .app import ProxyRunner, create_app
from .metrics import metrics_app
from .typedefs import in_flight_key, metrics_key, pumps_key

__all__ = ["serve"]

log = logging.getLogger("gemini_meter.serve")


def serve(
    settings: Settings, *, access_log_class: type[AbstractAccessLogger] | None = None
) -> None:
    """Run the proxy on ``settings.host:port`` until SIGTERM/SIGINT, then drain and stop."""
    asyncio.run(_serve(settings, access_log_class))


async def _serve(settings: Settings, access_log_class: type[AbstractAccessLogger] | None) -> None:
    app = create_app(settings)
    kwargs = {"access_log_class": access_log_class} if access_log_class is not None else {}
    # aiohttp waits up to shutdown_timeout for handlers in flight once the sites stop.
    runner = ProxyRunner(
        app, handle_signals=False, shutdown_timeout=settings.shutdown_grace_seconds, **kwargs
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    metrics_runner: web.AppRunner | None = None
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        if settings.metrics_port is not None:
            metrics_runner = web.AppRunner(metrics_app(app[metrics_key]), access_log=None)
            await metrics_runner.setup()
            await web.TCPSite(metrics_runner, settings.host, settings.metrics_port).start()
            log.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
        log.info(
            "Gemini Meter on http://%s:%d -> %s (%s, %s)",
            settings.host,
            settings.port,
            settings.upstream,
            settings.auth_mode.value,
            "sqlite" if settings.is_sqlite else "postgresql",
        )
        await stop.wait()
        log.info(
            "shutting down: no new connections; draining %d calls in flight (%d streams),"
            " grace period %.0f s",
            app[in_flight_key].value,
            len(app[pumps_key]),
            settings.shutdown_grace_seconds,
        )
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
        if metrics_runner is not None:
            # Last: the drain stays observable while it runs.
            await metrics_runner.cleanup()
    log.info("stopped: every finished call is recorded")
