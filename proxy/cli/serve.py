"""``gemini-meter serve``: run the proxy with aiohttp's runner until interrupted.

The server package is imported only when this command runs, so the other commands start
without it.
"""

from __future__ import annotations

import argparse
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
    from ..server.run import serve

    settings = _settings(args, host=args.host, port=args.port, upstream=args.upstream)
    serve(settings, access_log_class=AccessLogger)
    return 0
