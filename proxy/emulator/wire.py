"""Gemini's HTTP conventions as the emulator speaks them, shared by every endpoint.

The error shape ``{"error": {code, message, status}}`` (raised anywhere as
``ApiError``), JSON bodies in and out, the ``x-gemini-service-tier`` header
every response carries, and request fields read in camelCase or snake_case.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Generic, TypeVar

from aiohttp import web

SERVICE_TIERS: Final = frozenset({"flex", "standard", "priority", "deferred"})


DEFAULT_TIER: Final = "standard"


TIER_HEADER: Final = "x-gemini-service-tier"


# Google's canonical status names for the HTTP codes an API answers with.
_STATUS_NAMES: Final[Mapping[int, str]] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


Json = dict[str, Any]


class ApiError(Exception):
    """An answer in Gemini's error shape, raised from anywhere in a handler."""

    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _status_name(code)


def _status_name(code: int) -> str:
    return _STATUS_NAMES.get(code, "UNKNOWN" if code >= 500 else "INVALID_ARGUMENT")


def error_response(error: ApiError, tier: str = DEFAULT_TIER) -> web.Response:
    body = {"error": {"code": error.code, "message": error.message, "status": error.status}}
    return web.json_response(body, status=error.code, headers={TIER_HEADER: tier})


def api_key_of(request: web.Request) -> str | None:
    key = request.headers.get("x-goog-api-key") or request.query.get("key")
    if not key:
        # The OpenAI-compatible endpoint takes the key as a bearer token, as the
        # openai SDK sends it (Google's OpenAI-compatibility guide, REST example).
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
    return key or None


def int_or_none(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


async def json_body(request: web.Request) -> dict[str, object]:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid JSON payload received: expected an object.")
    return body


def json_response(body: object, tier: str) -> web.Response:
    return web.json_response(body, headers={TIER_HEADER: tier})


async def start_stream(request: web.Request, content_type: str, tier: str) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": content_type,
            "Cache-Control": "no-cache",
            TIER_HEADER: tier,
        }
    )
    await response.prepare(request)
    return response


def timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def get_field(mapping: object, name: str) -> object:
    """A request field by its camelCase name, or by its snake_case one.

    Google's JSON parser accepts both spellings, and the SDK uses both: it
    sends ``generationConfig`` but ``thinkingConfig`` with ``thinking_level``.
    """
    if not isinstance(mapping, dict):
        return None
    if name in mapping:
        return mapping[name]
    return mapping.get(re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), name))


def drop_connection(request: web.Request) -> None:
    """End a streamed response as a lost connection does: the socket closed mid-body.

    No last chunk is written, so the client (and the proxy in between) sees
    the body end early, not a well-formed short stream.
    """
    transport = request.transport
    if transport is not None:
        transport.abort()


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list method's items, and the token of the next (None: the last)."""

    items: list[T]
    next_token: str | None


def page_of(request: web.Request, items: list[T], default_size: int) -> Page[T]:
    """The page ``pageSize`` and ``pageToken`` ask for; the token is an offset, as text."""
    size_text = request.query.get("pageSize", "")
    size = int(size_text) if size_text.isdigit() and int(size_text) > 0 else default_size
    token = request.query.get("pageToken", "")
    start = int(token) if token.isdigit() else 0
    end = start + size
    return Page(items[start:end], str(end) if end < len(items) else None)
