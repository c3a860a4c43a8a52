"""Talking to a running proxy's admin API instead of its database: a small HTTP client.

A command runs remotely when it is given ``--url`` (or ``GEMINI_METER_ADMIN_URL``); it
then needs the admin token, from ``--admin-token`` or ``GEMINI_METER_ADMIN_TOKEN``. The
token goes only in the ``Authorization`` header, so a plain-http URL is refused unless it
is a loopback address. An answer that is not 2xx becomes ``RemoteError`` carrying the
Gemini-shaped error's message (never the token). aiohttp is imported when a call is made,
so the CLI's start-up does not pay for it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import ConfigError, GeminiMeterError
from ..loopback import is_loopback
from .common import database_flag

__all__ = [
    "AdminTarget",
    "RemoteError",
    "add_remote_flags",
    "admin_call",
    "local_or_remote_flags",
    "path_part",
    "remote_target",
]

URL_ENV = "GEMINI_METER_ADMIN_URL"
TOKEN_ENV = "GEMINI_METER_ADMIN_TOKEN"
TIMEOUT_SECONDS = 30.0


class RemoteError(GeminiMeterError):
    """The admin API answered with an error (its HTTP ``status``), or could not be
    reached (``status`` None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class AdminTarget:
    url: str  # the proxy's base URL, without a trailing slash
    token: str

    def __repr__(self) -> str:  # never the token, even in a traceback
        return f"AdminTarget(url={self.url!r})"


def add_remote_flags(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--admin-token``: run the command through a proxy's admin API."""
    parser.add_argument(
        "--url",
        help=f"manage a running proxy through its admin API at this base URL instead of "
        f"the database (env {URL_ENV})",
    )
    parser.add_argument(
        "--admin-token",
        help=f"the proxy's admin token, for --url (env {TOKEN_ENV}; prefer the environment: "
        "a flag is visible to other local users in the process list)",
    )


def local_or_remote_flags(parser: argparse.ArgumentParser) -> None:
    """``--database`` for running on the database, ``--url`` and ``--admin-token`` for
    running through a proxy's admin API (which then ignores ``--database``)."""
    database_flag(parser)
    add_remote_flags(parser)


def path_part(name: str) -> str:
    """A user or team name as one segment of an admin API path."""
    return quote(name, safe="")


def remote_target(args: argparse.Namespace) -> AdminTarget | None:
    """Where to send the command, or None to use the database directly."""
    url = getattr(args, "url", None) or os.environ.get(URL_ENV)
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--url must be an http(s) URL with a host (or set {URL_ENV})")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigError("--url must use https unless it is a loopback address")
    token = getattr(args, "admin_token", None) or os.environ.get(TOKEN_ENV)
    if not token:
        raise ConfigError(f"--url needs the admin token: set --admin-token or {TOKEN_ENV}")
    return AdminTarget(url.rstrip("/"), token)


async def _call(
    target: AdminTarget,
    method: str,
    path: str,
    body: Any = None,
    params: dict[str, str] | None = None,
) -> Any:
    import aiohttp

    headers = {"Authorization": f"Bearer {target.token}", "Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(
                method, target.url + path, headers=headers, data=data, params=params
            ) as response,
        ):
            raw = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RemoteError(
            f"the admin API at {target.url} could not be reached ({type(exc).__name__})"
        ) from None
    payload: Any = None
    if raw:
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
    if status >= 400:
        message = None
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            message = payload["error"].get("message")
        # The proxy's answer to a path it does not serve (``server.forward``), not a
        # missing user or key (a user may well be called "router").
        if status == 404 and isinstance(message, str) and message.startswith("No Gemini API route"):
            message = "the proxy does not serve the admin API (is GEMINI_METER_ADMIN_TOKEN set?)"
        raise RemoteError(f"the admin API refused ({status}): {message or 'no details'}", status)
    return payload


def admin_call(
    target: AdminTarget,
    method: str,
    path: str,
    body: Any = None,
    params: dict[str, str] | None = None,
) -> Any:
    """One admin API call from a synchronous command: the decoded JSON answer (or None)."""
    return asyncio.run(_call(target, method, path, body, params))
