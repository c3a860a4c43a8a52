"""The built-in usage page under ``/ui/``: static files served by the proxy itself.

The page (``ui/index.html``, ``ui/app.js``, ``ui/style.css`` and the vendored Chart.js
under ``ui/vendor/``) has no data of its own: its script fetches the admin API's JSON
(``/admin/v1/usage``, ``/admin/v1/budgets/status``, ``/admin/v1/records``) and draws it.
Like the admin API it exists only when ``Settings.admin_token`` is set; without one
``/ui/`` is an unknown path (404).

A browser cannot send ``Authorization: Bearer`` when it navigates, so the admin token
is given once, to a login form (``POST /ui/login``). The answer sets a session cookie
that holds an expiry and an HMAC, keyed by the server secret, of the admin token and
that expiry: never the token, and useless once the token or the secret changes. It is
``HttpOnly`` (the page's script never sees it), ``SameSite=Strict`` (no other site's
page can make the browser send it), ``Secure`` when the page is served over https, and
it expires after ``SESSION_SECONDS``. The admin API accepts it, compared in constant
time, for ``GET`` only (``session_ok``, called by ``routes._guarded``): a session can
read, never change anything. A token in a URL fragment was the alternative; it stays in
the browser's history and lives where any script on the page can read it, so it was
not chosen. The token is never logged: it only ever arrives in a POST body.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from importlib import resources
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from ..server.typedefs import settings_key

__all__ = ["SESSION_COOKIE", "SESSION_SECONDS", "UI_PREFIX", "add_ui_routes", "session_ok"]

UI_PREFIX: Final = "/ui"
SESSION_COOKIE: Final = "gemini_meter_ui"
SESSION_SECONDS: Final = 8 * 3600

# Every file the page is made of, with its type: nothing else under ui/ is served.
# Only the stylesheet is served without a session, for the login page.
_ASSETS: Final = {
    "app.js": "text/javascript",
    "style.css": "text/css",
    "vendor/chart.umd.min.js": "text/javascript",
}
_PUBLIC_ASSETS: Final = frozenset({"style.css"})
_HEADERS: Final = {
    # Only this origin's own files: no inline script or style, no framing, no
    # form posting anywhere else, no referrer leaving the origin.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: with it, browsers send "Origin: null" on the login form's POST.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_LOGIN_FAILED: Final = '<p class="error" role="alert">That is not the admin token.</p>'


def _file(name: str) -> bytes:
    return resources.files(__package__).joinpath("ui", name).read_bytes()


# ------------------------------------------------------------------------ sessions


def _mac(secret: bytes, token: str, expires: int) -> str:
    message = b"gemini-meter ui session\0" + token.encode() + b"\0" + str(expires).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def session_value(secret: bytes, token: str, now: float) -> str:
    """A new session cookie's value: ``<expiry>.<HMAC of the token and the expiry>``."""
    expires = int(now) + SESSION_SECONDS
    return f"{expires}.{_mac(secret, token, expires)}"


def session_valid(value: str, secret: bytes, token: str, now: float) -> bool:
    """Whether ``value`` is a session cookie made for ``token`` that has not expired."""
    expires_text, _, mac = value.partition(".")
    if not expires_text.isdigit() or len(expires_text) > 12:
        return False
    expires = int(expires_text)
    # The HMAC is compared whatever the expiry, in constant time.
    good = hmac.compare_digest(mac.encode(), _mac(secret, token, expires).encode())
    return good and now < expires


def session_ok(request: web.Request) -> bool:
    """Whether ``request`` carries a valid usage-page session (the admin token is set)."""
    value = request.cookies.get(SESSION_COOKIE)
    settings = request.app[settings_key]
    if not value or settings.admin_token is None:
        return False
    token = settings.admin_token.get_secret_value()
    return session_valid(value, settings.secret_bytes(), token, time.time())


# ------------------------------------------------------------------------ handlers


def _page(body: bytes, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=body, content_type="text/html", charset="utf-8", headers=_HEADERS
    )


def _same_origin(request: web.Request) -> bool:
    # A form posted from another site's page carries that site's Origin. Only the host is
    # compared: behind a TLS-terminating proxy the page is https and this request http.
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.host


async def page(request: web.Request) -> web.Response:
    if session_ok(request):
        return _page(_file("index.html"))
    return _page(_file("login.html").replace(b"<!--error-->", b""))


async def to_page(request: web.Request) -> web.Response:
    raise web.HTTPFound(f"{UI_PREFIX}/")


async def login(request: web.Request) -> web.Response:
    settings = request.app[settings_key]
    form = await request.post()
    presented = form.get("token")
    token = settings.admin_token
    if (
        token is None
        or not _same_origin(request)
        or not isinstance(presented, str)
        or not hmac.compare_digest(presented.strip().encode(), token.get_secret_value().encode())
    ):
        body = _file("login.html").replace(b"<!--error-->", _LOGIN_FAILED.encode())
        return _page(body, status=401)
    response = web.HTTPSeeOther(f"{UI_PREFIX}/", headers={"Cache-Control": "no-store"})
    response.set_cookie(
        SESSION_COOKIE,
        session_value(settings.secret_bytes(), token.get_secret_value(), time.time()),
        path="/",
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    raise response


async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther(f"{UI_PREFIX}/", headers={"Cache-Control": "no-store"})
    if _same_origin(request):
        response.del_cookie(SESSION_COOKIE, path="/")
    raise response


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    kind = _ASSETS.get(name)
    if kind is None or (name not in _PUBLIC_ASSETS and not session_ok(request)):
        raise web.HTTPNotFound()
    return web.Response(body=_file(name), content_type=kind, charset="utf-8", headers=_HEADERS)


def add_ui_routes(app: web.Application) -> None:
    """Add the usage page's routes to ``app`` (call only when the admin token is set)."""
    app.router.add_get(UI_PREFIX, to_page)
    app.router.add_get(f"{UI_PREFIX}/", page)
    app.router.add_post(f"{UI_PREFIX}/login", login)
    app.router.add_post(f"{UI_PREFIX}/logout", logout)
    app.router.add_get(f"{UI_PREFIX}/assets/{{name:.+}}", asset)
