"""Budgets in the database: create, list, read, replace, delete, and spend in a window.

Like every ``storage`` helper these take the session first and never commit (see
``storage.accounts``). A budget arrives as a validated ``budgets.model.BudgetSpec``;
its webhook URL is sealed under the server secret (``server.keys.seal``) before it is
stored, and a stored budget is shown as a ``budgets.model.Budget``, which says only
whether a webhook is set.

``budget_status`` sums the budget's measure over the usage records of its scope in the
current window (``budgets.windows.window_bounds``) in SQL, exactly like
``storage.reports``; the admin API, ``GET /meter/v1/budget`` and ``gemini-meter budgets
status`` all read it. It is a report, not admission: enforcement never waits on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, ColumnElement, delete, func, or_, select
from sqlalchemy import cast as cast_
from sqlalchemy.ext.asyncio import AsyncSession

from ..budgets.model import (
    Budget,
    BudgetMode,
    BudgetSpec,
    BudgetStatus,
    Scope,
    WebhookFormat,
    threshold_text,
)
from ..budgets.windows import Window, window_bounds
from ..metering.records import Principal
from ..server.keys import seal, unseal
from .schema import BudgetRow, Team, UsageRow, User, utcnow

__all__ = [
    "budget_status",
    "budget_view",
    "budgets_for_principal",
    "create_budget",
    "delete_budget",
    "get_budget",
    "list_budgets",
    "update_budget",
    "webhook_of",
]

_RATIO_QUANTUM = Decimal("0.000001")


def _apply(row: BudgetRow, spec: BudgetSpec, secret: bytes) -> None:
    scope = spec.parsed_scope
    row.scope_kind = scope.kind
    row.scope_name = scope.name
    row.limit_usd = spec.limit_usd
    row.limit_tokens = spec.limit_tokens
    row.category = spec.category
    row.window = spec.window.value
    row.timezone = spec.timezone
    row.thresholds = [threshold_text(t) for t in spec.thresholds]
    row.mode = spec.mode.value
    row.webhook_sealed = seal(secret, spec.webhook) if spec.webhook is not None else None
    row.webhook_format = spec.webhook_format.value


async def create_budget(session: AsyncSession, secret: bytes, spec: BudgetSpec) -> BudgetRow:
    """Store a new budget; its id is set on return."""
    now = utcnow()
    row = BudgetRow(created_at=now, updated_at=now)
    _apply(row, spec, secret)
    session.add(row)
    await session.flush()
    return row


async def list_budgets(session: AsyncSession) -> list[BudgetRow]:
    """Every budget, by id."""
    return list(await session.scalars(select(BudgetRow).order_by(BudgetRow.id)))


async def get_budget(session: AsyncSession, budget_id: int) -> BudgetRow | None:
    return await session.get(BudgetRow, budget_id)


async def update_budget(
    session: AsyncSession, secret: bytes, budget_id: int, spec: BudgetSpec
) -> BudgetRow | None:
    """Replace every setting of a budget (a webhook left out is removed); None if absent."""
    row = await session.get(BudgetRow, budget_id)
    if row is None:
        return None
    _apply(row, spec, secret)
    row.updated_at = utcnow()
    await session.flush()
    return row


async def delete_budget(session: AsyncSession, budget_id: int) -> bool:
    """Delete a budget and (by cascade) its alert outbox rows; False if absent."""
    row = await session.get(BudgetRow, budget_id)
    if row is None:
        return False
    await session.execute(delete(BudgetRow).where(BudgetRow.id == budget_id))
    return True


async def budgets_for_principal(session: AsyncSession, principal: Principal) -> list[BudgetRow]:
    """Every budget that applies to a call by ``principal``: its user, team, key, global."""
    scopes: list[ColumnElement[bool]] = [
        BudgetRow.scope_kind == "global",
        (BudgetRow.scope_kind == "user") & (BudgetRow.scope_name == principal.user_name),
    ]
    if principal.team_name is not None:
        scopes.append(
            (BudgetRow.scope_kind == "team") & (BudgetRow.scope_name == principal.team_name)
        )
    if principal.key_id is not None:
        scopes.append(
            (BudgetRow.scope_kind == "key") & (BudgetRow.scope_name == str(principal.key_id))
        )
    query = select(BudgetRow).where(or_(*scopes)).order_by(BudgetRow.id)
    return list(await session.scalars(query))


def webhook_of(row: BudgetRow, secret: bytes) -> str | None:
    """The budget's webhook URL, unsealed (for the alert sender only; never shown)."""
    return unseal(secret, row.webhook_sealed) if row.webhook_sealed is not None else None


def budget_view(row: BudgetRow) -> Budget:
    """A stored budget as shown by the API and the CLI."""
    scope = Scope(kind=row.scope_kind, name=row.scope_name)
    return Budget(
        id=row.id,
        scope=str(scope),
        limit_usd=row.limit_usd,
        limit_tokens=row.limit_tokens,
        category=row.category,
        window=Window(row.window),
        timezone=row.timezone,
        thresholds=[Decimal(t) for t in row.thresholds],
        mode=BudgetMode(row.mode),
        webhook_configured=row.webhook_sealed is not None,
        webhook_format=WebhookFormat(row.webhook_format),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _measure(row: BudgetRow) -> ColumnElement[Any]:
    if row.limit_tokens is not None:
        column = f"{row.category}_tokens" if row.category else "total_tokens"
        # PostgreSQL's SUM(bigint) is NUMERIC; the cast keeps ints ints everywhere.
        return cast_(func.coalesce(func.sum(getattr(UsageRow, column)), 0), BigInteger)
    column = f"cost_{row.category}_usd" if row.category else "cost_usd"
    return func.sum(getattr(UsageRow, column))


@dataclass(frozen=True, slots=True)
class _Window:
    start: datetime
    end: datetime | None


async def _spend(session: AsyncSession, row: BudgetRow, window: _Window) -> Decimal:
    query = select(_measure(row)).select_from(UsageRow).where(UsageRow.created_at >= window.start)
    if window.end is not None:
        query = query.where(UsageRow.created_at < window.end)
    if row.scope_kind == "user":
        query = query.join(User, UsageRow.user_id == User.id).where(User.name == row.scope_name)
    elif row.scope_kind == "team":
        query = query.join(Team, UsageRow.team_id == Team.id).where(Team.name == row.scope_name)
    elif row.scope_kind == "key":
        query = query.where(UsageRow.key_id == int(row.scope_name or 0))
    value = await session.scalar(query)
    # SUM over no rows (or only unpriced ones) is NULL: nothing spent.
    return Decimal(value) if value is not None else Decimal(0)


async def budget_status(session: AsyncSession, row: BudgetRow, now: datetime) -> BudgetStatus:
    """The budget's spend in the window containing ``now`` (aware), against its limit."""
    start, end = window_bounds(Window(row.window), ZoneInfo(row.timezone), now)
    spend = await _spend(session, row, _Window(start, end))
    limit = Decimal(row.limit_tokens) if row.limit_tokens is not None else row.limit_usd
    assert limit is not None and limit > 0  # BudgetSpec guarantees exactly one, positive
    ratio = (spend / limit).quantize(_RATIO_QUANTUM, rounding=ROUND_FLOOR)
    reached = [Decimal(t) for t in row.thresholds if spend >= Decimal(t) * limit]
    return BudgetStatus(
        budget=budget_view(row),
        unit="tokens" if row.limit_tokens is not None else "usd",
        window_start=start,
        resets_at=end,
        spend=spend,
        limit=limit,
        remaining=max(limit - spend, Decimal(0)),
        ratio=ratio,
        thresholds_reached=reached,
        exceeded=spend >= limit,
    )
