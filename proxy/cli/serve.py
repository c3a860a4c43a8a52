"""``gemini-meter serve``: run the proxy with aiohttp's runner until interrupted.

The server package is imported only when this command runs, so the other commands start
without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .common import _settings

log = logging.getLogger("gemini_meter")


class AccessLogger(AbstractAccessLogger):
    """Method, path, status and time: never the query string, which may carry a key."""

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


def cmd_serve(args: argparse.Namespace) -> int:
    from ..server.app import create_app, serve

    settings = _settings(args, host=args.host, port=args.port, upstream=args.upstream)
    app = create_app(settings)
    log.info(
        "Gemini Meter on http://%s:%d -> %s (%s, %s)",
        settings.host,
        settings.port,
        settings.upstream,
        settings.auth_mode.value,
        "sqlite" if settings.is_sqlite else "postgresql",
    )
    # ``serve``, not ``web.run_app``: its runner answers malformed requests in
    # Gemini's error shape without echoing (or logging) the request line.
    with contextlib.suppress(web.GracefulExit, KeyboardInterrupt):
        asyncio.run(
            serve(
                app,
                settings.host,
                settings.port,
                access_log_class=AccessLogger,
                shutdown_timeout=30,
            )
        )
    return 0
