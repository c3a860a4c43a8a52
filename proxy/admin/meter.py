"""Self-service: ``GET /meter/v1/usage`` and ``GET /meter/v1/budget`` for a virtual key.

A caller authenticates exactly as on a proxied call (``x-goog-api-key``, ``?key=`` or
``Authorization: Bearer``, through ``server.auth``) and sees only what belongs to the
principal its key resolves to: its user's usage, and the budgets whose scope is its
user, its key's team, its key, or global. Nothing in the request can name anyone else:
a query parameter the endpoint does not define (``?user=bob``) is refused with 400.
"""

from __future__ import annotations

from aiohttp import web

from ..metering.records import Principal
from ..server.auth import presented_key
from ..server.typedefs import authenticator_key, sessionmaker_key
from ..storage import budgets, reports
from ..storage.schema import utcnow
from .models import BudgetStatusList, MeterUsageQuery, NoQuery, UsageReport
from .routes import Operation, json_model, parse_group_by, parse_query

__all__ = ["METER_OPERATIONS", "METER_PREFIX", "add_meter_routes"]

METER_PREFIX = "/meter/v1"
# What a caller may group its own usage by.
METER_GROUP_KEYS = ("model", "day")
# Where a key may travel in the query: read by server.auth, not by the endpoint.
_KEY_PARAMETERS = ("key", "$key")


async def _principal(request: web.Request) -> Principal:
    key = presented_key(request.headers, request.query)
    return await request.app[authenticator_key].authenticate(key)


async def my_usage(request: web.Request) -> web.Response:
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
    principal = await _principal(request)
    parse_query(request, NoQuery, ignore=_KEY_PARAMETERS)
    now = utcnow()
    async with request.app[sessionmaker_key]() as session:
        statuses = [
            await budgets.budget_status(session, row, now)
            for row in await budgets.budgets_for_principal(session, principal)
        ]
    return json_model(BudgetStatusList(statuses=statuses))


METER_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        f"{METER_PREFIX}/usage",
        my_usage,
        "The calling key's user's usage and cost",
        query=MeterUsageQuery,
        response=UsageReport,
        errors=(400,),
        security="virtualKey",
    ),
    Operation(
        "GET",
        f"{METER_PREFIX}/budget",
        my_budgets,
        "Status of every budget that applies to the calling key",
        response=BudgetStatusList,
        security="virtualKey",
    ),
)


def add_meter_routes(app: web.Application) -> None:
    for op in METER_OPERATIONS:
        app.router.add_route(op.method, op.path, op.handler)
