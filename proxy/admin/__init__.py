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

from .meter import add_meter_routes
from .routes import ADMIN_PREFIX, add_admin_routes

__all__ = ["ADMIN_PREFIX", "add_admin_routes", "add_meter_routes"]
