"""The control surface beside the data path: the admin HTTP API and self-service.

``/admin/v1/`` (``routes``) manages users, teams, keys and budgets and reads usage
reports; it exists only when ``Settings.admin_token`` is set, and every call must send
that token as a Bearer token. ``/meter/v1/`` (``meter``) lets a virtual key read its
own user's usage and the status of the budgets that apply to it. Both are described by
one OpenAPI document (``openapi``) built from the pydantic models in ``models`` and the
route tables. ``ui`` serves the usage page under ``/ui/`` (with the admin API, only
when the token is set): static files that read the admin API's JSON. Handlers talk to
``storage`` in short transactions of their own; no proxied call ever waits on them.
"""

from __future__ import annotations

from aiohttp import web

from .meter import add_meter_routes

__all__ = ["add_admin_routes", "add_meter_routes"]


def add_admin_routes(app: web.Application) -> None:
    """The admin API and the usage page (``routes.add_admin_routes``).

    Their modules (the pydantic models, the queries, the page) are imported here, when
    the API is switched on, not with this package: a proxy without an admin token never
    loads them.
    """
    from .routes import add_admin_routes as add

    add(app)
