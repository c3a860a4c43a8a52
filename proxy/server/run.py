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

``cli.serve`` pauses the cyclic garbage collector before it imports this module (the
imports are most of a start), as ``server.worker`` does in a worker process; it is
turned on again once the sites listen, after the app's start-up has frozen what it
built (``server.app``), or at once in a supervisor.

With ``metrics_port`` set, ``/metrics`` is served by a second small app on that
port (same host, same event loop, the proxy's registry) and not on the proxy's.

``workers > 1`` runs that many processes on the one port (``SO_REUSEPORT``: the
kernel spreads connections over them), each with its own event loop, upstream
pool, writer and journal slot (``storage.journal`` gives each process a slot of its
own under the shared directory), and its metrics on ``metrics_port + i``. A
supervisor, this process, migrates the database (unless it is at the newest
revision already) and makes the key secret once before starting them, restarts one
that dies (its journal slot, freed by the kernel, is replayed by its successor), and
on SIGTERM passes the signal on and waits for every worker's own drain.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..errors import ConfigError
from ..settings import EventLoop, Settings
from .app import ProxyRunner, create_app
from .metrics import metrics_app
from .typedefs import in_flight_key, metrics_key, pumps_key

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

__all__ = ["serve", "worker_settings"]

log = logging.getLogger("gemini_meter.serve")


AccessLog = Callable[[], type[AbstractAccessLogger]]
# A worker that dies sooner than this after its start is restarted only after a pause,
# so a worker that cannot start (a port taken, a bad database URL) does not spin.
_RESTART_PAUSE_SECONDS = 1.0


def serve(settings: Settings, *, access_log: AccessLog | None = None) -> None:
    """Run the proxy on ``settings.host:port`` until SIGTERM/SIGINT, then drain and stop.

    ``access_log`` makes the access logger class (a module-level callable, so that
    worker processes can be handed it).
    """
    if settings.workers > 1:
        _supervise(settings, access_log)
    else:
        _run(_serve(settings, access_log, reuse_port=False), settings.event_loop)


def _run(main: Coroutine[Any, Any, None], choice: EventLoop) -> None:
    """Run ``main`` to its end on the event loop ``choice`` names."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        runner.run(main)


def loop_factory(choice: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the loop ``choice`` names (None: asyncio's own). ``auto`` is uvloop
    where it is installed; ``uvloop`` without it is a set-up error."""
    if choice is EventLoop.ASYNCIO:
        return None
    try:
        import uvloop
    except ImportError:
        if choice is EventLoop.UVLOOP:
            raise ConfigError(
                "event_loop is uvloop, but uvloop is not installed: install it, or set "
                "event_loop to auto or asyncio"
            ) from None
        return None
    return uvloop.new_event_loop


def _worker(settings: Settings, index: int, access_log: AccessLog | None, level: int) -> None:
    """One worker process (started by ``server.worker.main``): the proxy on the shared
    port, its metrics on its own."""
    logging.basicConfig(
        level=level, format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))
    mine = worker_settings(settings, index)
    # The supervisor handles SIGINT (a terminal's ^C reaches the whole group) and
    # passes SIGTERM on: a worker drains once, on SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _run(_serve(mine, access_log, reuse_port=True, signals=(signal.SIGTERM,)), mine.event_loop)


def worker_settings(settings: Settings, index: int) -> Settings:
    """Worker ``index``'s own settings: the supervisor's, with its metrics on
    ``metrics_port + index``. Within its process it is one server (``workers=1``): the
    supervisor already checked that the workers' metrics ports are free of the proxy's,
    a check that, run again from a worker's own port, could refuse a valid set-up."""
    assert settings.metrics_port is not None  # the settings require it with workers
    return settings.replace(metrics_port=settings.metrics_port + index, workers=1)


def _supervise(settings: Settings, access_log: AccessLog | None) -> None:
    import multiprocessing  # only a supervisor needs it

    from ..storage.migrate import upgrade
    from . import worker

    gc.enable()  # paused for the imports (cli.serve); a supervisor starts nothing else
    loop_factory(settings.event_loop)  # a loop that cannot be had is said here, not per worker
    # Once, before any worker: concurrent first starts would race to migrate an
    # embedded SQLite file and to create the key secret file. A database already at
    # the newest revision (one query) is left alone, without importing Alembic.
    if not asyncio.run(_at_head(settings.database_url)):
        upgrade(settings.database_url)
    settings.secret_bytes()
    context = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}

    def start(index: int) -> tuple[BaseProcess, float]:
        process = context.Process(
            target=worker.main,  # light to import: it pauses the collector first
            args=(settings, index, access_log, logging.getLogger().level),
            name=f"gemini-meter-{index}",
        )
        process.start()
        return process, time.monotonic()

    workers = [start(i) for i in range(settings.workers)]
    log.info(
        "Gemini Meter supervisor: %d workers on http://%s:%d, metrics on ports %d..%d",
        settings.workers,
        settings.host,
        settings.port,
        settings.metrics_port,
        (settings.metrics_port or 0) + settings.workers - 1,
    )
    try:
        while not stopping:
            time.sleep(0.2)
            for index, (process, started) in enumerate(workers):
                if stopping or process.is_alive():
                    continue
                log.warning("worker %d exited with %s; restarting it", index, process.exitcode)
                if time.monotonic() - started < _RESTART_PAUSE_SECONDS:
                    time.sleep(_RESTART_PAUSE_SECONDS)
                workers[index] = start(index)
    finally:
        for process, _ in workers:
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: each worker drains and records
        # A worker's drain takes at most the grace period, then its cleanup flushes.
        deadline = time.monotonic() + settings.shutdown_grace_seconds + 30
        for process, _ in workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker %s did not stop in time: killed", process.name)
                process.kill()
                process.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("stopped: every worker drained")


async def _at_head(url: str) -> bool:
    from ..storage.migrate import at_head
    from ..storage.schema import make_engine

    engine = make_engine(url)
    try:
        return await at_head(engine)
    finally:
        await engine.dispose()


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


async def _listen(site: web.TCPSite, host: str, port: int) -> None:
    """Start ``site``; a port it cannot take is the set-up's fault, said in one line
    (not left to the CLI, which reads any other ``OSError`` as the database's)."""
    try:
        await site.start()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}") from exc


async def _serve(
    settings: Settings,
    access_log: AccessLog | None,
    *,
    reuse_port: bool,
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    app = create_app(settings)
    kwargs: dict[str, Any] = {}
    if not settings.access_log:
        kwargs["access_log"] = None  # aiohttp then skips the logger entirely
    elif access_log is not None:
        kwargs["access_log_class"] = access_log()
    # aiohttp waits up to shutdown_timeout for handlers in flight once the sites stop.
    runner = ProxyRunner(
        app, handle_signals=False, shutdown_timeout=settings.shutdown_grace_seconds, **kwargs
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    metrics_runner: web.AppRunner | None = None
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port or None)
        await _listen(site, settings.host, settings.port)
        if settings.metrics_port is not None:
            metrics_runner = web.AppRunner(metrics_app(app[metrics_key]), access_log=None)
            await metrics_runner.setup()
            metrics_site = web.TCPSite(metrics_runner, settings.host, settings.metrics_port)
            await _listen(metrics_site, settings.host, settings.metrics_port)
            log.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
        # The collector was paused for start-up (cli.serve); what start-up built is
        # frozen by now (server.app), so from here it walks only what serving makes.
        gc.enable()
        log.info(
            "Gemini Meter on http://%s:%d -> %s (%s, %s, %s)",
            settings.host,
            settings.port,
            settings.upstream,
            settings.auth_mode.value,
            "sqlite" if settings.is_sqlite else "postgresql",
            _loop_name(loop),
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
        for signum in signals:
            loop.remove_signal_handler(signum)
        await runner.cleanup()
        if metrics_runner is not None:
            # Last: the drain stays observable while it runs.
            await metrics_runner.cleanup()
    log.info("stopped: every finished call is recorded")
