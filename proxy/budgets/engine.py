"""Budget enforcement: admit a call against its budgets, settle it when it is recorded.

The engine sits on both ends of a billable call:

- ``admit`` (from ``server.admission``, before forwarding): the enforced budgets whose
  scope covers the caller are checked against this process's counters and, with
  ``redis_url`` set, against Redis in one atomic script; the call's estimate
  (``estimate``) is reserved on all of them, or the call is refused with 429
  ``RESOURCE_EXHAUSTED`` naming the budget, its window and its reset.
- ``settle`` (from ``metering.recorder``, when the record is finished): the
  reservation is replaced by what the record counts. A call that never yields a
  record (refused upstream before its head, a background interaction still
  pending) is ``release``\\ d to zero by the handler; its cost, if any, is settled
  by the record that bills it later.

Budgets are loaded from the database at start and every ``budget_refresh_seconds``
by a background task, with each enforced budget's spend in its current window
(``SUM`` over the running totals of ``usage_rollups``, per quarter hour, which
triggers on ``usage_records`` keep): admission never waits on the SQL database. Redis
settlements go through a bounded queue drained by one task, so the recorder never
awaits either. ``docs/budgets.md`` gives the model and the overshoot bounds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..errors import ResourceExhausted, ServiceUnavailable
from ..metering.records import Principal, UsageRecord
from ..settings import RedisFailure, Settings
from ..storage.schema import (
    BudgetRow,
    SpendTable,
    Team,
    User,
    rollup_table,
    time_column,
)
from .counters import CellKey, Entry, LocalCounters, RedisCounters
from .estimate import Estimate
from .rules import (
    NANOS_PER_USD,
    Budget,
    BudgetIndex,
    Unit,
    from_row,
    record_amount,
    usd_to_nanos,
)

__all__ = [
    "PACE",
    "BudgetEngine",
    "BudgetMetrics",
    "BudgetView",
    "Reservation",
    "build_budget_metrics",
    "paced",
    "spend_column",
    "spend_query",
]

log = logging.getLogger("gemini_meter.budgets")

# Provisional records remembered per interaction, for the terminal record to adjust.
_PROVISIONAL_LIMIT = 10_000
# Redis settlements waiting to be sent; beyond it they are dropped and counted.
_SETTLE_QUEUE_LIMIT = 10_000
_SETTLE_BATCH = 500
# What Retry-After says for a ``total`` budget, which never resets: a day, so a
# client that honours it does not hammer, and the message says to raise the limit.
TOTAL_RETRY_AFTER = 86_400

_REDIS_WARN_INTERVAL = 10.0  # seconds
# How long admissions go without asking Redis after it failed to answer.
_REDIS_RETRY_AFTER = 1.0  # seconds

# A background pass that reads spend back from the database (a refresh, an alert pass)
# waits at least this many times its own duration before the next: as windows fill up
# and a pass takes longer, it keeps to a fifth of the time instead of running back to
# back (docs/benchmarks.md, bench_budgets).
PACE = 4


def paced(gap: float, took: float) -> float:
    """The wait before the next pass: ``gap``, or ``PACE`` times the last pass's ``took``
    seconds if that is longer."""
    return max(gap, PACE * took)


# The scope kinds, the one label of the refusal counter (budget ids are unbounded).
SCOPE_KINDS = ("user", "team", "key", "global")


@dataclass(frozen=True, slots=True)
class BudgetMetrics:
    refusals: Counter
    redis_errors: Counter
    settlements_dropped: Counter


def build_budget_metrics(registry: CollectorRegistry) -> BudgetMetrics:
    return BudgetMetrics(
        refusals=Counter(
            "gemini_meter_budget_refusals_total",
            "Calls refused before forwarding because an enforced budget was reached, "
            "by the scope kind of the budget (user, team, key or global).",
            ["scope"],
            registry=registry,
        ),
        redis_errors=Counter(
            "gemini_meter_budget_redis_errors_total",
            "Budget counter operations Redis did not answer, by operation "
            "(reserve, settle, seed); reservations then fall back as budget_redis_failure says.",
            ["operation"],
            registry=registry,
        ),
        settlements_dropped=Counter(
            "gemini_meter_budget_settlements_dropped_total",
            "Budget settlements dropped because the queue to Redis was full.",
            registry=registry,
        ),
    )


@dataclass(frozen=True, slots=True)
class BudgetView:
    """A budget's spend in its current window as this process counts it (for metrics)."""

    budget: Budget
    spend: int  # in the budget's unit
    end: datetime | None  # None: a total budget, which never resets


@dataclass(slots=True)
class Reservation:
    """What one admitted call holds against its budgets until it is settled."""

    entries: tuple[Entry, ...]
    in_redis: bool
    done: bool = field(default=False)


def _iso(at: datetime, budget: Budget) -> str:
    return at.astimezone(budget.zone).isoformat(timespec="seconds")


def _limit_text(budget: Budget) -> str:
    if budget.unit is Unit.NANO_USD:
        usd = (Decimal(budget.limit) / NANOS_PER_USD).normalize()
        return f"{usd:f} USD"
    what = f"{budget.category} tokens" if budget.category else "tokens"
    return f"{budget.limit} {what}"


def refusal(entry: Entry, now: datetime) -> ResourceExhausted:
    """The 429 for a call ``entry``'s budget refuses: names it, its window and its reset."""
    budget = entry.budget
    head = (
        f"Budget {budget.id} ({budget.scope}, {budget.window.value}, limit "
        f"{_limit_text(budget)}) is exhausted"
    )
    if entry.end is None:
        return ResourceExhausted(
            f"{head} for its total window, which never resets; ask for its limit to be raised.",
            headers={"Retry-After": str(TOTAL_RETRY_AFTER)},
        )
    seconds = max(1, math.ceil((entry.end - now).total_seconds()))
    return ResourceExhausted(
        f"{head} for the window starting {_iso(entry.start, budget)}; it resets at "
        f"{_iso(entry.end, budget)} (in {seconds} s).",
        headers={"Retry-After": str(seconds)},
    )


def spend_column(usd: bool, category: str | None, table: SpendTable) -> Any:
    """What a budget counts of each row, as ``rules.usage_amount`` counts a record: the
    cost or one category's, in USD; else the billed tokens (input, which includes
    cached, plus intermediate, output and thinking) or one category's."""
    if usd:
        return table.cost_usd if category is None else getattr(table, f"cost_{category}_usd")
    if category is not None:
        return getattr(table, f"{category}_tokens")
    return (
        table.input_tokens + table.intermediate_tokens + table.output_tokens + table.thinking_tokens
    )


def spend_query(
    scope_kind: str,
    scope_name: str | None,
    start: datetime,
    end: datetime | None,
    table: SpendTable,
) -> Callable[..., Select[Any]]:
    """A query of the given columns over a scope's rows in ``[start, end)``: a user's or
    a team's by name, a key's by id, or all of them (``global``). Raises ``ValueError``
    for a scope no budget can have."""
    at = time_column(table)
    conditions: list[Any] = [at >= start]
    if end is not None:
        conditions.append(at < end)
    join: tuple[Any, Any] | None = None
    if scope_kind == "user":
        join = (User, table.user_id == User.id)
        conditions.append(User.name == scope_name)
    elif scope_kind == "team":
        join = (Team, table.team_id == Team.id)
        conditions.append(Team.name == scope_name)
    elif scope_kind == "key":
        if not (scope_name or "").isdigit():
            raise ValueError(f"key scope {scope_name!r} is not a key id")
        conditions.append(table.key_id == int(scope_name or ""))
    elif scope_kind != "global":
        raise ValueError(f"unknown scope kind {scope_kind!r}")

    def query(*columns: Any) -> Select[Any]:
        selected = select(*columns).select_from(table)
        if join is not None:
            selected = selected.join(*join)
        return selected.where(*conditions)

    return query


async def window_total(
    session: AsyncSession, budget: Budget, start: datetime, end: datetime | None
) -> int:
    """The database's spend for ``budget`` in ``[start, end)``, in the budget's unit: read
    from the quarter-hour rollups (``storage.schema.UsageRollup``), which a window's bounds
    always fall on, or summed over the records for bounds that do not."""
    if budget.scope_kind == "key" and not (budget.scope_name or "").isdigit():
        return 0
    table = rollup_table(start, end)
    usd = budget.unit is Unit.NANO_USD
    query = spend_query(budget.scope_kind, budget.scope_name, start, end, table)
    total = (
        await session.execute(query(func.sum(spend_column(usd, budget.category, table))))
    ).scalar()
    if total is None:
        return 0
    if usd:
        return usd_to_nanos(Decimal(total))
    return int(total)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class BudgetEngine:
    """Budgets, their counters, and the admission and settlement of calls against them."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        metrics: BudgetMetrics,
        *,
        redis_client: Any = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._metrics = metrics
        self._clock = clock
        self._budgets: tuple[Budget, ...] = ()
        self._index = BudgetIndex(())
        # Every budget, enforced or not: each one's spend is counted (and exported as a
        # metric); only the enforced ones admit or refuse calls.
        self._counted = BudgetIndex(())
        self._local = LocalCounters()
        self._redis = (
            RedisCounters(redis_client, settings.redis_prefix) if redis_client is not None else None
        )
        self._redis_client = redis_client
        self._provisional: OrderedDict[str, dict[int, tuple[datetime, int]]] = OrderedDict()
        self._settlements: asyncio.Queue[tuple[CellKey, datetime | None, int]] = asyncio.Queue(
            _SETTLE_QUEUE_LIMIT
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._unusable: set[int] = set()
        self._redis_warned = -math.inf
        # After Redis fails to answer, admissions skip it until then (monotonic
        # seconds): an outage must not add a timeout to every call.
        self._redis_skip_until = -math.inf
        self._refreshing = asyncio.Lock()

    # --- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load budgets and their spend (awaited: the app serves once they are known).

        A database that does not answer now does not stop the proxy (its readiness
        check says so): budgets are loaded by the first refresh that succeeds.
        """
        try:
            await self.refresh()
        except Exception as exc:
            log.error("budgets not loaded at start (retried every refresh): %s", type(exc).__name__)
        self._tasks.append(asyncio.create_task(self._refresh_loop()))
        if self._redis is not None:
            self._tasks.append(asyncio.create_task(self._settle_loop()))

    async def close(self) -> None:
        if self._redis is not None:
            # Settlements still queued go out (briefly) before the connection closes.
            try:
                async with asyncio.timeout(self._settings.redis_timeout_seconds * 4):
                    await self.settled()
            except Exception as exc:
                log.warning("budget settlements lost at shutdown: %s", type(exc).__name__)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._redis_client is not None:
            await self._redis_client.aclose()

    @property
    def budgets(self) -> tuple[Budget, ...]:
        return self._budgets

    def views(self) -> list[BudgetView]:
        """Each budget's spend in its current window, from memory (never the database)."""
        now = self._clock()
        found = []
        for budget in self._budgets:
            start, end = budget.bounds(now)
            found.append(BudgetView(budget, self._local.spend((budget.id, start)), end))
        return found

    @property
    def local(self) -> LocalCounters:
        return self._local

    @property
    def redis(self) -> RedisCounters | None:
        return self._redis

    # --- refresh ----------------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        took = 0.0
        while True:
            await asyncio.sleep(paced(self._settings.budget_refresh_seconds, took))
            began = time.monotonic()
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Enforcement goes on with the last budgets and spend it knew.
                log.warning("budget refresh failed: %s", type(exc).__name__)
            took = time.monotonic() - began

    async def refresh(self) -> None:
        """Reload budgets and each one's spend in its current window."""
        async with self._refreshing:  # one at a time: a snapshot's bookkeeping is shared
            await self._refresh()

    async def _refresh(self) -> None:
        now = self._clock()
        self._local.begin_snapshot()
        totals: list[tuple[CellKey, datetime | None, int]] = []
        async with self._sessionmaker() as session:
            rows = (await session.execute(select(BudgetRow).order_by(BudgetRow.id))).scalars()
            budgets: list[Budget] = []
            for row in rows:
                budget = from_row(row, self._settings.budget_timezone)
                if budget is None:
                    if row.id not in self._unusable:
                        self._unusable.add(row.id)
                        log.warning("budget %d is not usable as stored; it is ignored", row.id)
                    continue
                budgets.append(budget)
            enforced: list[tuple[CellKey, datetime | None, int]] = []
            for budget in budgets:
                start, end = budget.bounds(now)
                total = await window_total(session, budget, start, end)
                totals.append(((budget.id, start), end, total))
                if budget.enforce:
                    enforced.append(((budget.id, start), end, total))
        for key, end, total in totals:
            self._local.apply_snapshot(key, end, total)
        self._budgets = tuple(budgets)
        self._index = BudgetIndex(budgets)
        self._counted = BudgetIndex(budgets, enforced_only=False)
        self._local.prune(now)
        # Redis shares the counters admission reads: the enforced budgets' only.
        if self._redis is not None and enforced:
            try:
                async with asyncio.timeout(self._settings.redis_timeout_seconds * 4):
                    seeded = await self._redis.seed(enforced)
                if seeded:
                    log.info("seeded %d budget counters in Redis from the database", seeded)
            except Exception as exc:
                self._metrics.redis_errors.labels("seed").inc()
                log.warning("budget counters not seeded in Redis: %s", type(exc).__name__)

    def _warn_redis(self, operation: str, exc: BaseException) -> None:
        # Once per interval, not once per call: an outage must not flood the log
        # (the metric counts every failure).
        now = time.monotonic()
        if now - self._redis_warned >= _REDIS_WARN_INTERVAL:
            self._redis_warned = now
            log.warning(
                "Redis did not answer (%s: %s); budgets fail %s",
                operation,
                type(exc).__name__,
                self._settings.budget_redis_failure.value,
            )

    # --- admission --------------------------------------------------------------------------

    async def admit(
        self, principal: Principal, estimate: Callable[[], Estimate]
    ) -> Reservation | None:
        """Reserve ``estimate()`` on every enforced budget covering ``principal``.

        Returns the reservation (None when no enforced budget applies); raises
        ``ResourceExhausted`` when one would be broken, ``ServiceUnavailable`` when
        Redis does not answer and ``budget_redis_failure`` is ``closed``.
        """
        budgets = self._index.covering(principal)
        if not budgets:
            return None
        now = self._clock()
        guess = estimate()
        entries = []
        for budget in budgets:
            start, end = budget.bounds(now)
            entries.append(Entry(budget, start, end, guess.amount(budget)))
        # This process's view first: it needs no round trip, and after a Redis restart
        # (until re-seeded) it still holds the database's spend as of the last refresh.
        refused = self._local.refused(entries)
        in_redis = False
        if refused is None and self._redis is not None:
            failure: BaseException | None = None
            if time.monotonic() < self._redis_skip_until:
                failure = ConnectionError("Redis failed moments ago")
            else:
                try:
                    async with asyncio.timeout(self._settings.redis_timeout_seconds):
                        refused = await self._redis.reserve(entries)
                    in_redis = refused is None
                except Exception as exc:
                    failure = exc
                    self._redis_skip_until = time.monotonic() + _REDIS_RETRY_AFTER
                    self._metrics.redis_errors.labels("reserve").inc()
                    self._warn_redis("reserve", exc)
            if failure is not None:
                if self._settings.budget_redis_failure is RedisFailure.CLOSED:
                    raise ServiceUnavailable(
                        "Gemini Meter cannot check the budgets that apply to this call right "
                        "now; retry shortly."
                    ) from failure
                # Fail open: this process's view (database + own calls) decides alone.
                refused = self._local.refused(entries)
        if refused is not None:
            self._metrics.refusals.labels(refused.budget.scope_kind).inc()
            raise refusal(refused, now)
        self._local.reserve(entries)
        return Reservation(tuple(entries), in_redis=in_redis)

    def exhausted(self, principal: Principal) -> ResourceExhausted | None:
        """The refusal a call of ``principal`` estimated at nothing would get now.

        From this process's counters alone (never Redis, never awaits): for work
        already admitted that runs on, a Live session, which is closed once its
        settled usage has used a budget up. None while every budget has room.
        """
        now = self._clock()
        entries = [
            Entry(budget, *budget.bounds(now), 0) for budget in self._index.covering(principal)
        ]
        refused = self._local.refused(entries)
        return None if refused is None else refusal(refused, now)

    # --- settlement -------------------------------------------------------------------------

    def release(self, reservation: Reservation | None) -> None:
        """Give a reservation back (the call yielded no record); idempotent."""
        if reservation is None or reservation.done:
            return
        reservation.done = True
        self._local.unreserve(reservation.entries)
        if reservation.in_redis:
            for entry in reservation.entries:
                self._queue(entry.key, entry.end, -entry.amount)

    def settle(self, record: UsageRecord, reservation: Reservation | None) -> None:
        """Replace ``reservation`` by what ``record`` counts; never awaits, never raises."""
        try:
            self.release(reservation)
            self._count(record)
        except Exception:
            log.exception("settling a record against its budgets failed")

    def _count(self, record: UsageRecord) -> None:
        budgets = self._counted.covering(record.principal)
        # A provisional record is replaced in the database by the next record of its
        # interaction (or, without one, of its request: a Live session's): the counters
        # take the difference, not both.
        iid = record.interaction_id or record.request_id
        before = self._provisional.pop(iid, {})
        counted: dict[int, tuple[datetime, int]] = {}
        for budget in budgets:
            start, end = budget.bounds(record.created_at)
            amount = record_amount(budget, record)
            previous = before.get(budget.id)
            delta = amount - previous[1] if previous and previous[0] == start else amount
            counted[budget.id] = (start, amount)
            if delta:
                self._local.settle((budget.id, start), end, delta)
                if self._redis is not None and budget.enforce:
                    self._queue((budget.id, start), end, delta)
        if record.provisional:
            self._provisional[iid] = counted
            while len(self._provisional) > _PROVISIONAL_LIMIT:
                self._provisional.popitem(last=False)

    def _queue(self, key: CellKey, end: datetime | None, delta: int) -> None:
        try:
            self._settlements.put_nowait((key, end, delta))
        except asyncio.QueueFull:
            self._metrics.settlements_dropped.inc()
            log.warning("budget settlement dropped: the queue to Redis is full")

    async def _settle_loop(self) -> None:
        while True:
            batch = [await self._settlements.get(), *self._take(_SETTLE_BATCH - 1)]
            try:
                await self._send(batch)
            finally:
                for _ in batch:
                    self._settlements.task_done()

    def _take(self, limit: int) -> list[tuple[CellKey, datetime | None, int]]:
        taken: list[tuple[CellKey, datetime | None, int]] = []
        while len(taken) < limit and not self._settlements.empty():
            taken.append(self._settlements.get_nowait())
        return taken

    async def _send(self, batch: Sequence[tuple[CellKey, datetime | None, int]]) -> None:
        assert self._redis is not None
        merged: dict[CellKey, tuple[datetime | None, int]] = {}
        for key, end, delta in batch:
            merged[key] = (end, merged.get(key, (end, 0))[1] + delta)
        deltas = [(key, end, delta) for key, (end, delta) in merged.items() if delta]
        if not deltas:
            return
        try:
            async with asyncio.timeout(self._settings.redis_timeout_seconds * 4):
                await self._redis.adjust(deltas)
        except Exception as exc:
            # Lost: that window's shared counter is off by these amounts until it
            # ends (the local view and the next refresh's database total still hold).
            self._metrics.redis_errors.labels("settle").inc()
            self._warn_redis("settle", exc)

    async def settled(self) -> None:
        """Wait until every queued Redis settlement is sent (tests, shutdown)."""
        if self._redis is not None:
            await self._settlements.join()
