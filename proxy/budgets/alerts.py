"""Budget alerts: evaluated from the database, persisted in an outbox, then delivered.

Nothing here runs on the request path. Two background tasks, started by a cleanup
context of ``server.app``, do the work in every proxy process:

- ``AlertEvaluator`` reads every budget, sums the spend of its current window
  (``budgets.windows``) from the quarter-hour running totals (``usage_rollups``; the
  records themselves only for an alert's split), and for each threshold reached inserts a
  ``budget_alerts`` row with ``INSERT ... ON CONFLICT DO NOTHING`` on (budget, window
  start, threshold). That unique key, not any memory of this process, is what makes an
  alert exactly once per (budget, window, threshold): across restarts and across
  processes evaluating the same budgets. It runs every ``interval`` seconds, and sooner
  (debounced) when the usage writer has committed new rows. Provisional records (the
  partial usage of an interaction cut before it ended) count: they are the best known
  spend, and their terminal record only ever adds to them.
- ``AlertDelivery`` claims due outbox rows (a lease in ``next_attempt_at``, taken with
  ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), POSTs each to its budget's webhook (unsealed
  under the server secret) as generic JSON or as a Slack ``{"text": ...}`` body, and marks
  it sent. A failed attempt is retried with capped exponential backoff, with no maximum
  number of attempts: an alert is never given up on, ``last_error`` and the failure
  counter say why it is late. A budget without a webhook has its alerts delivered to the
  log.

The one at-least-once corner: a process that dies after the receiver got the POST and
before the row is marked sent leaves the row to be sent again once its lease ends. Every
POST carries ``Idempotency-Key`` and ``X-Gemini-Meter-Alert-Id`` (the same value, made of
the alert's and the budget's ids) so that the receiver can drop the repeat.

The webhook URL is a credential (Slack's carry their secret in the path): it is never
logged, stored unsealed, or quoted in an error; errors name the "webhook of budget #N".

The pure parts (thresholds reached, the payload, the Slack text, the backoff) are plain
functions, tested without a database or a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import aiohttp
from sqlalchemy import BigInteger, ColumnElement, Select, and_, func, or_, select, update
from sqlalchemy import cast as cast_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..server.keys import unseal
from ..storage.schema import BudgetAlert, BudgetRow, SpendTable, UsageRow, rollup_table, utcnow
from ..storage.writes import insert_ignoring, table_of
from .engine import paced, spend_column, spend_query
from .windows import Window, window_bounds

__all__ = [
    "DEFAULT_THRESHOLDS",
    "AlertDelivery",
    "AlertEvaluator",
    "Budget",
    "Spend",
    "alert_id_header",
    "backoff_seconds",
    "build_payload",
    "budget_spend",
    "budget_total",
    "evaluate_budget",
    "normalize_threshold",
    "reached_thresholds",
    "slack_text",
    "webhook_body",
    "windows_to_check",
]

log = logging.getLogger("gemini_meter.alerts")

DEFAULT_THRESHOLDS = ("0.5", "0.8", "1")

# Cost split columns, in the order the payload lists them, with the words people read.
_COST_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("input", "cost_input_usd"),
    ("cached", "cost_cached_usd"),
    ("intermediate", "cost_intermediate_usd"),
    ("output", "cost_output_usd"),
    ("thinking", "cost_thinking_usd"),
    ("grounding", "cost_grounding_usd"),
)
# Token categories as billed: input here is the uncached part of the prompt, so the five
# add up to what was billed (cached is a subset of input_tokens).
_TOKEN_CATEGORIES = ("input", "cached", "intermediate", "output", "thinking")
_TOKEN_COLUMNS = {
    "input": "input_tokens",
    "cached": "cached_tokens",
    "intermediate": "intermediate_tokens",
    "output": "output_tokens",
    "thinking": "thinking_tokens",
}
_LABELS = {
    "input": "Input",
    "cached": "Cached input",
    "intermediate": "Intermediate (code execution)",
    "output": "Output",
    "thinking": "Thinking",
    "grounding": "Grounding (search)",
}
_TOP_MODELS = 3
# How long after a window ends it is still evaluated: records of its last moments may be
# written late (the writer's batching, a journal replayed after a crash).
LATE_GRACE = timedelta(hours=1)
_PERCENT = Decimal(100)


# ------------------------------------------------------------------- the budget


@dataclass(frozen=True, slots=True)
class Budget:
    """What alerting needs of a ``BudgetRow``."""

    id: int
    scope_kind: str  # "user" | "team" | "key" | "global"
    scope_name: str | None
    limit_usd: Decimal | None
    limit_tokens: int | None
    category: str | None
    window: Window
    timezone: str
    thresholds: tuple[str, ...]
    mode: str
    webhook_sealed: str | None = None
    webhook_format: str = "json"

    @classmethod
    def from_row(cls, row: BudgetRow) -> Budget:
        return cls(
            id=row.id,
            scope_kind=row.scope_kind,
            scope_name=row.scope_name,
            limit_usd=row.limit_usd,
            limit_tokens=row.limit_tokens,
            category=row.category,
            window=Window(row.window),
            timezone=row.timezone,
            thresholds=tuple(row.thresholds or DEFAULT_THRESHOLDS),
            mode=row.mode,
            webhook_sealed=row.webhook_sealed,
            webhook_format=row.webhook_format,
        )

    @property
    def scope(self) -> str:
        return "global" if self.scope_kind == "global" else f"{self.scope_kind}:{self.scope_name}"

    @property
    def unit(self) -> str:
        return "USD" if self.limit_usd is not None else "tokens"

    @property
    def limit(self) -> Decimal:
        if self.limit_usd is not None:
            return self.limit_usd
        if self.limit_tokens is None:
            raise ValueError(f"budget #{self.id} has no limit")
        return Decimal(self.limit_tokens)


@dataclass(frozen=True, slots=True)
class Spend:
    """A budget's spend in one window, and what made it up (USD or tokens)."""

    total: Decimal
    # category -> amount, in the budget's unit (cost categories for USD, token ones else)
    categories: dict[str, Decimal] = field(default_factory=dict)
    # model -> amount, every model that spent in the window (None: no model recorded)
    models: dict[str | None, Decimal] = field(default_factory=dict)


# ------------------------------------------------------------------ pure logic


def normalize_threshold(value: str | Decimal | float) -> str:
    """A threshold as the outbox stores it: ``"0.5"``, ``"0.8"``, ``"1"``.

    Normalised so that an edit from ``"0.50"`` to ``"0.5"`` is the same threshold and
    does not alert again. Refuses what is not a positive finite number.
    """
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"threshold {value!r} is not a number") from exc
    if not number.is_finite() or number <= 0:
        raise ValueError(f"threshold {value!r} must be a positive number")
    text = format(number.normalize(), "f")
    return text


def reached_thresholds(spend: Decimal, limit: Decimal, thresholds: Sequence[str]) -> list[str]:
    """The thresholds (normalised, ascending) that ``spend`` has reached: ``spend >= t * limit``.

    Exact decimal arithmetic, so 8 of 10 reaches 0.8 exactly. A zero limit is reached by
    any spend, even none (it allows nothing).
    """
    reached = {normalize_threshold(t) for t in thresholds if spend >= Decimal(str(t)) * limit}
    return sorted(reached, key=Decimal)


def backoff_seconds(attempts: int, initial: float, cap: float) -> float:
    """The wait after ``attempts`` failed attempts: ``initial * 2**(attempts-1)``, capped."""
    if attempts <= 0:
        return 0.0
    # min() before the power would overflow on a row retried for months.
    exponent = min(attempts - 1, 62)
    return float(min(initial * math.pow(2, exponent), cap))


def alert_id_header(alert_id: int, budget_id: int) -> str:
    """The value of ``Idempotency-Key`` / ``X-Gemini-Meter-Alert-Id`` for one alert."""
    return f"gemini-meter-alert-{budget_id}-{alert_id}"


def _shares(amounts: Mapping[Any, Decimal], total: Decimal) -> dict[Any, Decimal]:
    if total <= 0:
        return {k: Decimal(0) for k in amounts}
    return {k: v / total for k, v in amounts.items()}


def _share_text(share: Decimal) -> str:
    return f"{(share * _PERCENT).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)}%"


def _exact(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


def _amount_text(value: Decimal, unit: str) -> str:
    """Money or tokens for people: ``$8.12`` (or ``$0.000015`` below a cent), ``1,234``."""
    if unit == "USD":
        places = (
            Decimal("0.01") if value == 0 or abs(value) >= Decimal("0.01") else Decimal("0.000001")
        )
        return f"${value.quantize(places, rounding=ROUND_HALF_UP):,f}"
    return f"{int(value):,}"


def _threshold_text(threshold: str) -> str:
    return f"{format((Decimal(threshold) * _PERCENT).normalize(), 'f')}%"


def build_payload(
    budget: Budget,
    *,
    threshold: str,
    spend: Spend,
    window_start: datetime,
    window_end: datetime | None,
    at: datetime,
) -> dict[str, Any]:
    """The alert as stored in the outbox and sent as generic JSON (without its id).

    Amounts are exact decimal strings; shares are fractions of the window's spend as
    decimal strings rounded to 4 places; ``text`` is the one-paragraph summary that the
    Slack body carries (and the log line).
    """
    limit = budget.limit
    fraction = spend.total / limit if limit > 0 else Decimal(1)
    category_shares = _shares(spend.categories, spend.total)
    model_shares = _shares(spend.models, spend.total)
    top_models = sorted(
        spend.models.items(), key=lambda item: (-item[1], item[0] is None, item[0] or "")
    )[:_TOP_MODELS]
    categories = sorted(spend.categories.items(), key=lambda item: -item[1])
    quantum = Decimal("0.0001")
    payload: dict[str, Any] = {
        "type": "gemini_meter.budget_alert",
        "budget_id": budget.id,
        "scope": budget.scope,
        "mode": budget.mode,
        "unit": budget.unit,
        "category": budget.category,
        "spend": _exact(spend.total),
        "limit": _exact(limit),
        "fraction": _exact(fraction.quantize(quantum, rounding=ROUND_FLOOR)),
        "threshold": threshold,
        "window": {
            "name": budget.window.value,
            "zone": budget.timezone,
            "start": window_start.isoformat(),
            "end": window_end.isoformat() if window_end is not None else None,
        },
        "top_models": [
            {
                "model": model,
                "spend": _exact(amount),
                "share": _exact(model_shares[model].quantize(quantum, rounding=ROUND_HALF_EVEN)),
            }
            for model, amount in top_models
        ],
        "categories": [
            {
                "category": name,
                "spend": _exact(amount),
                "share": _exact(category_shares[name].quantize(quantum, rounding=ROUND_HALF_EVEN)),
            }
            for name, amount in categories
            if amount
        ],
        "evaluated_at": at.isoformat(),
    }
    payload["text"] = slack_text(payload)
    return payload


def slack_text(payload: Mapping[str, Any]) -> str:
    """The alert in one paragraph, from a ``build_payload`` payload.

    For example: "Budget #3 (team:research, monthly, Europe/Berlin): $8.12 of $10.00
    (81%) — crossed 80%. Top models: gemini-3.5-flash 90%, gemini-2.5-pro 10%.
    Intermediate (code execution) tokens made 61% of the spend. Resets
    2026-12-01T00:00+01:00."
    """
    unit = payload["unit"]
    window = payload["window"]
    spend, limit = Decimal(payload["spend"]), Decimal(payload["limit"])
    percent = (Decimal(payload["fraction"]) * _PERCENT).quantize(Decimal(1), rounding=ROUND_FLOOR)
    of_what = ""
    if unit == "tokens":
        of_what = f" {payload['category']} tokens" if payload.get("category") else " tokens"
    parts = [
        f"Budget #{payload['budget_id']} ({payload['scope']}, {window['name']}, "
        f"{window['zone']}): {_amount_text(spend, unit)} of {_amount_text(limit, unit)}"
        f"{of_what} ({percent}%) — crossed {_threshold_text(payload['threshold'])}."
    ]
    models = payload.get("top_models") or []
    if models:
        listed = ", ".join(
            f"{m['model'] or 'unknown model'} {_share_text(Decimal(m['share']))}" for m in models
        )
        parts.append(f"Top models: {listed}.")
    categories = payload.get("categories") or []
    if categories:
        top = categories[0]
        noun = "requests" if top["category"] == "grounding" else "tokens"
        whole = "the spend" if unit == "USD" else "the tokens"
        parts.append(
            f"{_LABELS.get(top['category'], top['category'])} {noun} made "
            f"{_share_text(Decimal(top['share']))} of {whole}."
        )
    if window["end"] is None:
        parts.append("The window is the whole history (total): it never resets.")
    else:
        end = datetime.fromisoformat(window["end"])
        local = end.astimezone(ZoneInfo(window["zone"])).isoformat(timespec="minutes")
        evaluated = payload.get("evaluated_at")
        if evaluated is not None and datetime.fromisoformat(evaluated) >= end:
            # Found after the reset (records written late): say which window it was.
            parts.append(f"The window ended {local}.")
        else:
            parts.append(f"Resets {local}.")
    return " ".join(parts)


def webhook_body(alert_id: int, payload: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """What is POSTed: the payload with its alert id (``json``), or Slack's ``{"text"}``."""
    if fmt == "slack":
        return {"text": str(payload.get("text") or slack_text(payload))}
    return {"alert_id": alert_id, **payload}


# --------------------------------------------------------------------- queries


def _int_sum(column: ColumnElement[Any]) -> ColumnElement[int]:
    # PostgreSQL's SUM(bigint) is NUMERIC; the cast keeps ints ints everywhere.
    return cast_(func.coalesce(func.sum(column), 0), BigInteger)


async def budget_total(
    session: AsyncSession, budget: Budget, start: datetime, end: datetime | None
) -> Decimal:
    """``budget_spend``'s total alone, all a pass needs while no threshold is near: from
    the quarter-hour rollups (``storage.schema.UsageRollup``) when the window's bounds
    fall on them, as they always do."""
    table = rollup_table(start, end)
    query = _spend_query(budget, start, end, table)
    total = (await session.execute(query(_measure(budget, table)))).scalar()
    return Decimal(total or 0)


async def budget_spend(
    session: AsyncSession, budget: Budget, start: datetime, end: datetime | None
) -> Spend:
    """The spend of ``budget``'s scope over ``start <= created_at < end``, and its split.

    What is summed is what enforcement counts (``engine.spend_column``): USD budgets sum
    the cost, or the one cost category's (unpriced records, whose cost is unknown, add
    nothing), split by cost category; token budgets sum the billed tokens, or the one
    category's, split by token category. Either way ``models`` gives the same measure per
    model. Provisional records count.
    """
    measure = _measure(budget)
    parts: dict[str, ColumnElement[Any]]
    if budget.unit == "USD":
        parts = {name: func.sum(getattr(UsageRow, col)) for name, col in _COST_CATEGORIES}
    else:
        parts = {name: _int_sum(getattr(UsageRow, col)) for name, col in _TOKEN_COLUMNS.items()}
    base = _spend_query(budget, start, end)
    totals = (
        (
            await session.execute(
                base(measure.label("total"), *(c.label(n) for n, c in parts.items()))
            )
        )
        .one()
        ._mapping
    )
    total = Decimal(totals["total"] or 0)
    categories = {name: Decimal(totals[name] or 0) for name in parts}
    if budget.unit == "tokens":
        if budget.category is not None:
            # One category's budget: the split is that category alone.
            categories = {budget.category: total}
        else:
            # input_tokens includes the cached part: the split bills it once.
            categories["input"] = max(categories["input"] - categories["cached"], Decimal(0))
    by_model = await session.execute(
        base(UsageRow.model.expression, measure.label("amount")).group_by(UsageRow.model)
    )
    models = {row.model: Decimal(row.amount or 0) for row in by_model if row.amount}
    return Spend(total=total, categories=categories, models=models)


def _measure(budget: Budget, table: SpendTable = UsageRow) -> ColumnElement[Any]:
    """The sum of what ``budget`` counts of each row (``engine.spend_column``)."""
    if budget.unit == "tokens" and budget.category not in (None, *_TOKEN_COLUMNS):
        raise ValueError(f"budget #{budget.id}: unknown category {budget.category!r}")
    column = spend_column(budget.unit == "USD", budget.category, table)
    return func.sum(column) if budget.unit == "USD" else _int_sum(column)


def _spend_query(
    budget: Budget, start: datetime, end: datetime | None, table: SpendTable = UsageRow
) -> Callable[..., Select[Any]]:
    """``engine.spend_query`` for ``budget``'s scope, its errors naming the budget."""
    try:
        return spend_query(budget.scope_kind, budget.scope_name, start, end, table)
    except ValueError as exc:
        raise ValueError(f"budget #{budget.id}: {exc}") from exc


def windows_to_check(
    window: Window, zone: ZoneInfo, at: datetime, grace: timedelta = LATE_GRACE
) -> list[tuple[datetime, datetime | None]]:
    """The windows an evaluation at ``at`` looks at: the current one, and the previous
    one for ``grace`` after it ended.

    Spend that crossed a threshold in the last seconds of a window (between two
    evaluations, or while no proxy ran, or in records written late from the journal)
    still alerts once, after the reset; the payload then says when the window ended.
    """
    current = window_bounds(window, zone, at)
    if window is Window.TOTAL:
        return [current]
    start = current[0]
    previous = window_bounds(window, zone, start - timedelta(microseconds=1))
    return [current, previous] if at - start < grace else [current]


async def evaluate_budget(session: AsyncSession, budget: Budget, at: datetime) -> list[int]:
    """Insert the outbox rows of the thresholds ``budget`` has reached at ``at``.

    Looks at the windows of ``windows_to_check``. Returns the ids of the rows this call
    inserted (none for thresholds already in the outbox for their window, whoever
    inserted them). The caller commits.
    """
    inserted: list[int] = []
    for start, end in windows_to_check(budget.window, ZoneInfo(budget.timezone), at):
        inserted += await _evaluate_window(session, budget, start, end, at)
    return inserted


async def _evaluate_window(
    session: AsyncSession, budget: Budget, start: datetime, end: datetime | None, at: datetime
) -> list[int]:
    already = set(
        (
            await session.scalars(
                select(BudgetAlert.threshold).where(
                    BudgetAlert.budget_id == budget.id, BudgetAlert.window_start == start
                )
            )
        ).all()
    )
    wanted = {normalize_threshold(t) for t in budget.thresholds} - already
    if not wanted:
        return []  # every threshold of this window has alerted: no need to sum anything
    if not reached_thresholds(
        await budget_total(session, budget, start, end), budget.limit, list(wanted)
    ):
        # The usual pass: one sum, without the split the alert's payload would need
        # (which takes several times as long over a busy window).
        return []
    spend = await budget_spend(session, budget, start, end)
    inserted: list[int] = []
    for threshold in reached_thresholds(spend.total, budget.limit, list(wanted)):
        payload = build_payload(
            budget, threshold=threshold, spend=spend, window_start=start, window_end=end, at=at
        )
        stmt = (
            insert_ignoring(
                session, table_of(BudgetAlert), "budget_id", "window_start", "threshold"
            )
            .values(
                budget_id=budget.id,
                window_start=start,
                threshold=threshold,
                spend=_exact(spend.total),
                payload=payload,
                created_at=at,
                attempts=0,
                next_attempt_at=None,
            )
            .returning(table_of(BudgetAlert).c.id)
        )
        alert_id = (await session.execute(stmt)).scalar_one_or_none()
        if alert_id is not None:
            inserted.append(alert_id)
            # The alert is logged once, by whichever process inserted it.
            log.info("budget alert #%d: %s", alert_id, payload["text"])
    return inserted


# ------------------------------------------------------------------ evaluator

Clock = Callable[[], datetime]


class AlertEvaluator:
    """Inserts outbox rows for thresholds reached, every ``interval`` seconds or sooner.

    ``changes`` (optional, read in memory, never awaited) returns a number that grows when
    new usage rows are committed (the usage writer's ``written_total``): when it has moved,
    the next evaluation comes after ``debounce`` seconds instead of the full interval.
    ``on_alerts`` is called with the ids this process inserted (to wake the delivery).
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        interval: float = 10.0,
        debounce: float = 1.0,
        clock: Clock = utcnow,
        changes: Callable[[], int] | None = None,
        on_alerts: Callable[[list[int]], None] | None = None,
    ) -> None:
        if interval <= 0 or debounce <= 0:
            raise ValueError("interval and debounce must be positive")
        self._sessionmaker = sessionmaker
        self._interval = interval
        self._debounce = min(debounce, interval)
        self._clock = clock
        self._changes = changes
        self._on_alerts = on_alerts
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self.evaluations_total = 0

    async def evaluate(self) -> list[int]:
        """One pass over every budget; the ids of the alerts inserted, committed."""
        at = self._clock()
        inserted: list[int] = []
        async with self._sessionmaker() as session:
            rows = (await session.scalars(select(BudgetRow).order_by(BudgetRow.id))).all()
        for row in rows:
            try:
                budget = Budget.from_row(row)
                async with self._sessionmaker.begin() as session:
                    inserted += await evaluate_budget(session, budget, at)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # One unreadable budget (an unknown zone, a bad scope) must not stop the rest.
                log.error("could not evaluate budget #%d: %s", row.id, _describe(exc))
        self.evaluations_total += 1
        if inserted and self._on_alerts is not None:
            self._on_alerts(inserted)
        return inserted

    def nudge(self) -> None:
        """Evaluate soon (after the debounce), whatever the interval."""
        self._wakeup.set()

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("AlertEvaluator already started")
        self._task = asyncio.create_task(self._run(), name="gemini-meter alert evaluator")

    async def stop(self) -> None:
        """Stop the loop; an evaluation in progress is cancelled (its rows were committed
        per budget, so nothing is half done)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        seen = self._changes() if self._changes is not None else 0
        last = -math.inf  # when the last pass ended
        took = 0.0  # how long it took
        while True:
            now = loop.time()
            interval, debounce = paced(self._interval, took), paced(self._debounce, took)
            changed = self._changes is not None and self._changes() != seen
            due = now - last >= interval
            if due or ((changed or self._wakeup.is_set()) and now - last >= debounce):
                self._wakeup.clear()
                if self._changes is not None:
                    seen = self._changes()
                try:
                    await self.evaluate()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the database is away: try again next time
                    log.warning("alert evaluation failed: %s", _describe(exc))
                last = loop.time()
                took = last - now
                continue
            # Wake at the next debounce tick to look at ``changes``, or at the interval.
            wait = min(debounce, max(last + interval - now, 0.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), wait)


# ------------------------------------------------------------------- delivery


def _describe(exc: BaseException) -> str:
    """The type of an error and the driver's message, never a URL (aiohttp's quote it)."""
    if isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
        return type(exc).__name__
    cause = getattr(exc, "orig", None) or exc
    return f"{type(cause).__name__}: {cause}"


class _Undeliverable(Exception):
    """An attempt failed; the message is safe to store and log (it names no URL)."""


class AlertDelivery:
    """Sends outbox rows to their webhooks, retried with capped backoff until sent.

    ``deliver_due()`` is one pass (claim due rows, send them, mark them); the background
    loop runs a pass whenever ``wake()`` is called, every ``poll`` seconds (rows other
    processes inserted), and when the earliest retry falls due.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        secret: bytes,
        *,
        timeout: float = 10.0,
        retry_initial: float = 1.0,
        retry_max: float = 300.0,
        poll: float = 10.0,
        batch_size: int = 20,
        clock: Clock = utcnow,
        on_sent: Callable[[], None] | None = None,
        on_failed: Callable[[], None] | None = None,
    ) -> None:
        if timeout <= 0 or retry_initial <= 0 or retry_max <= 0 or poll <= 0 or batch_size <= 0:
            raise ValueError("timeout, retry delays, poll and batch_size must be positive")
        self._sessionmaker = sessionmaker
        self._secret = secret
        self._timeout = timeout
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._poll = poll
        self._batch_size = batch_size
        self._clock = clock
        self._on_sent = on_sent
        self._on_failed = on_failed
        # A claimed row is someone's for this long: the POST's timeout and a margin. A
        # process that dies holding it leaves it to be sent again when the lease ends.
        self._lease = timedelta(seconds=2 * timeout + 5)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._stopping = False
        self.passes_total = 0

    def wake(self, *_: object) -> None:
        """Look for due rows now (the evaluator calls it with the ids it inserted)."""
        self._wakeup.set()

    # ---------------------------------------------------------------- one pass

    async def _claim(self) -> list[BudgetAlert]:
        """Take a lease on up to ``batch_size`` due rows; returns them."""
        now = self._clock()
        due = and_(
            BudgetAlert.sent_at.is_(None),
            or_(BudgetAlert.next_attempt_at.is_(None), BudgetAlert.next_attempt_at <= now),
        )
        async with self._sessionmaker.begin() as session:
            candidates = (
                select(BudgetAlert.id)
                .where(due)
                .order_by(BudgetAlert.id)
                .limit(self._batch_size)
                # PostgreSQL: rows another process is claiming are skipped, not waited
                # for. SQLite has one writer at a time and renders no FOR UPDATE: the
                # ``due`` condition repeated in the UPDATE is what makes a claim single.
                .with_for_update(skip_locked=True)
            )
            ids = list((await session.scalars(candidates)).all())
            if not ids:
                return []
            claimed = await session.scalars(
                update(BudgetAlert)
                .where(BudgetAlert.id.in_(ids), due)
                .values(next_attempt_at=now + self._lease)
                .returning(BudgetAlert)
            )
            return sorted(claimed.all(), key=lambda row: row.id)

    async def _webhook(self, session: AsyncSession, budget_id: int) -> tuple[str | None, str]:
        row = await session.get(BudgetRow, budget_id)
        if row is None:
            raise _Undeliverable(f"budget #{budget_id} no longer exists")
        if row.webhook_sealed is None:
            return None, row.webhook_format
        try:
            url = unseal(self._secret, row.webhook_sealed)
        except ValueError as exc:
            raise _Undeliverable(
                f"webhook of budget #{budget_id} cannot be unsealed with this server secret"
            ) from exc
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _Undeliverable(f"webhook of budget #{budget_id} is not an http(s) URL")
        return url, row.webhook_format

    async def _post(self, alert: BudgetAlert, url: str, fmt: str) -> None:
        assert self._session is not None
        key = alert_id_header(alert.id, alert.budget_id)
        try:
            async with self._session.post(
                url,
                json=webhook_body(alert.id, alert.payload, fmt),
                headers={"Idempotency-Key": key, "X-Gemini-Meter-Alert-Id": key},
                allow_redirects=False,
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _Undeliverable(
                f"webhook of budget #{alert.budget_id} unreachable: {type(exc).__name__}"
            ) from exc
        if not 200 <= status < 300:
            raise _Undeliverable(f"webhook of budget #{alert.budget_id} answered HTTP {status}")

    async def _send(self, alert: BudgetAlert) -> bool:
        """One attempt; marks the row sent or schedules its retry. True when sent."""
        try:
            async with self._sessionmaker() as session:
                url, fmt = await self._webhook(session, alert.budget_id)
            if url is None:
                log.info(
                    "budget alert #%d (budget #%d) has no webhook: delivered to this log",
                    alert.id,
                    alert.budget_id,
                )
            else:
                await self._post(alert, url, fmt)
        except _Undeliverable as exc:
            attempts = alert.attempts + 1
            delay = backoff_seconds(attempts, self._retry_initial, self._retry_max)
            log.warning(
                "budget alert #%d: attempt %d failed (%s); next in %.1f s",
                alert.id,
                attempts,
                exc,
                delay,
            )
            async with self._sessionmaker.begin() as session:
                await session.execute(
                    update(BudgetAlert)
                    .where(BudgetAlert.id == alert.id, BudgetAlert.sent_at.is_(None))
                    .values(
                        attempts=attempts,
                        last_error=str(exc),
                        next_attempt_at=self._clock() + timedelta(seconds=delay),
                    )
                )
            if self._on_failed is not None:
                self._on_failed()
            return False
        async with self._sessionmaker.begin() as session:
            await session.execute(
                update(BudgetAlert)
                .where(BudgetAlert.id == alert.id)
                .values(attempts=alert.attempts + 1, sent_at=self._clock(), last_error=None)
            )
        if url is not None:
            log.info(
                "budget alert #%d delivered to the webhook of budget #%d", alert.id, alert.budget_id
            )
        if self._on_sent is not None:
            self._on_sent()
        return True

    async def _release(self, alerts: Sequence[BudgetAlert]) -> None:
        """Give back the lease of rows claimed but not attempted (shutting down)."""
        if not alerts:
            return
        async with self._sessionmaker.begin() as session:
            await session.execute(
                update(BudgetAlert)
                .where(BudgetAlert.id.in_([a.id for a in alerts]), BudgetAlert.sent_at.is_(None))
                .values(next_attempt_at=self._clock())
            )

    async def deliver_due(self) -> int:
        """Claim due rows and attempt each once; returns how many were sent."""
        owns_session = self._session is None
        if owns_session:
            self._session = self._new_session()
        try:
            sent = 0
            while not self._stopping:
                batch = await self._claim()
                for index, alert in enumerate(batch):
                    if self._stopping:
                        await self._release(batch[index:])
                        return sent
                    sent += await self._send(alert)
                if len(batch) < self._batch_size:
                    break
            self.passes_total += 1
            return sent
        finally:
            if owns_session and self._session is not None:
                await self._session.close()
                self._session = None

    async def _next_due_in(self) -> float:
        """Seconds until the earliest unsent row is due (``poll`` when none is waiting)."""
        async with self._sessionmaker() as session:
            earliest = await session.scalar(
                select(func.min(BudgetAlert.next_attempt_at)).where(BudgetAlert.sent_at.is_(None))
            )
        if earliest is None:
            return self._poll
        return min(max((earliest - self._clock()).total_seconds(), 0.0), self._poll)

    # ---------------------------------------------------------------- the loop

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("AlertDelivery already started")
        self._stopping = False
        self._session = self._new_session()
        self._task = asyncio.create_task(self._run(), name="gemini-meter alert delivery")

    async def stop(self, timeout: float | None = None) -> None:
        """Finish the attempt in progress (up to ``timeout``, default the POST's timeout
        and a margin to mark the row), give back the rows claimed and not attempted, and
        stop. An attempt cut short keeps its lease: the row is sent again after it."""
        task, self._task = self._task, None
        self._stopping = True
        self._wakeup.set()
        if task is not None:
            try:
                await asyncio.wait_for(
                    asyncio.shield(task), self._timeout + 5 if timeout is None else timeout
                )
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            except Exception:
                log.exception("alert delivery stopped with an error")
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            wait = self._poll
            try:
                await self.deliver_due()
                wait = await self._next_due_in()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: try again after a poll
                log.warning("alert delivery pass failed: %s", _describe(exc))
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), wait)
