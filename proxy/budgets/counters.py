"""Spend counters per (budget, window): this process's view, and Redis shared by all.

``LocalCounters`` is always there. Per (budget id, window start) a cell holds:

- ``settled``: what this process has settled in the window since it started;
- ``snapshot``: the database's total for the window at the last refresh, and
  ``since``: what this process settled after that refresh's query began;
- ``reserved``: this process's reservations still in flight.

Spend is ``max(settled, snapshot + since)``: for one process the first term is
exact (the database lags the writer by a flush), with several processes the second
brings in the others' spend as of the last refresh. A record settled while a
refresh's query runs may be counted twice until the next refresh: the error is on
the side of refusing. Check and reserve are one synchronous step, so concurrent
calls in one event loop never both take the last slot.

``RedisCounters`` keeps one integer per (budget, window) shared by every process:
settled spend plus reservations in flight. Reserving across all the budgets of a
call is one Lua script (check them all, then add to them all), so two processes
never both pass the last slot; settling adds the difference. A key carries its
window's start and expires an hour after the window ends. A ``seeded`` marker per
key says the counter holds the database's total: after a Redis restart (markers
gone) the refresh adds the database's total for the window once (``SET NX``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .rules import Budget

__all__ = ["CellKey", "Entry", "LocalCounters", "RedisCounters"]

CellKey = tuple[int, datetime]  # (budget id, window start)

# How long a window's Redis keys outlive it: settlements of calls that straddle the
# window's end still find their key.
_EXPIRY_GRACE = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Entry:
    """One budget a call counts against: its window and the amount, in the budget's unit."""

    budget: Budget
    start: datetime
    end: datetime | None
    amount: int

    @property
    def key(self) -> CellKey:
        return (self.budget.id, self.start)


def exceeds(spend: int, amount: int, limit: int) -> bool:
    """Whether a call reserving ``amount`` on top of ``spend`` is refused.

    Spend at or past the limit refuses every call (even one estimated at zero);
    otherwise a call is admitted while spend plus its reservation stays within it.
    """
    return spend >= limit or spend + amount > limit


@dataclass(slots=True)
class _Cell:
    end: datetime | None
    settled: int = 0
    snapshot: int = 0
    since: int = 0
    next_since: int | None = None  # counting while a refresh's query runs
    reserved: int = 0

    def spend(self) -> int:
        return max(self.settled, self.snapshot + self.since)


class LocalCounters:
    """This process's view of spend per (budget, window)."""

    def __init__(self) -> None:
        self._cells: dict[CellKey, _Cell] = {}

    def _cell(self, key: CellKey, end: datetime | None) -> _Cell:
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = _Cell(end=end)
        return cell

    def spend(self, key: CellKey) -> int:
        """Settled spend, reservations excluded."""
        cell = self._cells.get(key)
        return 0 if cell is None else cell.spend()

    def reserved(self, key: CellKey) -> int:
        cell = self._cells.get(key)
        return 0 if cell is None else cell.reserved

    def refused(self, entries: Sequence[Entry]) -> Entry | None:
        """The first entry whose budget this call would break, or None."""
        for entry in entries:
            cell = self._cells.get(entry.key)
            used = 0 if cell is None else cell.spend() + cell.reserved
            if exceeds(used, entry.amount, entry.budget.limit):
                return entry
        return None

    def reserve(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            self._cell(entry.key, entry.end).reserved += entry.amount

    def unreserve(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            cell = self._cells.get(entry.key)
            if cell is not None:
                cell.reserved = max(0, cell.reserved - entry.amount)

    def settle(self, key: CellKey, end: datetime | None, amount: int) -> None:
        cell = self._cell(key, end)
        cell.settled += amount
        cell.since += amount
        if cell.next_since is not None:
            cell.next_since += amount

    def begin_snapshot(self) -> None:
        """A refresh's queries start: count what is settled from now on apart."""
        for cell in self._cells.values():
            cell.next_since = 0

    def apply_snapshot(self, key: CellKey, end: datetime | None, total: int) -> None:
        cell = self._cell(key, end)
        cell.snapshot = total
        cell.since = cell.next_since or 0
        cell.next_since = None

    def prune(self, now: datetime) -> None:
        """Forget windows that ended (with a grace for calls still settling)."""
        for key in [k for k, c in self._cells.items() if c.end and c.end + _EXPIRY_GRACE < now]:
            del self._cells[key]


_RESERVE = """
-- KEYS: one counter per budget; ARGV: per key, amount then limit, then per key expire-at
-- (unix seconds, 0 for none). Checks every budget, then reserves on all of them: or none.
local n = #KEYS
for i = 1, n do
  local amount = tonumber(ARGV[2 * i - 1])
  local limit = tonumber(ARGV[2 * i])
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used >= limit or used + amount > limit then
    return i
  end
end
for i = 1, n do
  redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
  local expire_at = tonumber(ARGV[2 * n + i])
  if expire_at > 0 then
    redis.call('EXPIREAT', KEYS[i], expire_at)
  end
end
return 0
"""

_SEED = """
-- KEYS[1]: the seeded marker, KEYS[2]: the counter; ARGV: total, expire-at (0: none).
-- Adds the database's total once per counter's life: whoever sets the marker first.
if redis.call('SET', KEYS[1], '1', 'NX') then
  redis.call('INCRBY', KEYS[2], ARGV[1])
  local expire_at = tonumber(ARGV[2])
  if expire_at > 0 then
    redis.call('EXPIREAT', KEYS[1], expire_at)
    redis.call('EXPIREAT', KEYS[2], expire_at)
  end
  return 1
end
return 0
"""


def _expire_at(end: datetime | None) -> int:
    return 0 if end is None else int((end + _EXPIRY_GRACE).timestamp())


class RedisCounters:
    """The counters every process shares, in Redis (``redis.asyncio``)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._reserve = client.register_script(_RESERVE)
        self._seed = client.register_script(_SEED)

    def counter_key(self, key: CellKey) -> str:
        budget_id, start = key
        return f"{self._prefix}spend:{budget_id}:{int(start.timestamp())}"

    def seeded_key(self, key: CellKey) -> str:
        budget_id, start = key
        return f"{self._prefix}seeded:{budget_id}:{int(start.timestamp())}"

    async def reserve(self, entries: Sequence[Entry]) -> Entry | None:
        """Reserve on every entry's counter atomically; the entry refused, or None."""
        keys = [self.counter_key(e.key) for e in entries]
        args: list[int] = []
        for e in entries:
            args += [e.amount, e.budget.limit]
        args += [_expire_at(e.end) for e in entries]
        refused = int(await self._reserve(keys=keys, args=args))
        return entries[refused - 1] if refused else None

    async def adjust(self, deltas: Sequence[tuple[CellKey, datetime | None, int]]) -> None:
        """Add each delta to its counter (settlements: real cost minus reservation)."""
        async with self._client.pipeline(transaction=False) as pipe:
            for key, end, delta in deltas:
                name = self.counter_key(key)
                pipe.incrby(name, delta)
                if end is not None:
                    pipe.expireat(name, _expire_at(end))
            await pipe.execute()

    async def value(self, key: CellKey) -> int:
        raw = await self._client.get(self.counter_key(key))
        return 0 if raw is None else int(raw)

    async def seed(self, totals: Sequence[tuple[CellKey, datetime | None, int]]) -> int:
        """Add the database's total to each counter not seeded yet; how many were."""
        async with self._client.pipeline(transaction=False) as pipe:
            for key, _, _ in totals:
                pipe.exists(self.seeded_key(key))
            present = await pipe.execute()
        seeded = 0
        for (key, end, total), exists in zip(totals, present, strict=True):
            if not exists:
                keys = [self.seeded_key(key), self.counter_key(key)]
                seeded += int(await self._seed(keys=keys, args=[total, _expire_at(end)]))
        return seeded
