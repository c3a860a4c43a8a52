"""Budgets as the enforcer sees them, and what one call counts against each: pure.

A ``Budget`` is a ``storage.schema.BudgetRow`` made immutable and typed. Its
limit and every amount counted against it are integers in the budget's *unit*:
nano-dollars (1e-9 USD) for a USD limit, tokens for a token limit. Integers
keep the counters exact, in memory and in Redis (whose Lua numbers are doubles:
exact up to 2**53 nano-dollars, about nine million dollars per window).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..metering.records import Cost, Principal, Usage, UsageRecord
from ..storage.schema import BudgetRow
from .windows import Window, window_bounds

__all__ = [
    "CATEGORIES",
    "NANOS_PER_USD",
    "Budget",
    "BudgetIndex",
    "Unit",
    "applicable",
    "from_row",
    "usage_amount",
    "usd_to_nanos",
]

NANOS_PER_USD = Decimal(1_000_000_000)
# The token categories a budget may be restricted to (``BudgetRow.category``); a USD
# budget may be restricted to one of these or to grounding (a cost category).
CATEGORIES = ("input", "cached", "intermediate", "output", "thinking")
COST_CATEGORIES = (*CATEGORIES, "grounding")


class Unit(StrEnum):
    NANO_USD = "nano_usd"
    TOKENS = "tokens"


@dataclass(frozen=True, slots=True)
class Budget:
    id: int
    scope_kind: str  # "user" | "team" | "key" | "global"
    scope_name: str | None
    unit: Unit
    limit: int  # in ``unit``
    category: str | None  # one token (or, for USD, cost) category, or None for all billed
    window: Window
    zone: ZoneInfo
    enforce: bool

    @property
    def scope(self) -> str:
        """``user:alice``, ``team:research``, ``key:7`` or ``global``."""
        return "global" if self.scope_kind == "global" else f"{self.scope_kind}:{self.scope_name}"

    def bounds(self, at: datetime) -> tuple[datetime, datetime | None]:
        return window_bounds(self.window, self.zone, at)

    def matches(self, principal: Principal) -> bool:
        kind, name = self.scope_kind, self.scope_name
        if kind == "global":
            return True
        if kind == "user":
            return principal.user_name == name
        if kind == "team":
            return principal.team_name is not None and principal.team_name == name
        if kind == "key":
            return principal.key_id is not None and str(principal.key_id) == name
        return False


def usd_to_nanos(value: Decimal) -> int:
    """Dollars as nano-dollars, rounded up: a counter never holds less than was spent."""
    return int((value * NANOS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def from_row(row: BudgetRow, default_zone: str) -> Budget | None:
    """The budget a row describes, or None for a row the enforcer cannot use (logged
    by the caller): an unknown window, zone, scope or category, or no limit."""
    try:
        window = Window(row.window)
        zone = ZoneInfo(row.timezone or default_zone)
    except (ValueError, ZoneInfoNotFoundError):
        return None
    if row.scope_kind not in ("user", "team", "key", "global"):
        return None
    if row.scope_kind != "global" and not row.scope_name:
        return None
    if row.limit_usd is not None:
        unit, limit = Unit.NANO_USD, usd_to_nanos(row.limit_usd)
        category = row.category
        if category is not None and category not in COST_CATEGORIES:
            return None
    elif row.limit_tokens is not None:
        unit, limit = Unit.TOKENS, int(row.limit_tokens)
        category = row.category
        if category is not None and category not in CATEGORIES:
            return None
    else:
        return None
    return Budget(
        id=row.id,
        scope_kind=row.scope_kind,
        scope_name=row.scope_name,
        unit=unit,
        limit=limit,
        category=category,
        window=window,
        zone=zone,
        enforce=row.mode == "enforce",
    )


def applicable(budgets: Iterable[Budget], principal: Principal) -> list[Budget]:
    """The enforced budgets whose scope covers ``principal``, in id order."""
    return sorted((b for b in budgets if b.enforce and b.matches(principal)), key=lambda b: b.id)


def scope_keys(principal: Principal) -> list[tuple[str, str | None]]:
    """The (scope kind, scope name) pairs a budget covering ``principal`` can have."""
    keys: list[tuple[str, str | None]] = [("global", None), ("user", principal.user_name)]
    if principal.team_name is not None:
        keys.append(("team", principal.team_name))
    if principal.key_id is not None:
        keys.append(("key", str(principal.key_id)))
    return keys


class BudgetIndex:
    """Enforced budgets by scope: a call looks up its four scopes, not every budget.

    With ``enforced_only=False`` it holds every budget (what the engine counts, for
    the budget metrics).
    """

    __slots__ = ("_by_scope",)

    def __init__(self, budgets: Iterable[Budget], *, enforced_only: bool = True) -> None:
        by_scope: dict[tuple[str, str | None], list[Budget]] = {}
        for budget in budgets:
            if budget.enforce or not enforced_only:
                name = None if budget.scope_kind == "global" else budget.scope_name
                by_scope.setdefault((budget.scope_kind, name), []).append(budget)
        self._by_scope = by_scope

    def covering(self, principal: Principal) -> list[Budget]:
        """Same as ``applicable``: the (enforced) budgets covering ``principal``, by id."""
        found = [b for key in scope_keys(principal) for b in self._by_scope.get(key, ())]
        return sorted(found, key=lambda b: b.id)


def usage_amount(budget: Budget, usage: Usage, cost: Cost | None) -> int:
    """What a usage (and its cost) counts against ``budget``, in its unit.

    Tokens: the billed categories (input, which includes cached, plus intermediate,
    output and thinking), or the one category. USD: the cost, or the one cost
    category's part; an unpriced call (no catalog entry) counts zero, as it does in
    every report.
    """
    if budget.unit is Unit.NANO_USD:
        if cost is None:
            return 0
        value = cost.total if budget.category is None else getattr(cost, budget.category)
        return usd_to_nanos(value) if value is not None and value > 0 else 0
    if budget.category is None:
        return max(
            0,
            usage.input_tokens
            + usage.intermediate_tokens
            + usage.output_tokens
            + usage.thinking_tokens,
        )
    return max(0, int(getattr(usage, f"{budget.category}_tokens")))


def record_amount(budget: Budget, record: UsageRecord) -> int:
    return usage_amount(budget, record.usage, record.cost)
