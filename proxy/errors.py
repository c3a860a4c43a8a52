"""Every error the proxy raises on purpose, and its Gemini-shaped JSON form.

Clients of the proxy are Gemini SDKs, which build their typed exceptions from
``{"error": {"code", "message", "status"}}``; so everything the proxy answers by
itself uses that shape. The hierarchy::

    GeminiMeterError
    ├── ConfigError                  bad settings or catalog; raised at start-up
    └── ProxyError                   answered to the client (code, status)
        ├── InvalidArgument          400 INVALID_ARGUMENT
        ├── Unauthenticated          401 UNAUTHENTICATED
        ├── PermissionDenied         403 PERMISSION_DENIED
        ├── NotFound                 404 NOT_FOUND
        ├── MethodNotAllowed         405 INVALID_ARGUMENT
        ├── RequestTimeout           408 DEADLINE_EXCEEDED
        ├── AlreadyExists            409 ALREADY_EXISTS
        ├── RequestTooLarge          413 INVALID_ARGUMENT
        ├── ResourceExhausted        429 RESOURCE_EXHAUSTED
        ├── UpstreamUnavailable      502 UNAVAILABLE
        ├── ServiceUnavailable       503 UNAVAILABLE
        └── UpstreamTimeout          504 DEADLINE_EXCEEDED

The ``error_middleware`` in ``server.app`` maps ``ProxyError`` (and anything
unexpected, as 500 INTERNAL) to that JSON.
"""

from __future__ import annotations

import json
from typing import ClassVar


class GeminiMeterError(Exception):
    """Base of every error the project raises on purpose."""


class ConfigError(GeminiMeterError):
    """Settings, a price catalog or a command line that cannot be used."""


class ProxyError(GeminiMeterError):
    """An error answered to the client in Gemini's JSON error shape."""

    code: ClassVar[int] = 500
    status: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        # extra response headers, e.g. Retry-After on a budget's refusal
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.code, self.message, self.status)


class InvalidArgument(ProxyError):
    code = 400
    status = "INVALID_ARGUMENT"


class Unauthenticated(ProxyError):
    code = 401
    status = "UNAUTHENTICATED"


class PermissionDenied(ProxyError):
    code = 403
    status = "PERMISSION_DENIED"


class NotFound(ProxyError):
    code = 404
    status = "NOT_FOUND"


class MethodNotAllowed(ProxyError):
    code = 405
    status = "INVALID_ARGUMENT"


class RequestTimeout(ProxyError):
    """The client stopped sending its request body."""

    code = 408
    status = "DEADLINE_EXCEEDED"


class AlreadyExists(ProxyError):
    """An admin call would create (or rename onto) a name that is taken."""

    code = 409
    status = "ALREADY_EXISTS"


class RequestTooLarge(ProxyError):
    code = 413
    status = "INVALID_ARGUMENT"


class ResourceExhausted(ProxyError):
    code = 429
    status = "RESOURCE_EXHAUSTED"


class UpstreamUnavailable(ProxyError):
    code = 502
    status = "UNAVAILABLE"


class ServiceUnavailable(ProxyError):
    code = 503
    status = "UNAVAILABLE"


class UpstreamTimeout(ProxyError):
    code = 504
    status = "DEADLINE_EXCEEDED"


def error_body(code: int, message: str, status: str) -> bytes:
    """The bytes of a Gemini error response."""
    return json.dumps({"error": {"code": code, "message": message, "status": status}}).encode()


INTERNAL_MESSAGE = "Internal error in Gemini Meter."
# What a client gets for a bug of the proxy's own, whichever lane it came by.
INTERNAL_ERROR = error_body(500, INTERNAL_MESSAGE, "INTERNAL")
