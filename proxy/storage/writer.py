"""The batching usage writer: the request path hands records over and never waits.

``metering.recorder`` calls ``UsageWriter.submit(record)`` (and ``server.owned`` calls
``submit_owner`` when an interaction is created). Both turn what they are given
into a row, a plain tuple of column values (``writes.usage_row``, built once: the
journal encodes it as it is, and the store binds it as it is), and return: no
await, no waiting on the disk. With a
``storage.journal.Journal`` (the default in the app), the row is written to the
journal before ``submit`` returns and joins the in-process queue once the
journal has fsync'd it; the journal's ticket travels with the row, and the row
is released from the journal once it is committed (or refused for its content),
which lets the journal trim itself.
Rows the journal replays on start are queued again with ``replay``. One
background task drains the queue:

- a batch is written when ``batch_size`` rows are queued, when the oldest queued
  row has waited ``flush_interval`` seconds, when ``flush()`` asks, and on
  ``close()``. It takes every row queued by then, up to ``max_batch_size`` (four
  batches): rows that queued while the previous batch was being written share one
  transaction, so a writer that falls behind catches up with fewer, larger ones
  (a transaction's fixed costs, its COMMIT's fsync first, dominate a small one);
- on PostgreSQL, while a batch is written the next one is taken as soon as it is
  due, and turned into driver tuples meanwhile (the server does the writing);
- each batch is one transaction of bulk inserts (``storage.bulk``: multi-row
  INSERTs on the writer's own SQLite connection in its own thread, a CSV COPY on
  PostgreSQL; rows become driver tuples, and COPY's text, off the event loop) that
  skip a row already stored (same ``request_id`` or interaction id), so a batch retried
  after an unclear failure (a COMMIT whose reply was lost) or replayed from the
  journal is stored once;
- a failed batch is kept and retried with capped exponential backoff, for as
  long as it takes: a database outage delays records, it does not lose them;
- every few failed attempts the batch is tried row by row, in case one row is
  what the database refuses (a foreign key, a value out of range). Rows refused
  that way are logged and counted in ``failed_rows_total``; an error that is not
  about the row (connection, missing table) sends the rest back to retrying;
- rows are dropped only when the queue already holds ``queue_limit`` rows,
  counted in ``dropped_total`` and logged once per burst; a journaled row
  dropped so (or left unwritten when ``close`` gives up) stays in the journal
  and is written on the next start.

The counters (``queued``, ``written_total``, ``failed_batches_total``,
``failed_rows_total``, ``dropped_total``, ``last_success``) are plain
attributes for ``server.metrics`` to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..metering.records import Principal, UsageRecord
from ..settings import Settings
from .bulk import batch_store, is_row_error
from .journal import OWNER, USAGE, Entry, Journal
from .schema import utcnow
from .writes import OWNER_COLUMNS, USAGE_COLUMNS, owner_row, usage_row

__all__ = ["UsageWriter"]

log = logging.getLogger(__name__)


class _Row(NamedTuple):
    enqueued_at: float  # time.monotonic() at submit
    is_usage: bool  # a usage_records row, else an interactions row
    names: tuple[str, ...]  # USAGE_COLUMNS or OWNER_COLUMNS, but for an older journal's rows
    values: tuple[Any, ...]
    ticket: int | None = None  # the journal segment holding it, if journaled


def _is_row_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the row itself is unacceptable (retrying cannot help).

    ``bulk.RowRefused`` (and, on the ORM path, a ``StatementError`` that is not a
    ``DBAPIError``) was raised while binding values (a naive datetime, a float for
    money) before reaching the database.
    """
    if is_row_error(exc) or isinstance(exc, IntegrityError | DataError):
        return True
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


def _describe(exc: BaseException) -> str:
    """The driver's own message: SQLAlchemy's wrapper would add the whole INSERT."""
    cause = getattr(exc, "orig", None) or exc
    return f"{type(cause).__name__}: {cause}"


class UsageWriter:
    """Writes usage records and interaction owners in batches, off the request path.

    Health counters, read by ``server.metrics``:

    - ``queued``: rows accepted and not yet written, the batch in flight included;
    - ``written_total``: rows committed (usage records and interaction owners;
      a duplicate skipped by ON CONFLICT counts, it is handled);
    - ``failed_batches_total``: failed write attempts, each retry counted;
    - ``failed_rows_total``: rows the database refused on their own, given up;
    - ``dropped_total``: rows refused because the queue was full or the writer
      closed, or left unwritten and unjournaled when ``close`` timed out (a
      journaled row so refused is written on the next start);
    - ``last_success``: ``time.monotonic()`` of the last successful write, or None.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        batch_size: int = Settings.writer_batch_size,
        max_batch_size: int | None = None,
        flush_interval: float = Settings.writer_flush_interval_seconds,
        queue_limit: int = Settings.writer_queue_limit,
        retry_initial_seconds: float = 0.1,
        retry_max_seconds: float = 10.0,
        attempts_before_split: int = 3,
        journal: Journal | None = None,
        on_batch: Callable[[float], None] | None = None,
    ) -> None:
        if batch_size <= 0 or queue_limit <= 0 or attempts_before_split <= 0:
            raise ValueError("batch_size, queue_limit and attempts_before_split must be positive")
        if flush_interval <= 0 or retry_initial_seconds <= 0 or retry_max_seconds <= 0:
            raise ValueError("flush_interval and retry delays must be positive")
        if max_batch_size is not None and max_batch_size < batch_size:
            raise ValueError("max_batch_size must be at least batch_size")
        self._store = batch_store(sessionmaker)
        self._batch_size = batch_size
        self._max_batch_size = max_batch_size or 4 * batch_size
        self._flush_interval = flush_interval
        self._queue_limit = queue_limit
        self._retry_initial = retry_initial_seconds
        self._retry_max = retry_max_seconds
        self._attempts_before_split = attempts_before_split
        self._journal = journal
        # Bound once: an attribute lookup of a method makes a new object each time.
        self._on_durable = self._durable
        # Given each batch write's duration in seconds, failed attempts included (a metric).
        self._on_batch = on_batch

        self._queue: deque[_Row] = deque()
        # The batch being written: still counted as queued until it is done.
        self._batch: list[_Row] = []
        # The batch after it, taken once due and converted meanwhile (its rows counted as
        # queued too), with the future of its conversion.
        self._next: tuple[list[_Row], asyncio.Future[Any]] | None = None
        # Sequence numbers of accepted rows: ``flush()`` waits for ``_done`` to
        # reach the ``_accepted`` it saw. Rows are handled in order.
        self._accepted = 0
        self._done = 0
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._burst_dropped = 0

        self.written_total = 0
        self.failed_batches_total = 0
        self.failed_rows_total = 0
        self.dropped_total = 0
        self.last_success: float | None = None

    # ------------------------------------------------------------ request path

    @property
    def queued(self) -> int:
        """Rows accepted and not yet written (including the batch in flight)."""
        following = len(self._next[0]) if self._next is not None else 0
        return len(self._queue) + len(self._batch) + following

    def submit(self, record: UsageRecord) -> bool:
        """Journal ``record`` and queue it for writing. Never awaits, never raises.

        Returns whether the record was kept: True once it is in the journal (written
        before this returns; or, without a journal, queued), False if the journal or
        the queue refused it (counted). The row is a snapshot taken now: changing
        ``record`` afterwards has no effect on what is stored.
        """
        try:
            values = usage_row(record)
        except Exception:
            # A bug upstream of us must not fail the client's request.
            log.exception("could not convert a usage record; it is not recorded")
            self.failed_rows_total += 1
            return False
        return self._hand_over(True, USAGE_COLUMNS, values)

    def submit_owner(
        self, interaction_id: str, principal: Principal, model: str | None
    ) -> tuple[Any, ...]:
        """Queue "``principal`` owns ``interaction_id``", and return the row queued (for a
        commit of that same row elsewhere: ``Authenticator.commit_owner``). Never awaits,
        never raises."""
        row = owner_row(interaction_id, principal, model, utcnow())
        self._hand_over(False, OWNER_COLUMNS, row)
        return row

    def _hand_over(self, is_usage: bool, names: tuple[str, ...], values: tuple[Any, ...]) -> bool:
        """Journal a row, which joins the queue once its group commit is fsync'd."""
        journal = self._journal
        if journal is None:
            return self._enqueue(is_usage, names, values, None)
        try:
            return journal.append(USAGE if is_usage else OWNER, values, self._on_durable)
        except Exception:
            # A value the journal cannot encode is a bug; the row still goes on.
            log.exception("could not journal a row; it is written unjournaled")
            return self._enqueue(is_usage, names, values, None)

    def _durable(self, kind: str, values: tuple[Any, ...], ticket: int | None) -> None:
        """The journal's fsync covers a row of the current layout: queue it."""
        is_usage = kind == USAGE
        self._enqueue(is_usage, USAGE_COLUMNS if is_usage else OWNER_COLUMNS, values, ticket)

    def replay(self, entries: Iterable[Entry]) -> None:
        """Queue rows the journal kept from a previous run (beyond ``queue_limit``:
        the journal's own size bounds them)."""
        for entry in entries:
            # Overdue already: written at once, not after a flush interval.
            row = _Row(-math.inf, entry.kind == USAGE, entry.names, entry.values, entry.ticket)
            self._queue.append(row)
            self._accepted += 1
        self._wakeup.set()

    def _enqueue(
        self, is_usage: bool, names: tuple[str, ...], values: tuple[Any, ...], ticket: int | None
    ) -> bool:
        if self._closed or self.queued >= self._queue_limit:
            self.dropped_total += 1
            if self._burst_dropped == 0:
                reason = "the writer is closed" if self._closed else "the queue is full"
                log.error(
                    "dropping usage rows: %s (%d queued, limit %d)%s",
                    reason,
                    self.queued,
                    self._queue_limit,
                    "; journaled rows are written on the next start" if self._journal else "",
                )
            self._burst_dropped += 1
            return False
        self._queue.append(_Row(time.monotonic(), is_usage, names, values, ticket))
        self._accepted += 1
        # Wake the loop only when it has something new to decide: the first row
        # (start the interval clock) or a full batch.
        if len(self._queue) == 1 or len(self._queue) >= self._batch_size:
            self._wakeup.set()
        return True

    # --------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the background task (rows submitted before are kept and written)."""
        if self._task is not None:
            raise RuntimeError("UsageWriter already started")
        if self._closed:
            raise RuntimeError("UsageWriter is closed")
        self._task = asyncio.create_task(self._run(), name="gemini-meter usage writer")
        self._task.add_done_callback(self._on_task_done)

    async def flush(self) -> None:
        """Wait until every row submitted before this call is written (or refused)."""
        if self._journal is not None:
            # Rows still waiting for their fsync join the queue first.
            await self._journal.flush()
        target = self._accepted
        if self._done >= target:
            return
        if self._task is None or self._task.done():
            raise RuntimeError("UsageWriter is not running")
        waiter = asyncio.get_running_loop().create_future()
        self._flush_waiters.append((target, waiter))
        self._wakeup.set()
        await waiter

    async def close(self, timeout: float | None = 30.0) -> None:
        """Write everything queued, then stop; later submits are dropped.

        Rows submitted while closing (and rows still waiting for the journal's
        fsync) are still written. If the database stays unreachable for
        ``timeout`` seconds, shutdown goes on: journaled rows left unwritten stay
        in the journal for the next start; unjournaled ones are logged, counted
        in ``dropped_total`` and lost.
        """
        if self._closed:
            return
        if self._journal is not None:
            await self._journal.flush()
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._task is None or self._task.done():
                if not self._queue and self._next is None:
                    break
                # Never started, or rows arrived just as the task finished:
                # drain them anyway, they were accepted.
                self._task = asyncio.create_task(self._run(), name="gemini-meter usage writer")
                self._task.add_done_callback(self._on_task_done)
            self._wakeup.set()
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                await asyncio.wait_for(asyncio.shield(self._task), remaining)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                break
            except Exception:
                break  # a bug, logged by _on_task_done; count what is left below
        self._closed = True
        following: list[_Row] = []
        if self._next is not None:
            following = self._next[0]
            self._next[1].cancel()
            self._next = None
        left = [*self._batch, *following, *self._queue]
        kept = sum(1 for row in left if row.ticket is not None)
        lost = len(left) - kept
        if kept:
            log.warning(
                "usage writer closed with %d rows unwritten: the journal keeps them for the"
                " next start",
                kept,
            )
        if lost:
            self.dropped_total += lost
            log.error(
                "usage writer closed with %d rows unwritten and unjournaled: they are lost", lost
            )
        if left:
            self._queue.clear()
            self._batch = []
        self._fail_waiters(RuntimeError("UsageWriter closed"))
        # Its thread finishes a write already under way first: that write's COMMIT, if
        # it lands, is harmless (the journal replays idempotently).
        await self._store.close()

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            self._fail_waiters(RuntimeError("UsageWriter stopped"))
            return
        exc = task.exception()
        if exc is not None:
            log.error("usage writer stopped unexpectedly", exc_info=exc)
            self._fail_waiters(RuntimeError("UsageWriter stopped unexpectedly"))

    def _fail_waiters(self, exc: Exception) -> None:
        for _, waiter in self._flush_waiters:
            if not waiter.done():
                waiter.set_exception(exc)
        self._flush_waiters = []

    # ------------------------------------------------------------- the loop

    def _due(self) -> bool:
        return (
            len(self._queue) >= self._batch_size
            or self._closing
            or bool(self._flush_waiters)
            or time.monotonic() - self._queue[0].enqueued_at >= self._flush_interval
        )

    async def _run(self) -> None:
        while True:
            if self._next is None:
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                if not self._due():
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), self._until_due())
                    continue
                self._take_next()
            assert self._next is not None
            (batch, converted), self._next = self._next, None
            self._batch = batch
            if self._store.prepares_ahead:
                await self._convert_ahead(asyncio.ensure_future(self._write(batch, converted)))
            else:
                await self._write(batch, converted)
            self._batch = []
            self._done += len(batch)
            self._wake_flushers()
            if self._burst_dropped and self.queued < self._queue_limit:
                log.warning(
                    "usage writer accepting rows again after dropping %d", self._burst_dropped
                )
                self._burst_dropped = 0

    def _until_due(self) -> float:
        """Seconds until the oldest queued row has waited ``flush_interval``."""
        return max(self._queue[0].enqueued_at + self._flush_interval - time.monotonic(), 0.0)

    def _take_next(self) -> None:
        """Take the next batch (every queued row, up to ``max_batch_size``) and start its
        conversion."""
        count = min(self._max_batch_size, len(self._queue))
        rows = [self._queue.popleft() for _ in range(count)]
        converted = asyncio.ensure_future(self._prepare(rows))
        # Retrieved even if the batch is never written (the writer closed meanwhile).
        converted.add_done_callback(_retrieve)
        self._next = (rows, converted)

    async def _convert_ahead(self, writing: asyncio.Future[None]) -> None:
        """Wait for ``writing``; meanwhile take the next batch as soon as it is due, so
        that it is converted (in the store's thread) while the server writes this one."""
        while not writing.done() and self._next is None:
            if self._queue and self._due():
                self._take_next()
                break
            self._wakeup.clear()
            woken: asyncio.Future[Any] = asyncio.ensure_future(self._wakeup.wait())
            try:
                timeout = self._until_due() if self._queue else None
                await asyncio.wait(
                    [writing, woken], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            except BaseException:
                writing.cancel()
                raise
            finally:
                woken.cancel()
        await writing  # cancelled with it if this task is (close gave up)

    def _wake_flushers(self) -> None:
        still_waiting: list[tuple[int, asyncio.Future[None]]] = []
        for target, waiter in self._flush_waiters:
            if waiter.done():
                continue  # its caller gave up (cancelled)
            if self._done >= target:
                waiter.set_result(None)
            else:
                still_waiting.append((target, waiter))
        self._flush_waiters = still_waiting

    async def _write(self, batch: Sequence[_Row], converted: asyncio.Future[Any]) -> None:
        """Write ``batch``, retrying until every row is in or refused on its own merits.
        ``converted`` is the conversion of ``batch``, reused by the retries."""
        pending = list(batch)
        failures = 0
        delay = self._retry_initial
        ready: asyncio.Future[Any] | None = converted
        while True:
            began = time.perf_counter()
            try:
                if ready is None:
                    ready = asyncio.ensure_future(self._prepare(pending))
                await self._store.write(await ready)
            except Exception as exc:
                self._observe(began)
                failures += 1
                self.failed_batches_total += 1
                if failures == 1:
                    log.warning(
                        "writing %d usage rows failed, retrying with backoff: %s",
                        len(pending),
                        _describe(exc),
                    )
                else:
                    log.debug("usage batch attempt %d failed: %s", failures, _describe(exc))
                if failures % self._attempts_before_split == 0:
                    pending = await self._write_row_by_row(pending)
                    ready = None  # the rows left are converted again
                    if not pending:
                        break
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
            else:
                self._observe(began)
                self.written_total += len(pending)
                self._release(pending)
                break
        self.last_success = time.monotonic()
        if failures:
            log.warning("usage rows written again after %d failed attempts", failures)

    def _observe(self, began: float) -> None:
        if self._on_batch is not None:
            self._on_batch(time.perf_counter() - began)

    async def _write_row_by_row(self, rows: list[_Row]) -> list[_Row]:
        """Insert ``rows`` one per transaction, discarding those refused for their
        content; returns the rows still to write when the database itself fails."""
        for index, row in enumerate(rows):
            try:
                await self._insert([row])
            except Exception as exc:
                if not _is_row_error(exc):
                    return rows[index:]
                self.failed_rows_total += 1
                table = "usage_records" if row.is_usage else "interactions"
                log.error(
                    "the database refused a %s row, which is dropped: %s", table, _describe(exc)
                )
            else:
                self.written_total += 1
            self._release([row])
        return []

    def _release(self, rows: Iterable[_Row]) -> None:
        """Rows handled for good: the journal may forget them."""
        if self._journal is not None:
            self._journal.release(row.ticket for row in rows if row.ticket is not None)

    async def _insert(self, rows: Sequence[_Row]) -> None:
        await self._store.write(await self._prepare(rows))

    async def _prepare(self, rows: Sequence[_Row]) -> Any:
        usage = [(row.names, row.values) for row in rows if row.is_usage]
        owners = [(row.names, row.values) for row in rows if not row.is_usage]
        return await self._store.prepare(usage, owners)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen: its batch's own attempt reports it."""
    if not future.cancelled():
        future.exception()
