"""The writer's fast path: a batch of rows straight into the driver's bulk insert.

``storage.writer`` hands each batch (``writes.usage_row`` and ``writes.owner_row``
tuples, each with its column names: ``USAGE_COLUMNS``, or an older release's columns
replayed from its journal) to a ``BatchStore``; ``batch_store(sessionmaker)`` picks one
for the engine:

- ``SqliteStore``: the writer's own ``sqlite3`` connection in the writer's own thread.
  Turning rows into tuples, the INSERTs (64 rows to a statement, the rest one by one, by
  ``executemany`` of the statement per kind of row) and the COMMIT all happen there: the
  event loop does no per-row work, and ``sqlite3`` releases the GIL while SQLite itself
  runs.
- ``PostgresStore``: rows become tuples and then the text of a CSV ``COPY`` in the
  writer's thread (the next batch's while the server takes this one; ``csv`` writes
  it in C), then one transaction on the asyncpg connection the writer keeps: that
  ``COPY`` straight into ``usage_records``, or, when a row is already there, into a
  session-local temporary table and ``INSERT ... SELECT ... ON CONFLICT`` from it.
  The event loop only hands the ready bytes to the socket: asyncpg's binary
  ``copy_records_to_table`` encoded every value on the loop, about as much CPU as
  ``submit`` itself.
- ``SessionStore``: SQLAlchemy's ORM statements (``writes.insert_usage_rows``), for an
  engine the other two cannot open (an in-memory SQLite database).

All three run the statements of ``storage.writes`` (compiled once from the same
SQLAlchemy constructs), so the idempotency rules are the same: a usage row is an upsert
on its ``request_id`` (or its interaction's id) that replaces only a provisional row, an
owner row keeps the first owner. (PostgreSQL's plain COPY stands in for them only
when it succeeds, that is when no row met a conflict.)

Values are converted by the very bind processors SQLAlchemy would run for each column
(``Money`` to 1e-12 USD units on SQLite or a quantized ``Decimal`` on PostgreSQL,
``UTCDateTime``, JSON as the same ``json.dumps`` text), with shortcuts that give the same
results (a ``Decimal`` amount by the same arithmetic without the type checks, a zero
amount, an empty JSON object, SQLite's timestamp text by ``isoformat``, orjson's text for
PostgreSQL's ``jsonb``, which stores the value and not the text); what is skipped is
SQLAlchemy's per-row bookkeeping around them (a row becomes its tuple in one generated
expression), and the boolean processor, whose ``int(bool)`` is what both drivers do with
a ``bool``. On PostgreSQL the bound values then go as COPY's CSV text, which the server
reads back to the same values (``_csv``). ``tests/storage/test_bulk.py`` reads rows
written here back through the ORM models, field for field, and compares the database's
own text of each value with the ORM path's, on both databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import functools
import io
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from itertools import chain
from typing import Any, Protocol, TypeVar

import orjson
from sqlalchemy import JSON, Boolean, Table, bindparam, column, select, text
from sqlalchemy import table as light_table
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import Insert

from .schema import (
    _MONEY_CONTEXT,
    _NUMERIC_LIMIT,
    _QUANTUM,
    _SQLITE_MAX,
    _SQLITE_MIN,
    MONEY_SCALE,
    Interaction,
    Money,
    UsageRow,
    UTCDateTime,
    _on_sqlite_connect,
)
from .writes import (
    OWNER_COLUMNS,
    insert_ignoring_in,
    insert_interaction_owners,
    insert_usage_rows,
    replaces,
    table_of,
    upsert_replacing_provisional,
)

__all__ = [
    "BatchStore",
    "OwnerCommits",
    "PostgresStore",
    "RowRefused",
    "SessionStore",
    "SqliteStore",
    "batch_store",
    "is_row_error",
    "owner_commits",
    "row_converter",
]

# A row as the writer queues it: its column names and its values, in that order
# (``writes.USAGE_COLUMNS`` and a ``usage_row`` tuple, or a replayed older layout).
Row = tuple[tuple[str, ...], tuple[Any, ...]]
T = TypeVar("T")


class RowRefused(ValueError):
    """A row's values cannot be bound (a naive datetime, a float for money, a missing
    column): refused before it reaches the database, as SQLAlchemy's ``StatementError``
    would have been."""


class BatchStore(Protocol):
    """Writes one batch in one transaction, or raises and writes nothing.

    In two steps, so that the writer can convert the next batch while this one is being
    written: ``prepare`` turns the rows into what ``write`` sends (in a thread, off the
    event loop; it raises ``RowRefused``), ``write`` sends it in one transaction. What
    ``prepare`` returns can be written again after a failed attempt. ``prepares_ahead``
    says whether the writer should: whether a write leaves the GIL to a conversion for
    long stretches.
    """

    prepares_ahead: bool

    async def prepare(self, usage: Sequence[Row], owners: Sequence[Row]) -> Any: ...

    async def write(self, prepared: Any) -> None: ...

    async def close(self) -> None: ...


# ------------------------------------------------------------------ rows as tuples


def row_converter(
    table: Table,
    names: Sequence[str],
    dialect: Dialect,
    *,
    columns: Sequence[str] | None = None,
    null: Any = None,
) -> Callable[[Sequence[tuple[Any, ...]]], list[tuple[Any, ...]]]:
    """A function turning rows (tuples of the values of ``columns``, by default
    ``names``) into tuples of ``names``' values, bound as SQLAlchemy would bind them on
    ``dialect``; raises ``RowRefused``. A SQL NULL becomes ``null`` (``_CSV_NULL`` for
    PostgreSQL's CSV COPY)."""
    try:
        sources = [(columns or names).index(name) for name in names]
    except ValueError as exc:  # a column the rows do not have
        raise RowRefused(str(exc)) from exc
    # index -> (processor, whether it also takes None)
    processors: dict[int, tuple[Callable[[Any], Any], bool]] = {}
    booleans: set[int] = set()
    for index, name in enumerate(names):
        column_type = table.c[name].type
        if isinstance(column_type, Boolean) and dialect.name != "sqlite":
            continue  # asyncpg's COPY text reads True and False as they are
        process: Callable[[Any], Any] | None
        process = column_type.dialect_impl(dialect).bind_processor(dialect)
        if isinstance(column_type, Boolean):
            # sqlite3 binds a bool only after looking for an adapter (two failed attribute
            # lookups: 0.6 us each, eight a row), an int at once; SQLAlchemy binds 1 or 0
            # here too, and refuses what is not a bool (its processor sees the rest).
            booleans.add(index)
        elif isinstance(column_type, Money) and process is not None:
            process = _fast_money(process, sqlite=dialect.name == "sqlite")
        elif isinstance(column_type, JSON) and process is not None:
            process = _fast_json(process, sqlite=dialect.name == "sqlite")
        elif isinstance(column_type, UTCDateTime) and process is not None:
            if dialect.name == "sqlite":
                process = _fast_sqlite_datetime(process)
        if process is not None:
            # JSON turns None into 'null' text; every other processor keeps None.
            processors[index] = (process, isinstance(column_type, JSON))
    bind = _tuple_binder(sources, processors, null, booleans)

    def convert(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        out = []
        try:
            for start in range(0, len(rows), _GIL_CHUNK):
                if start:
                    # Run in a writer thread: let the event loop's thread have the GIL
                    # now rather than after the interpreter's 5 ms switch interval.
                    time.sleep(0)
                out.extend([bind(values) for values in rows[start : start + _GIL_CHUNK]])
        # AttributeError: a value of the wrong type (a string for a timestamp) met a
        # processor; it is the row's fault like the others, not the database's.
        # IndexError: a row shorter than its columns.
        except (ValueError, TypeError, IndexError, AttributeError, ArithmeticError) as exc:
            raise RowRefused(f"{type(exc).__name__}: {exc}") from exc
        return out

    return convert


def _tuple_binder(
    sources: Sequence[int],
    processors: Mapping[int, tuple[Callable[[Any], Any], bool]],
    null: Any = None,
    booleans: Collection[int] = (),
) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """A function of a row tuple: the tuple of its values at ``sources``, with
    ``processors`` (by position in the result) applied and None as ``null``. At the
    positions in ``booleans``, True and False become 1 and 0 without a call, and the
    processor sees anything else.

    Generated as one expression (``(t[0], None if t[1] is None else p1(t[1]), ...)``),
    what SQLAlchemy does for its own row processing: a loop over the processors, with
    a list to fill and a tuple to copy it into, cost as much as the processors
    themselves. Only indices go into the source; the functions are its globals.
    """
    parts = []
    scope: dict[str, Any] = {"N": null}
    for index, at in enumerate(sources):
        value = f"t[{at}]"
        if index not in processors:
            parts.append(value if null is None else f"(N if {value} is None else {value})")
            continue
        process, on_none = processors[index]
        scope[f"p{index}"] = process
        call = f"p{index}({value})"
        if index in booleans:
            parts.append(f"(1 if {value} is True else 0 if {value} is False else {call})")
            continue
        parts.append(call if on_none else f"(N if {value} is None else {call})")
    source = f"def bind(t):\n    return ({', '.join(parts)},)\n"
    exec(compile(source, "<storage.bulk row binder>", "exec"), scope)
    binder: Callable[[tuple[Any, ...]], tuple[Any, ...]] = scope["bind"]
    return binder


# Rows converted between two offers of the GIL (about 0.5 ms of work).
_GIL_CHUNK = 64


def _fast_money(process: Callable[[Any], Any], *, sqlite: bool) -> Callable[[Any], Any]:
    """``Money``'s bind processor with a shortcut for a ``Decimal``, nine times a row.

    The same arithmetic as ``schema.quantize_money`` and ``Money.process_bind_param``
    (half-even to 12 digits in the same context, the same bounds) without their type
    checks and copies; anything but a ``Decimal`` (an int, a float to refuse) goes to
    ``process`` itself. A NaN or an infinity raises here too: ``quantize`` traps
    infinities, and a NaN fails ``int()`` or the comparison.
    """

    def sqlite_units(value: Any) -> Any:
        if type(value) is not Decimal:
            return process(value)
        if not value:
            return 0  # most of a row's nine amounts (any zero, -0 too, is 0 units)
        amount = value.quantize(_QUANTUM, context=_MONEY_CONTEXT)
        units = int(amount.scaleb(MONEY_SCALE, context=_MONEY_CONTEXT))
        # the SQLite bound (|units| < 2**63) is tighter than NUMERIC(28, 12)'s
        if not _SQLITE_MIN <= units <= _SQLITE_MAX:
            raise ValueError(f"money amount {amount} exceeds what SQLite can store exactly")
        return units

    def numeric(value: Any) -> Any:
        if type(value) is not Decimal:
            return process(value)
        if not value and not value.is_signed():
            return _ZERO
        amount = value.quantize(_QUANTUM, context=_MONEY_CONTEXT)
        if not -_NUMERIC_LIMIT < amount < _NUMERIC_LIMIT:
            raise ValueError(f"money amount {amount} exceeds NUMERIC(28, {MONEY_SCALE})")
        return amount

    return sqlite_units if sqlite else numeric


_ZERO = Decimal(0).quantize(_QUANTUM)


def _fast_json(process: Callable[[Any], Any], *, sqlite: bool) -> Callable[[Any], Any]:
    """A JSON column's bind processor, with an empty dict (most rows' labels and
    grounding) as the constant text ``json.dumps({})`` makes of it.

    On PostgreSQL a dict is encoded by orjson: ``jsonb`` keeps the parsed value, not the
    text, so its compact text stores the same thing as ``json.dumps``' spaced one, at a
    fraction of the cost. What orjson refuses (a key that is not a string, an integer
    beyond 64 bits) goes to ``process``. SQLite keeps the text itself: it is
    ``json.dumps``' there, as the ORM path writes it.
    """

    def empty_or_process(value: Any) -> Any:
        if type(value) is dict and not value:
            return "{}"
        return process(value)

    def orjson_text(value: Any) -> Any:
        if type(value) is dict:
            if not value:
                return "{}"
            try:
                return orjson.dumps(value).decode()
            except TypeError:  # orjson.JSONEncodeError
                pass
        return process(value)

    return empty_or_process if sqlite else orjson_text


def _fast_sqlite_datetime(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``UTCDateTime``'s bind processor on SQLite for an aware ``datetime``: its UTC wall
    time as the text SQLAlchemy's DATETIME writes (``YYYY-MM-DD HH:MM:SS.ffffff``, which
    is ``isoformat`` with microseconds), without its format dictionary. A naive one (or
    anything else) goes to ``process``, which refuses it."""

    def utc_text(value: Any) -> Any:
        if type(value) is not datetime or value.utcoffset() is None:
            return process(value)
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

    return utc_text


def _columns(rows: Sequence[Row]) -> list[tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
    """``rows``' values grouped by their columns, in order of first appearance. One group
    unless the journal replays rows of an older release (other columns)."""
    first = rows[0][0]
    if all(names is first for names, _ in rows):
        return [(first, [values for _, values in rows])]
    groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for names, values in rows:
        groups.setdefault(names, []).append(values)
    return list(groups.items())


def _collapse(rows: Sequence[Row]) -> tuple[list[Row], list[Row]]:
    """``writes.collapse_interactions`` for rows as tuples: one row per request without
    an interaction and one per interaction (the one the upsert would keep), in order."""
    plain: dict[str, tuple[Row, bool, int]] = {}
    by_interaction: dict[str, tuple[Row, bool, int]] = {}
    last: tuple[str, ...] | None = None
    at_iid = at_rid = at_provisional = at_total = 0
    for row in rows:
        names, values = row
        if names is not last:
            last = names
            try:
                at_iid, at_rid, at_provisional, at_total = map(names.index, _KEY_COLUMNS)
            except ValueError as exc:
                raise RowRefused(f"a usage row without a column of {_KEY_COLUMNS}") from exc
        iid, provisional, total = values[at_iid], values[at_provisional], values[at_total]
        kept, key = (plain, values[at_rid]) if iid is None else (by_interaction, iid)
        old = kept.get(key)
        if old is None or replaces(provisional, total, old[1], old[2]):
            kept[key] = (row, provisional, total)
    return [kept[0] for kept in plain.values()], [kept[0] for kept in by_interaction.values()]


_KEY_COLUMNS = ("interaction_id", "request_id", "provisional", "total_tokens")


class _OwnerStatements:
    """The owner rows' INSERT ... ON CONFLICT DO NOTHING and converter, per column set.

    ``visible_only``: on PostgreSQL, the statement's own transaction commits without
    waiting for its WAL to reach the disk (``synchronous_commit`` off for that transaction
    alone, set by the statement itself so that it takes no round trip of its own): the
    row is visible to every other connection when the statement returns, and its
    durability is the journal's (``OwnerCommits``).
    """

    def __init__(self, dialect: Dialect, *, visible_only: bool = False) -> None:
        self._dialect = dialect
        self._visible_only = visible_only
        self._by_names: dict[tuple[str, ...], tuple[str, Callable[..., Any]]] = {}

    def convert(self, rows: Sequence[Row]) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """The statement and the driver tuples of each column set among ``rows``."""
        out = []
        for names, values in _columns(rows):
            known = self._by_names.get(names)
            if known is None:
                known = self._by_names[names] = self._compile(names)
            sql, convert = known
            out.append((sql, convert(values)))
        return out

    def _compile(self, names: tuple[str, ...]) -> tuple[str, Callable[..., Any]]:
        table = table_of(Interaction)
        try:
            if self._visible_only and self._dialect.name == "postgresql":
                stmt = _insert_committing_asynchronously(table, names)
            else:
                stmt = insert_ignoring_in(self._dialect.name, table, "id")
            sql, order = _compile(stmt, self._dialect, names)
        except Exception as exc:  # a column the table does not have
            raise RowRefused(f"{type(exc).__name__}: {exc}") from exc
        return sql, row_converter(table, order, self._dialect, columns=names)


def _insert_committing_asynchronously(table: Table, names: tuple[str, ...]) -> Insert:
    """``INSERT ... SELECT <the row> WHERE set_config('synchronous_commit', 'off', true) =
    'off' ON CONFLICT (id) DO NOTHING``: outside a transaction, the setting holds for the
    statement's own and is gone with it (the pooled connection's next user has the
    server's setting)."""
    from sqlalchemy.dialects import postgresql

    row = select(*(bindparam(name, type_=table.c[name].type) for name in names)).where(
        text("set_config('synchronous_commit', 'off', true) = 'off'")
    )
    return (
        postgresql.insert(table)
        .from_select(list(names), row)
        .on_conflict_do_nothing(index_elements=["id"])
    )


# ------------------------------------------------------------------ SQLite


class _SqliteStatements:
    """The prepared statements and converters for one column set of usage rows."""

    def __init__(self, names: tuple[str, ...], dialect: Dialect) -> None:
        table = table_of(UsageRow)
        # Rows without an interaction are keyed by request_id: a replayed row changes
        # nothing, a provisional one (a Live session so far) is replaced by a later one.
        plain = upsert_replacing_provisional(sqlite.insert(table), table, names, "request_id")
        upsert = upsert_replacing_provisional(sqlite.insert(table), table, names)
        self.plain, order = _compile(plain, dialect, names)
        self.upsert, upsert_order = _compile(upsert, dialect, names)
        assert order == upsert_order
        self.convert = row_converter(table, order, dialect, columns=names)
        # The same statements inserting ``per_statement`` rows each (see _many_rows).
        self.per_statement = max(1, min(_ROWS_PER_STATEMENT, _sqlite_variables() // len(order)))
        self.plain_many = _many_rows(self.plain, self.per_statement)
        self.upsert_many = _many_rows(self.upsert, self.per_statement)


# Rows per multi-row INSERT on SQLite, within its limit of bound variables.
_ROWS_PER_STATEMENT = 64


@functools.cache
def _sqlite_variables() -> int:
    """How many values one SQLite statement may bind (32766 by default since SQLite 3.32,
    999 before; a build may set its own)."""
    connection = sqlite3.connect(":memory:")
    try:
        return connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    finally:
        connection.close()


def _many_rows(sql: str, count: int) -> str:
    """``sql``, an INSERT of one row ``VALUES (?, ...)``, made one of ``count`` rows.

    ``executemany`` hands the GIL back and forth for every statement it runs (it lets go
    while SQLite works, then binds the next row's values): with the event loop busy,
    each time back costs the writer's thread a wait for the loop to let go, up to the
    interpreter's switch interval. A statement of 64 rows takes it back 64 times less.
    SQLite runs the rows of one statement in order, as ``executemany`` would, each
    meeting the ON CONFLICT clause on its own.
    """
    start = sql.index(" VALUES (") + len(" VALUES ")
    end = sql.index(")", start) + 1
    group = sql[start:end]
    return f"{sql[:start]}{', '.join([group] * count)}{sql[end:]}"


# The writer's SQLite connection's page cache, in KiB (SQLite's default is 2000).
_WRITER_CACHE_KIB = 32 * 1024

# Statements with their rows as driver tuples, in the order they run.
_SqliteWork = list[tuple[str, list[tuple[Any, ...]]]]


def _connect(path: str, *pragmas: str, timeout: float = 5.0) -> sqlite3.Connection:
    """A connection to the SQLite file at ``path`` with the engine's settings and
    ``pragmas``; ``isolation_level=None``: transactions are the caller's explicit ones,
    and a statement outside one commits on its own. ``timeout``: how long opening it may
    wait for a lock held elsewhere."""
    connection = sqlite3.connect(path, isolation_level=None, timeout=timeout)
    try:
        _on_sqlite_connect(connection, None)
        for pragma in pragmas:
            connection.execute(pragma)
    except BaseException:
        connection.close()
        raise
    return connection


class _SqliteThread:
    """An SQLite connection opened and used in one thread of its own, closed in it."""

    def __init__(self, path: str, thread_name: str) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None
        self._closed = False
        # One thread: the connection is only ever used from it.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=thread_name)

    def _open(self, *pragmas: str) -> sqlite3.Connection:
        """The connection, opened at first use (``_connect``)."""
        if self._connection is None:
            self._connection = _connect(self._path, *pragmas)
        return self._connection

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        # queued behind work still running in the thread (a cancelled batch, a commit that
        # outlived its call): it finishes first
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class SqliteStore(_SqliteThread):
    """Batches into an SQLite file through the writer's own connection and thread."""

    # ``executemany`` takes the GIL back for every row it binds: a conversion thread
    # beside it makes the two wait on each other (fewer records/s in bench_writer, not
    # more), so the next batch is converted after this one, in the same thread.
    prepares_ahead = False

    def __init__(self, path: str, dialect: Dialect) -> None:
        # One thread, for conversion and writes.
        super().__init__(path, "gemini-meter-writer")
        self._dialect = dialect
        self._usage: dict[tuple[str, ...], _SqliteStatements] = {}
        self._owners = _OwnerStatements(dialect)

    async def prepare(self, usage: Sequence[Row], owners: Sequence[Row]) -> _SqliteWork:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._prepare, usage, owners)

    async def write(self, prepared: _SqliteWork) -> None:
        if prepared:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._write, prepared)

    def _statements(self, names: tuple[str, ...]) -> _SqliteStatements:
        statements = self._usage.get(names)
        if statements is None:
            statements = self._usage[names] = _SqliteStatements(names, self._dialect)
        return statements

    def _prepare(self, usage: Sequence[Row], owners: Sequence[Row]) -> _SqliteWork:
        """In the writer's thread: each statement with its rows as tuples."""
        work: _SqliteWork = []
        if owners:
            work.extend(self._owners.convert(owners))
        plain, interactions = _collapse(usage)
        for rows, upsert in ((plain, False), (interactions, True)):
            if not rows:
                continue
            for names, group in _columns(rows):
                statements = self._statements(names)
                tuples = statements.convert(group)
                per = statements.per_statement
                whole = len(tuples) - len(tuples) % per
                if whole and per > 1:
                    # each of them the values of ``per`` rows, for the multi-row INSERT
                    flat = [
                        tuple(chain.from_iterable(tuples[i : i + per]))
                        for i in range(0, whole, per)
                    ]
                    work.append((statements.upsert_many if upsert else statements.plain_many, flat))
                    tuples = tuples[whole:]
                if tuples:
                    work.append((statements.upsert if upsert else statements.plain, tuples))
        return work

    def _write(self, work: _SqliteWork) -> None:
        """In the connection's thread: one IMMEDIATE transaction."""
        connection = self._connect()
        try:
            # IMMEDIATE takes the write lock now (waiting up to busy_timeout for another
            # process's writer) rather than failing to upgrade a read lock midway.
            connection.execute("BEGIN IMMEDIATE")
            for sql, tuples in work:
                connection.executemany(sql, tuples)
            connection.execute("COMMIT")
        except (OverflowError, UnicodeEncodeError) as exc:
            # A value sqlite3 cannot bind (an integer past 64 bits, a lone surrogate): a
            # row's fault, which retrying the batch cannot mend. Refused, the batch is
            # tried row by row and only that row is given up, rather than retried forever.
            self._abandon(connection)
            raise RowRefused(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._abandon(connection)
            raise

    def _connect(self) -> sqlite3.Connection:
        # The transaction is the explicit BEGIN ... COMMIT above.
        return self._open(
            # A page cache of 32 MiB instead of 2: each batch inserts into seven B-trees
            # at random places (request ids), and pages kept from the last batch are not
            # read again (a fifth less CPU per row at 40k rows).
            f"PRAGMA cache_size=-{_WRITER_CACHE_KIB}",
            # Each INSERT of a batch runs in a statement transaction of its own (an ON
            # CONFLICT, a foreign key may abort it midway), whose journal of the pages it
            # changes SQLite spills to a temporary file past 64 KiB: two to three pwrite
            # calls per row here. Kept in memory, a fifth less CPU per row, and a
            # statement journal never outlives its statement.
            "PRAGMA temp_store=MEMORY",
        )

    def _abandon(self, connection: sqlite3.Connection) -> None:
        """After a failure: roll back, or drop the connection if even that fails."""
        try:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
        except sqlite3.Error:
            connection.close()
            self._connection = None


# ------------------------------------------------------------------ PostgreSQL

_INCOMING = "gemini_meter_incoming_usage"


class _PostgresStatements:
    """COPY target and INSERT ... SELECT statements for one column set of usage rows."""

    def __init__(self, names: tuple[str, ...], dialect: Dialect) -> None:
        # Here, not at the top: an SQLite server never loads the PostgreSQL dialect.
        from sqlalchemy.dialects import postgresql

        table = table_of(UsageRow)
        incoming = light_table(_INCOMING, *(column(name) for name in names))
        selected = [incoming.c[name] for name in names]
        no_interaction = select(*selected).where(incoming.c.interaction_id.is_(None))
        with_interaction = select(*selected).where(incoming.c.interaction_id.is_not(None))
        plain = postgresql.insert(table).from_select(names, no_interaction)
        upsert = postgresql.insert(table).from_select(names, with_interaction)
        by_request = upsert_replacing_provisional(plain, table, names, "request_id")
        self.plain = str(by_request.compile(dialect=dialect))
        self.upsert = str(
            upsert_replacing_provisional(upsert, table, names).compile(dialect=dialect)
        )
        self.names = names
        self.convert = row_converter(table, names, dialect, null=_CSV_NULL)


class _CsvNull(int):
    """SQL NULL in ``csv``'s output: a number, so ``QUOTE_NONNUMERIC`` leaves it
    unquoted, whose text is empty, which is what COPY's CSV format reads as NULL
    (``None`` would come out as ``""``, an empty string)."""

    def __str__(self) -> str:
        return ""


_CSV_NULL = _CsvNull()


def _csv(tuples: list[tuple[Any, ...]]) -> bytes:
    """Bound tuples as the data of a CSV ``COPY``, in C (``csv``): every string quoted
    (an empty one too), numbers and booleans bare, ``_CSV_NULL`` empty. Texts PostgreSQL
    reads back exactly: ``str`` of a ``Decimal``, ``repr`` of a float, ISO 8601 with the
    offset for a timestamp, ``True``/``False``."""
    buffer = io.StringIO()
    csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n").writerows(tuples)
    try:
        return buffer.getvalue().encode()
    except UnicodeEncodeError as exc:  # a lone surrogate in some row's text
        raise RowRefused(f"{type(exc).__name__}: {exc}") from exc


# The owner statements with their tuples, and per column set of usage rows its
# statements and CSV data.
_PostgresWork = tuple[
    list[tuple[str, list[tuple[Any, ...]]]], list[tuple[_PostgresStatements, bytes]]
]


class PostgresStore:
    """Batches into PostgreSQL by CSV COPY, on one connection the writer keeps.

    A batch is one transaction: its rows are COPYed straight into ``usage_records``
    under a savepoint. If one of them is already stored (a retried batch, a journal
    replay, an interaction's terminal row replacing its provisional one), the unique
    violation rolls the COPY back to the savepoint and the rows go the long way: COPY
    into a session-local temporary table, then ``INSERT ... SELECT ... ON CONFLICT``
    with ``storage.writes``' rules. A COPY that succeeds stored what those statements
    would have: no row met a conflict.
    """

    # The server does a batch's work: the next batch is converted meanwhile.
    prepares_ahead = True

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        dialect = engine.dialect
        self._dialect = dialect
        # Conversion (Decimal quantizing, JSON text) in a thread, off the event loop.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gemini-meter-writer")
        self._usage: dict[tuple[str, ...], _PostgresStatements] = {}
        self._owners = _OwnerStatements(dialect)
        self._table = table_of(UsageRow).name
        # Session-local, emptied at each COMMIT; the connection keeps it between
        # batches. Its columns are the live table's, whatever migration made them.
        self._create_incoming = (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {_INCOMING} ON COMMIT DELETE ROWS"
            f" AS SELECT * FROM {self._table} WITH NO DATA; TRUNCATE {_INCOMING}"
        )
        # Checked out once and kept: no pool round trips (and pings) per batch.
        self._connection: AsyncConnection | None = None
        self._driver: Any = None

    def _statements(self, names: tuple[str, ...]) -> _PostgresStatements:
        statements = self._usage.get(names)
        if statements is None:
            statements = self._usage[names] = _PostgresStatements(names, self._dialect)
        return statements

    async def prepare(self, usage: Sequence[Row], owners: Sequence[Row]) -> _PostgresWork:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._prepare, usage, owners)

    def _prepare(self, usage: Sequence[Row], owners: Sequence[Row]) -> _PostgresWork:
        """In the writer's thread: the owner statements with their tuples, and the usage
        rows' CSV per column set."""
        owner_work = self._owners.convert(owners) if owners else []
        plain, interactions = _collapse(usage)
        rows = [*plain, *interactions]
        groups = []
        if rows:
            for names, group in _columns(rows):
                statements = self._statements(names)
                groups.append((statements, _csv(statements.convert(group))))
        return owner_work, groups

    async def write(self, prepared: _PostgresWork) -> None:
        owner_work, groups = prepared
        if not owner_work and not groups:
            return
        driver = await self._connect()
        try:
            await driver.execute("BEGIN")
            for sql, tuples in owner_work:
                await driver.executemany(sql, tuples)
            for statements, data in groups:
                await self._copy(driver, statements, data)
            await driver.execute("COMMIT")
        except BaseException as exc:
            await self._recover(exc)
            raise

    async def _copy(self, driver: Any, statements: _PostgresStatements, data: bytes) -> None:
        columns = list(statements.names)
        await driver.execute("SAVEPOINT gemini_meter_copy")
        try:
            await driver.copy_to_table(
                self._table, source=_chunks(data), columns=columns, format="csv"
            )
            return
        except Exception as exc:
            if getattr(exc, "sqlstate", None) != _UNIQUE_VIOLATION:
                raise
        await driver.execute(f"ROLLBACK TO SAVEPOINT gemini_meter_copy; {self._create_incoming}")
        await driver.copy_to_table(_INCOMING, source=_chunks(data), columns=columns, format="csv")
        await driver.execute(f"{statements.plain}; {statements.upsert}")

    async def _connect(self) -> Any:
        if self._driver is None:
            connection = await self._engine.connect()
            try:
                raw = await connection.get_raw_connection()
            except BaseException:
                await connection.close()
                raise
            self._connection, self._driver = connection, raw.driver_connection
        return self._driver

    async def _recover(self, exc: BaseException) -> None:
        """After a failed batch: roll back and keep the connection if the failure was the
        rows'; otherwise drop it (it may be dead: a restarted server, a killed backend)."""
        if is_row_error(exc):
            try:
                await self._driver.execute("ROLLBACK")
                return
            except Exception:
                pass
        await self._drop()

    async def _drop(self) -> None:
        connection, self._connection, self._driver = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                # invalidated, not returned: the pool must not hand it out again
                await connection.invalidate()
            with contextlib.suppress(Exception):
                await connection.close()

    async def close(self) -> None:
        driver = self._driver
        if driver is not None and not driver.is_in_transaction():
            connection, self._connection, self._driver = self._connection, None, None
            assert connection is not None
            await connection.close()
        else:
            await self._drop()  # a batch was cut short mid-transaction
        self._executor.shutdown(wait=True)


_UNIQUE_VIOLATION = "23505"
# COPY data handed to the connection this many bytes at a time (a few hundred rows),
# letting requests run in between.
_CHUNK_BYTES = 256 * 1024


async def _chunks(data: bytes) -> AsyncIterator[memoryview]:
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK_BYTES):
        if start:
            await asyncio.sleep(0)
        yield view[start : start + _CHUNK_BYTES]


def is_row_error(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a store's ``write``, is about a row's content (a foreign
    key, a value out of range, one that cannot be bound), not about the database."""
    if isinstance(exc, RowRefused | sqlite3.IntegrityError | sqlite3.DataError):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        # PostgreSQL's classes 22 (data exception) and 23 (integrity constraint violation)
        return sqlstate[:2] in ("22", "23")
    # asyncpg's client-side DataError: a value it cannot encode for its column's type
    return isinstance(exc, ValueError) and type(exc).__module__.startswith("asyncpg")


# ------------------------------------------------------------------ the ORM fallback


class SessionStore:
    """Batches through SQLAlchemy sessions and ``storage.writes``' ORM statements."""

    prepares_ahead = False  # nothing to convert

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker

    async def prepare(
        self, usage: Sequence[Row], owners: Sequence[Row]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        # SQLAlchemy binds the values itself, by column name
        return (
            [dict(zip(names, values, strict=True)) for names, values in usage],
            [dict(zip(names, values, strict=True)) for names, values in owners],
        )

    async def write(self, prepared: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
        usage, owners = prepared
        async with self._sessionmaker.begin() as session:
            await insert_interaction_owners(session, owners)
            await insert_usage_rows(session, usage)

    async def close(self) -> None:
        pass


# ------------------------------------------------------------------ one owner, at once


class OwnerCommits(Protocol):
    """Stores one row of ``interactions`` (``writes.owner_row``) and commits it before
    returning, visible to every other connection: what ``Authenticator.commit_owner``
    waits on before an interaction's id is released, on a streamed interaction's way to
    its first byte.

    Visible, not necessarily on the disk: on SQLite and PostgreSQL the commit does not
    wait for a sync (a process that dies keeps it; a machine that fails may not). The row
    was journaled first (``owned.register_owner``), and the journal's group commit makes
    it durable as it does every record, for the writer to store again (the insert is
    idempotent). What the sync cost an interaction's first byte: docs/benchmarks.md.
    """

    def commit_now(self, row: tuple[Any, ...]) -> bool:
        """Commit the row at once, without awaiting, where the database allows it (SQLite
        with its write lock free); False when it is left for ``commit``."""
        ...

    async def commit(self, row: tuple[Any, ...]) -> None:
        """Commit the row, waiting as the database needs (a round trip, a lock held
        elsewhere)."""
        ...

    async def close(self) -> None: ...


class SqliteOwners(_SqliteThread):
    """The owner's ``INSERT ... ON CONFLICT (id) DO NOTHING`` in autocommit, on the event
    loop itself when SQLite's write lock is free, else in a thread of its own.

    The insert does not sync (``OwnerCommits``), so with the lock free it is a write into
    the kernel's page cache, as the journal's append is: some 30 µs on a warm core, and
    the hop to a thread and back cost an interaction's first byte more than the insert
    itself (docs/benchmarks.md). The loop's connection never waits: no busy time-out (a
    lock held elsewhere answers at once, and the thread's connection, which waits for it,
    takes the row) and no automatic checkpoint (the writer's connection checkpoints, and
    a checkpoint syncs). The thread is not the writer's, so it never waits behind a batch
    being converted; a commit waiting there on another writer's lock holds up the next
    ones that find the lock taken, which time out to the writer's queue meanwhile."""

    # What the loop's connection does differently from the thread's (``_on_sqlite_connect``
    # first, as for every connection).
    _LOOP_PRAGMAS = ("PRAGMA busy_timeout=0", "PRAGMA wal_autocheckpoint=0")

    def __init__(self, path: str, dialect: Dialect) -> None:
        super().__init__(path, "gemini-meter-owners")
        self._statements = _OwnerStatements(dialect)
        self._loop_connection: sqlite3.Connection | None = None

    def commit_now(self, row: tuple[Any, ...]) -> bool:
        return self._insert_on_the_loop(*self._converted(row))

    async def commit(self, row: tuple[Any, ...]) -> None:
        # In the thread, whose connection waits for a lock held elsewhere.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._insert, *self._converted(row))

    def _converted(self, row: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        ((sql, values),) = self._statements.convert([(OWNER_COLUMNS, row)])
        return sql, values[0]

    def _insert_on_the_loop(self, sql: str, values: tuple[Any, ...]) -> bool:
        """The insert on the loop's connection (opened at first use, without waiting
        either); False, having changed nothing, when another connection holds a lock."""
        try:
            if self._loop_connection is None:
                self._loop_connection = _connect(
                    self._path, _NO_SYNC, *self._LOOP_PRAGMAS, timeout=0
                )
            self._loop_connection.execute(sql, values)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return False
            raise
        return True

    def _insert(self, sql: str, values: tuple[Any, ...]) -> None:
        # Outside a transaction: the statement is its own, committed when it returns
        # (in WAL with synchronous=NORMAL, written and not synced: OwnerCommits).
        self._open(_NO_SYNC).execute(sql, values)

    async def close(self) -> None:
        if self._loop_connection is not None:
            self._loop_connection.close()
            self._loop_connection = None
        await super().close()


# In WAL, a commit writes the WAL and does not sync it (a checkpoint still does).
_NO_SYNC = "PRAGMA synchronous=NORMAL"


class PostgresOwners:
    """The owner's ``INSERT ... ON CONFLICT (id) DO NOTHING`` on a pooled connection's
    asyncpg driver, outside any transaction (autocommit): one round trip, where the ORM's
    session took three (BEGIN, INSERT, COMMIT), and a commit that does not wait for the
    WAL's flush (``_insert_committing_asynchronously``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._statements = _OwnerStatements(engine.dialect, visible_only=True)

    def commit_now(self, row: tuple[Any, ...]) -> bool:
        return False  # a round trip: only ``commit``

    async def commit(self, row: tuple[Any, ...]) -> None:
        ((sql, values),) = self._statements.convert([(OWNER_COLUMNS, row)])
        async with self._engine.connect() as connection:
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None  # a checked-out connection has its driver's
            # (a connection that died since is caught at its next checkout: the engine
            # pings each one it hands out)
            await driver.execute(sql, *values[0])

    async def close(self) -> None:
        pass


class SessionOwners(SessionStore):
    """The owner's row as the writer's ORM fallback stores a batch of one: any database
    SQLAlchemy drives."""

    def commit_now(self, row: tuple[Any, ...]) -> bool:
        return False  # the session's driver: only ``commit``

    async def commit(self, row: tuple[Any, ...]) -> None:
        await self.write(await self.prepare([], [(OWNER_COLUMNS, row)]))


# ------------------------------------------------------------------ choosing


def batch_store(sessionmaker: async_sessionmaker[AsyncSession]) -> BatchStore:
    """The fastest store for the engine ``sessionmaker`` is bound to."""
    postgres: Callable[[AsyncEngine], BatchStore] = PostgresStore  # (the three's one type)
    return _fastest(sessionmaker, postgres, SqliteStore, SessionStore)


def owner_commits(sessionmaker: async_sessionmaker[AsyncSession]) -> OwnerCommits:
    """The fastest way to commit one owner for the engine ``sessionmaker`` is bound to."""
    postgres: Callable[[AsyncEngine], OwnerCommits] = PostgresOwners  # (the three's one type)
    return _fastest(sessionmaker, postgres, SqliteOwners, SessionOwners)


def _fastest(
    sessionmaker: async_sessionmaker[AsyncSession],
    on_asyncpg: Callable[[AsyncEngine], T],
    on_sqlite_file: Callable[[str, Dialect], T],
    otherwise: Callable[[async_sessionmaker[AsyncSession]], T],
) -> T:
    """The driver's own way for asyncpg and for an SQLite file another connection can
    open; the ORM's session for anything else (``:memory:``, a URI with options, a
    sessionmaker bound to no engine)."""
    engine = getattr(sessionmaker, "kw", {}).get("bind")
    if isinstance(engine, AsyncEngine):
        dialect, database = engine.dialect, engine.url.database
        if dialect.name == "postgresql" and dialect.driver == "asyncpg":
            return on_asyncpg(engine)
        if dialect.name == "sqlite" and database and database != ":memory:":
            if not engine.url.query and not database.startswith("file:"):
                return on_sqlite_file(database, dialect)
    return otherwise(sessionmaker)


def _compile(stmt: Insert, dialect: Dialect, names: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """``stmt`` as SQL text for ``dialect`` with a parameter per name, and the order of
    those parameters."""
    compiled = stmt.compile(dialect=dialect, column_keys=list(names))
    assert compiled.positiontup is not None
    return compiled.string, tuple(compiled.positiontup)
