"""Self-service: ``GET /meter/v1/usage`` and ``GET /meter/v1/budget`` for a virtual key.

A caller authenticates exactly as on a proxied call (``x-goog-api-key``, ``?key=`` or
``Authorization: Bearer``, through ``server.auth``) and sees only what belongs to the
principal its key resolves to: its user's usage, and the budgets whose scope is its
user, its key's team, its key, or global. Nothing in the request can name anyone else:
a query parameter the endpoint does not define (``?user=bob``) is refused with 400.

Every proxy serves these routes, so this module stays light: the handlers import the
admin API's models, helpers and report queries on their first call, and the routes'
documentation (``meter_operations``) is built only for the OpenAPI document. A start
that loaded them would pay for pydantic models an endpoint seldom called needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ..metering.records import Principal
from ..server.auth import presented_key
from ..server.typedefs import authenticator_key, sessionmaker_key

if TYPE_CHECKING:
    from .routes import Handler, Operation

__all__ = ["METER_PREFIX", "METER_ROUTES", "add_meter_routes", "meter_operations"]

METER_PREFIX = "/meter/v1"
# What a caller may group its own usage by.
METER_GROUP_KEYS = ("model", "day")
# Where a key may travel in the query: read by server.auth, not by the endpoint.
_KEY_PARAMETERS = ("key", "$key")


async def _principal(request: web.Request) -> Principal:
    key = presented_key(request.headers, request.query)
    return await request.app[authenticator_key].authenticate(key)


async def my_usage(request: web.Request) -> web.Response:
    from ..storage import reports
    from .models import MeterUsageQuery, UsageReport
    from .routes import json_model, parse_group_by, parse_query

    principal = await _principal(request)
    query = parse_query(request, MeterUsageQuery, ignore=_KEY_PARAMETERS)
    group_by = parse_group_by(query.group_by, METER_GROUP_KEYS)
    async with request.app[sessionmaker_key]() as session:
        rows = await reports.usage_report(
            session,
            user=principal.user_name,
            since=query.since,
            until=query.until,
            group_by=group_by,
        )
    return json_model(UsageReport.of(group_by, rows))


async def my_budgets(request: web.Request) -> web.Response:
    from ..storage import budgets
    from ..storage.schema import utcnow
    from .models import BudgetStatusList, NoQuery
    from .routes import json_model, parse_query

    principal = await _principal(request)
    parse_query(request, NoQuery, ignore=_KEY_PARAMETERS)
    now = utcnow()
    async with request.app[sessionmaker_key]() as session:
        statuses = [
            await budgets.budget_status(session, row, now)
            for row in await budgets.budgets_for_principal(session, principal)
        ]
    return json_model(BudgetStatusList(statuses=statuses))


# The routes as served; ``meter_operations`` documents each of them.
METER_ROUTES: tuple[tuple[str, str, Handler], tuple[str, str, Handler]] = (
    ("GET", f"{METER_PREFIX}/usage", my_usage),
    ("GET", f"{METER_PREFIX}/budget", my_budgets),
)


def meter_operations() -> tuple[Operation, ...]:
    """``METER_ROUTES`` as the OpenAPI document describes them (``admin.openapi``)."""
    from .models import BudgetStatusList, MeterUsageQuery, UsageReport
    from .routes import Operation

    usage, budget = METER_ROUTES
    return (
        Operation(
            *usage,
            "The calling key's user's usage and cost",
            query=MeterUsageQuery,
            response=UsageReport,
            errors=(400,),
            security="virtualKey",
        ),
        Operation(
            *budget,
            "Status of every budget that applies to the calling key",
            response=BudgetStatusList,
            security="virtualKey",
        ),
    )


def add_meter_routes(app: web.Application) -> None:
    for method, path, handler in METER_ROUTES:
        app.router.add_route(method, path, handler)
