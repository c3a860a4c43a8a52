"""``gemini-meter serve``: run the proxy with aiohttp's runner until interrupted.

The server package (and aiohttp) is imported only when this command runs, so the other
commands start without it. The cyclic garbage collector is paused while it loads (see
``cmd_serve``).
"""

from __future__ import annotations

import argparse
import gc
import logging
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .common import (
    DEFAULT_UPSTREAM,
    OFFLINE_HINT,
    Subparsers,
    _settings,
    command,
    database_flag,
)

if TYPE_CHECKING:
    from aiohttp.abc import AbstractAccessLogger

log = logging.getLogger("gemini_meter")


def register(subparsers: Subparsers) -> None:
    p = command(
        subparsers,
        "serve",
        cmd_serve,
        help="run the proxy",
        description="Run the proxy until interrupted (SIGTERM drains calls in flight). "
        "Clients keep their SDK and change only the base URL; each call is forwarded "
        "with the upstream key (GEMINI_METER_UPSTREAM_API_KEY) and metered.\n\n"
        f"No Google key yet? {OFFLINE_HINT[0].upper()}{OFFLINE_HINT[1:]}.",
    )
    p.add_argument(
        "--host", help="address to listen on (env GEMINI_METER_HOST; default: 127.0.0.1)"
    )
    p.add_argument(
        "--port", type=int, help="port to listen on (env GEMINI_METER_PORT; default: 8080)"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve /metrics on this port (same host) instead of the proxy's "
        "(env GEMINI_METER_METRICS_PORT; default: on the proxy's port)",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes serving the port together (SO_REUSEPORT); with N > 1, worker i "
        "serves /metrics on --metrics-port + i (env GEMINI_METER_WORKERS; default: 1)",
    )
    p.add_argument(
        "--upstream",
        metavar="URL",
        help="Gemini API base URL; http only on loopback, e.g. the emulator's "
        f"(env GEMINI_METER_UPSTREAM; default: {DEFAULT_UPSTREAM})",
    )
    database_flag(p)


def access_logger() -> type[AbstractAccessLogger]:
    """The access log: method, path, status and time, never the query (it may hold a key)."""
    from aiohttp import web
    from aiohttp.abc import AbstractAccessLogger

    class AccessLogger(AbstractAccessLogger):
        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            self.logger.info(
                '%s "%s %s" %s %.1fms',
                request.remote,
                request.method,
                request.path,
                response.status,
                time * 1000,
            )

        @property
        def enabled(self) -> bool:
            return self.logger.isEnabledFor(logging.INFO)

    return AccessLogger


def cmd_serve(args: argparse.Namespace) -> int:
    # Start-up makes some 150,000 objects that live as long as the process (modules,
    # classes, the schema) and little garbage, yet the cyclic collector walks them over
    # and over while they are imported: about a seventh of the CPU to import the serve
    # path (0.47 s with it, 0.40 s without, measured). It is paused until the server
    # listens; server.run turns it back on, after start-up's objects are frozen. The
    # cycles start-up leaves unreachable (some 2,000 objects, about 0.5 MB, measured) are
    # frozen with the rest and never freed: a fixed cost, paid once.
    gc.disable()
    from ..server.run import serve
    from ..settings import AuthMode

    settings = _settings(
        args,
        host=args.host,
        port=args.port,
        upstream=args.upstream,
        metrics_port=args.metrics_port,
        workers=args.workers,
    )
    if settings.auth_mode is AuthMode.VIRTUAL_KEYS and settings.upstream_api_key is None:
        raise ConfigError(
            "serve needs the Gemini API key to forward calls with: set "
            "GEMINI_METER_UPSTREAM_API_KEY (or upstream_api_key in the --config file); "
            + OFFLINE_HINT
        )
    serve(settings, access_log=access_logger)
    return 0
