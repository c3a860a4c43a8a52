"""proxy.storage.bulk: the writer's fast path stores exactly what SQLAlchemy's ORM path stores."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.dialects.sqlite.aiosqlite import dialect as aiosqlite_dialect

from proxy.metering.records import UNPRICED, Cost, EndpointKind, Principal, Usage
from proxy.storage.accounts import create_key, principal_for_user
from proxy.storage.bulk import (
    PostgresStore,
    RowRefused,
    SessionStore,
    SqliteStore,
    batch_store,
    row_converter,
)
from proxy.storage.journal import USAGE, Entry
from proxy.storage.schema import Money, UsageRow
from proxy.storage.writer import UsageWriter
from proxy.storage.writes import (
    USAGE_COLUMNS,
    insert_usage_rows,
    table_of,
    usage_row,
    usage_values,
)

SECRET = b"test-secret-test-secret-test-sec"
# Every column but the surrogate key and the two the records differ in by necessity.
UNIQUE = {"id", "request_id", "interaction_id"}
EST = timezone(timedelta(hours=-5))


@pytest.fixture
async def principal(sessionmaker) -> Principal:
    async with sessionmaker.begin() as session:
        info, _ = await create_key(session, SECRET, "alice", "ml")
    return Principal(info.user_id, "alice", info.team_id, "ml", info.id)


def _full_record(make_record, principal: Principal, **overrides: Any):
    """A record with every field set, money beyond 12 places, a non-UTC timestamp."""
    values: dict[str, Any] = {
        "created_at": datetime(
            2026, 3, 1, 23, 59, 58, 123456, tzinfo=timezone(timedelta(hours=-5))
        ),
        "model": "gemini-2.5-pro",
        "endpoint": EndpointKind.INTERACTION_CREATE,
        "streamed": True,
        "upstream_status": 201,
        "latency_seconds": 12.345678901234,
        "ttfb_seconds": None,
        "usage": Usage(
            input_tokens=1000,
            cached_tokens=400,
            intermediate_tokens=70,
            output_tokens=200,
            thinking_tokens=300,
            total_tokens=1571,
            input_by_modality={"TEXT": 742, "IMAGE": 258},
            cached_by_modality={"TEXT": 400},
            intermediate_by_modality={"TEXT": 70},
            output_by_modality={"TEXT": 200},
            grounding={"google_search": 2},
            images=1,
            video_seconds=8,
            storage_token_seconds=3600,
        ),
        "interaction_id": "v1_int",
        "resource": "cachedContents/abc",
        "response_id": "resp-1",
        "previous_interaction_id": "v1_prev",
        "requested_service_tier": "flex",
        "effective_service_tier": "standard",
        "labels": {"project": "x", "ünïcode": '✓ "quoted"'},
        "code_execution_calls": 3,
        "code_execution_errors": 1,
        "parse_error": True,
        "client_disconnected": True,
        "provisional": True,
        "estimated": True,
        "unmetered_route": False,
        "cost": Cost(
            # half-even at the 12th place: ...5 rounds to even, ...51 rounds up
            total=Decimal("1234.0000000000005"),
            input=Decimal("0.0000000000015"),
            cached=Decimal("-0.0000000000025"),
            intermediate=Decimal("0"),
            output=Decimal("0.00000000000251"),
            thinking=Decimal("9000000"),
            grounding=Decimal("0.035"),
            media=Decimal("3"),
            storage=Decimal("0.000001"),
            catalog_version="2026-03+user.abcdef",
        ),
    }
    values.update(overrides)
    return make_record(principal, **values)


def _entry(values: dict[str, Any]) -> Entry:
    """A row as the journal replays it: by its column names (an older release's
    columns, in an older frame format), the current columns being the layout's own."""
    names = tuple(values)
    return Entry(USAGE, USAGE_COLUMNS if names == USAGE_COLUMNS else names, (*values.values(),), 0)


async def _raw(sessionmaker, request_id: str) -> dict[str, Any]:
    """The row as the database holds it, below SQLAlchemy's types: SQLite's stored values
    with their Python types (an integer is not a float), PostgreSQL's text of each value."""
    names = [c.name for c in table_of(UsageRow).columns if c.name not in UNIQUE]
    async with sessionmaker() as session:
        postgres = session.get_bind().dialect.name == "postgresql"
        columns = ", ".join(f"CAST({n} AS TEXT) AS {n}" if postgres else n for n in names)
        result = await session.execute(
            text(f"SELECT {columns} FROM usage_records WHERE request_id = :r"),
            {"r": request_id},
        )
        row = result.mappings().one()
    return {name: (type(row[name]).__name__, row[name]) for name in names}


async def _orm(sessionmaker, request_id: str) -> dict[str, Any]:
    async with sessionmaker() as session:
        row = await session.scalar(select(UsageRow).where(UsageRow.request_id == request_id))
    assert row is not None
    return {c.name: getattr(row, c.key) for c in table_of(UsageRow).columns if c.name not in UNIQUE}


@pytest.mark.parametrize("priced", [True, False], ids=["priced", "unpriced"])
async def test_the_fast_path_stores_what_the_orm_path_stores(
    sessionmaker, principal, make_record, db_kind, priced
):
    # unpriced, and empty labels and grounding (the JSON columns' shortcut)
    cost = {} if priced else {"cost": UNPRICED, "labels": {}}
    orm, fast = (
        _full_record(make_record, principal, interaction_id=f"v1_{path}", **cost)
        for path in ("orm", "fast")
    )
    orm_plain, fast_plain = (
        _full_record(make_record, principal, interaction_id=None, provisional=False, **cost)
        for _ in range(2)
    )
    async with sessionmaker.begin() as session:
        await insert_usage_rows(session, [usage_values(orm), usage_values(orm_plain)])
    writer = UsageWriter(sessionmaker)
    assert isinstance(writer._store, SqliteStore if db_kind == "sqlite" else PostgresStore)
    await writer.start()
    writer.submit(fast)  # an interaction's row: the upsert
    writer.submit(fast_plain)  # the other statement: INSERT ... ON CONFLICT DO NOTHING
    await writer.close()
    assert writer.written_total == 2

    # the same values in the database (SQLite: money in integer units, the timestamp's
    # text, the JSON text; PostgreSQL: the text of its own types) ...
    reference = await _raw(sessionmaker, orm.request_id)
    assert await _raw(sessionmaker, fast.request_id) == reference
    assert await _raw(sessionmaker, fast_plain.request_id) == await _raw(
        sessionmaker, orm_plain.request_id
    )
    assert (
        reference["provisional"] != (await _raw(sessionmaker, fast_plain.request_id))["provisional"]
    )
    # ... and the same values through the ORM models, checked against hand-worked ones
    stored = await _orm(sessionmaker, fast.request_id)
    assert stored == await _orm(sessionmaker, orm.request_id)
    assert stored["created_at"] == datetime(2026, 3, 2, 4, 59, 58, 123456, tzinfo=UTC)
    assert stored["modalities"] == {
        "input": {"TEXT": 742, "IMAGE": 258},
        "cached": {"TEXT": 400},
        "intermediate": {"TEXT": 70},
        "output": {"TEXT": 200},
    }
    assert stored["labels"] == ({"project": "x", "ünïcode": '✓ "quoted"'} if priced else {})
    assert (stored["images"], stored["video_seconds"], stored["resource"]) == (
        1,
        8,
        "cachedContents/abc",
    )
    if priced:
        assert (stored["cost_usd"], stored["cost_input_usd"], stored["cost_cached_usd"]) == (
            Decimal("1234.000000000000"),
            Decimal("0.000000000002"),
            Decimal("-0.000000000002"),
        )
        assert stored["cost_output_usd"] == Decimal("0.000000000003")
        assert stored["cost_thinking_usd"] == Decimal("9000000")
        assert (stored["catalog_version"], stored["unpriced"]) == ("2026-03+user.abcdef", False)
    else:
        assert stored["cost_usd"] is None and stored["unpriced"] is True
    if db_kind == "sqlite" and priced:
        assert reference["cost_input_usd"] == ("int", 2)  # units of 1e-12 USD
    if db_kind == "sqlite":
        assert reference["created_at"] == ("str", "2026-03-02 04:59:58.123456")


async def test_text_a_copy_must_quote_or_escape_is_stored_as_it_came(
    sessionmaker, principal, make_record
):
    # PostgreSQL's rows travel as COPY text: an empty string must stay apart from NULL,
    # and separators, quotes, line breaks, backslashes and the words COPY reads as NULL
    # must arrive as they were given.
    awkward = 'a,"b"\n\\N\r\tc'
    fields: dict[str, Any] = {
        "resource": "",
        "response_id": None,
        "previous_interaction_id": awkward,
        "requested_service_tier": "\\N",
        "effective_service_tier": "NULL",
        "latency_seconds": 1e-05,
        "ttfb_seconds": 0.1,
        "labels": {"k": awkward, "": ""},
    }
    orm, fast = (
        _full_record(make_record, principal, interaction_id=None, **fields) for _ in range(2)
    )
    async with sessionmaker.begin() as session:
        await insert_usage_rows(session, [usage_values(orm)])
    writer = UsageWriter(sessionmaker)
    await writer.start()
    writer.submit(fast)
    await writer.close()
    assert writer.written_total == 1 and writer.failed_rows_total == 0
    assert await _raw(sessionmaker, fast.request_id) == await _raw(sessionmaker, orm.request_id)
    stored = await _orm(sessionmaker, fast.request_id)
    assert {name: stored[name] for name in fields} == fields


async def test_a_batch_with_rows_of_an_older_column_set_stores_both(
    sessionmaker, principal, make_record
):
    # A journal written by an older version replays rows without the newest columns:
    # they take the columns' server defaults, next to current rows in the same batch.
    current = usage_values(make_record(principal))
    older = usage_values(make_record(principal))
    for name in ("resource", "images", "video_seconds", "storage_token_seconds"):
        del older[name]
    writer = UsageWriter(sessionmaker)
    writer.replay([_entry(older), _entry(current)])
    await writer.start()
    await writer.close()
    assert (writer.written_total, writer.failed_rows_total) == (2, 0)
    stored = await _orm(sessionmaker, older["request_id"])
    assert (stored["images"], stored["video_seconds"], stored["resource"]) == (0, 0, None)
    assert (await _orm(sessionmaker, current["request_id"]))["model"] == current["model"]


async def test_a_batch_with_a_row_already_stored_stores_the_others_once(
    sessionmaker, principal, make_record
):
    # PostgreSQL's COPY fails on the stored row and the batch goes the ON CONFLICT way
    stored = make_record(principal)
    provisional = make_record(
        principal, interaction_id="v1_p", provisional=True, usage=Usage(total_tokens=5)
    )
    writer = UsageWriter(sessionmaker)
    await writer.start()
    writer.submit(stored)
    writer.submit(provisional)
    await writer.flush()
    terminal = make_record(principal, interaction_id="v1_p", usage=Usage(total_tokens=9))
    fresh = [make_record(principal) for _ in range(3)]
    for record in [fresh[0], stored, fresh[1], terminal, fresh[2]]:
        writer.submit(record)
    await writer.close()
    assert (writer.failed_batches_total, writer.failed_rows_total) == (0, 0)
    async with sessionmaker() as session:
        rows = (await session.execute(select(UsageRow.request_id, UsageRow.total_tokens))).all()
    expected = {r.request_id: r.usage.total_tokens for r in [stored, terminal, *fresh]}
    assert sorted(rows) == sorted(expected.items())


async def test_one_batch_holding_a_duplicate_and_an_interaction_s_successive_rows(
    sessionmaker, principal, make_record
):
    # Everything below lands in one batch (one COPY on PostgreSQL): a record twice (a
    # replayed row next to its original), an interaction's provisional row, its terminal
    # row, then a later provisional one that must not replace the terminal one.
    twice = make_record(principal)
    rows = [
        usage_values(twice),
        usage_values(
            make_record(
                principal, interaction_id="v1_x", provisional=True, usage=Usage(total_tokens=5)
            )
        ),
        usage_values(twice),
        usage_values(make_record(principal, interaction_id="v1_x", usage=Usage(total_tokens=9))),
        usage_values(
            make_record(
                principal, interaction_id="v1_x", provisional=True, usage=Usage(total_tokens=12)
            )
        ),
    ]
    writer = UsageWriter(sessionmaker)
    writer.replay([_entry(values) for values in rows])
    await writer.start()
    await writer.close()
    assert (writer.written_total, writer.failed_batches_total, writer.failed_rows_total) == (
        5,
        0,
        0,
    )
    async with sessionmaker() as session:
        stored = (
            await session.execute(
                select(UsageRow.request_id, UsageRow.total_tokens, UsageRow.provisional)
            )
        ).all()
    # the duplicate stored once; the interaction's terminal row (9 tokens) kept
    assert sorted(stored) == sorted(
        [(twice.request_id, twice.usage.total_tokens, False), (rows[3]["request_id"], 9, False)]
    )


async def test_a_batch_of_many_rows_keeps_the_conflict_rules_in_multi_row_statements(
    sessionmaker, principal, make_record, db_kind
):
    # SQLite writes a large batch 64 rows to an INSERT (PostgreSQL: one COPY, which meets
    # the stored rows and goes the ON CONFLICT way): every rule still holds row by row.
    stored = make_record(principal, usage=Usage(total_tokens=3))
    pending = make_record(
        principal, interaction_id="v1_m", provisional=True, usage=Usage(total_tokens=5)
    )
    final = make_record(principal, interaction_id="v1_f", usage=Usage(total_tokens=9))
    writer = UsageWriter(sessionmaker)
    await writer.start()
    for record in (stored, pending, final):
        writer.submit(record)
    await writer.flush()

    fresh = [make_record(principal) for _ in range(130)]
    interactions = [make_record(principal, interaction_id=f"v1_{n}") for n in range(70)]
    again = make_record(principal, request_id=stored.request_id, usage=Usage(total_tokens=7))
    terminal = make_record(principal, interaction_id="v1_m", usage=Usage(total_tokens=12))
    late = make_record(
        principal, interaction_id="v1_f", provisional=True, usage=Usage(total_tokens=20)
    )
    batch = [*fresh[:60], again, *interactions[:40], terminal, *fresh[60:], late]
    batch += interactions[40:]
    if db_kind == "sqlite":
        assert isinstance(writer._store, SqliteStore)
        work = writer._store._prepare([(USAGE_COLUMNS, usage_row(r)) for r in batch], [])
        # the plain rows: two statements of 64 rows, then 3 by executemany; the
        # interactions' rows: one of 64 and 8 more
        assert [len(params) for _, params in work] == [2, 3, 1, 8]
        assert [len(params[0]) for _, params in work] == [64 * 48, 48, 64 * 48, 48]
    for record in batch:
        writer.submit(record)
    await writer.close()
    assert (writer.failed_batches_total, writer.failed_rows_total) == (0, 0)
    async with sessionmaker() as session:
        rows = (
            await session.execute(
                select(UsageRow.request_id, UsageRow.total_tokens, UsageRow.provisional)
            )
        ).all()
    expected = {
        stored.request_id: (3, False),  # a final row is never replaced
        terminal.request_id: (12, False),  # the provisional one is
        final.request_id: (9, False),  # not by a later provisional one
        **{r.request_id: (15, False) for r in [*fresh, *interactions]},
    }
    assert {r: (t, p) for r, t, p in rows} == expected


async def test_two_writers_on_one_database_both_get_through(sessionmaker, make_record):
    # `serve --workers N` on the embedded default: each process has its own writer and
    # connection, and they take turns for the write lock (BEGIN IMMEDIATE, busy_timeout)
    async with sessionmaker.begin() as session:
        alice = await principal_for_user(session, "alice")
    writers = [UsageWriter(sessionmaker, batch_size=25, flush_interval=0.001) for _ in range(2)]
    records = [make_record(alice) for _ in range(400)]
    for writer in writers:
        await writer.start()
    for index, record in enumerate(records):
        writers[index % 2].submit(record)
        if index % 50 == 0:
            await asyncio.sleep(0)
    await asyncio.gather(*(writer.close() for writer in writers))
    async with sessionmaker() as session:
        stored = set(await session.scalars(select(UsageRow.request_id)))
    assert stored == {record.request_id for record in records}
    assert sum(w.failed_batches_total + w.failed_rows_total for w in writers) == 0


def test_an_in_memory_sqlite_database_uses_the_orm_path():
    # a second connection would see another, empty, database
    from proxy.storage.schema import make_engine, make_sessionmaker

    engine = make_engine("sqlite+aiosqlite://")
    assert isinstance(batch_store(make_sessionmaker(engine)), SessionStore)


def test_the_sqlite_writer_keeps_statement_journals_in_memory(tmp_path):
    # Spilled to a temporary file, a batch's statement journals cost pwrite calls per row.
    from proxy.storage.schema import make_engine, make_sessionmaker

    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'meter.db'}")
    store = batch_store(make_sessionmaker(engine))
    assert isinstance(store, SqliteStore)
    connection = store._connect()
    try:
        assert connection.execute("PRAGMA temp_store").fetchone() == (2,)  # MEMORY
    finally:
        store._close()


# ------------------------------------------------------------------ money, value by value

_DIALECTS = [
    pytest.param(aiosqlite_dialect(), id="sqlite"),
    pytest.param(asyncpg_dialect(), id="pg"),  # type: ignore[no-untyped-call]
]


def _outcome(function: Callable[[Any], Any], value: Any) -> tuple[str, Any]:
    try:
        return ("value", function(value))
    except (ValueError, TypeError, AttributeError, ArithmeticError):
        return ("error", None)


@pytest.mark.parametrize("dialect", _DIALECTS)
@given(
    value=st.one_of(
        st.decimals(allow_nan=True, allow_infinity=True),
        st.decimals(min_value=Decimal("-1e7"), max_value=Decimal("1e7"), places=14),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False),
        st.sampled_from(
            [
                Decimal("9223372.036854775807"),  # the largest SQLite amount
                Decimal("9223372.0368547758075"),  # rounds past it
                Decimal("-9223372.036854775808"),
                Decimal("9999999999999999.9999999999995"),  # rounds to NUMERIC's limit
                Decimal("1E+16"),
                Decimal("sNaN"),
                Decimal("0"),
                Decimal("-0"),
                Decimal("0E+30"),
                Decimal("-0E-30"),
            ]
        ),
    )
)
def test_money_is_bound_as_sqlalchemy_binds_it(dialect, value):
    # The reference is SQLAlchemy's own bind processor for Money on the dialect.
    reference = Money().dialect_impl(dialect).bind_processor(dialect)
    assert reference is not None
    table = table_of(UsageRow)
    convert = row_converter(table, ["cost_usd"], dialect)

    def fast(amount):
        try:
            return convert([(amount,)])[0][0]
        except RowRefused as exc:
            raise ValueError(str(exc)) from exc

    expected, got = _outcome(reference, value), _outcome(fast, value)
    assert got == expected
    if expected[0] == "value":
        assert type(got[1]) is type(expected[1])
        if isinstance(expected[1], Decimal):
            assert str(got[1]) == str(expected[1])  # the same exponent, not only equal


def _bound_alone(column: str, dialect):
    """A function of one value: ``column``'s value as ``row_converter`` binds it on
    ``dialect``, a refusal raised as ``ValueError`` (as SQLAlchemy's processors raise)."""
    convert = row_converter(table_of(UsageRow), [column], dialect)

    def bound(value):
        try:
            return convert([(value,)])[0][0]
        except RowRefused as exc:
            raise ValueError(str(exc)) from exc

    return bound


@pytest.mark.parametrize("dialect", _DIALECTS)
@given(
    value=st.one_of(
        st.datetimes(
            timezones=st.sampled_from([UTC, EST, timezone(timedelta(hours=13, minutes=45))]),
            min_value=datetime(1, 1, 2),
            max_value=datetime(9999, 12, 30),
        ),
        st.datetimes(),  # naive: refused
        st.sampled_from(["2026-03-01 00:00:00", 0]),
    )
)
def test_a_timestamp_is_bound_as_sqlalchemy_binds_it(dialect, value):
    # The reference is SQLAlchemy's own bind processor for UTCDateTime on the dialect.
    reference = table_of(UsageRow).c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
    fast = _bound_alone("created_at", dialect)

    def expected_of(timestamp):
        return reference(timestamp) if reference is not None else timestamp

    expected, got = _outcome(expected_of, value), _outcome(fast, value)
    assert got == expected
    if dialect.name == "sqlite" and value == datetime(2026, 3, 1, 23, 59, 58, 123456, tzinfo=EST):
        assert got == ("value", "2026-03-02 04:59:58.123456")


@pytest.mark.parametrize("dialect", _DIALECTS)
@pytest.mark.parametrize("value", [True, False, None, 1, 0, 2, "yes", 1.0])
def test_a_flag_is_bound_as_sqlalchemy_binds_it(dialect, value):
    # On SQLite the reference is SQLAlchemy's own bind processor for Boolean (1 or 0, and
    # an error for what is not a bool). asyncpg's COPY takes the bool itself.
    column = table_of(UsageRow).c.streamed
    reference = column.type.dialect_impl(dialect).bind_processor(dialect)
    fast = _bound_alone("streamed", dialect)

    def expected_of(flag):
        if dialect.name != "sqlite":
            return flag
        assert reference is not None
        return reference(flag)

    expected, got = _outcome(expected_of, value), _outcome(fast, value)
    assert got == expected
    if dialect.name == "sqlite" and isinstance(value, bool):
        # an int, which sqlite3 binds without its adapter lookup
        assert got == ("value", int(value)) and type(got[1]) is int


def test_a_timestamp_is_stored_on_sqlite_as_utc_wall_time_with_microseconds():
    convert = row_converter(table_of(UsageRow), ["created_at"], aiosqlite_dialect())
    # 23:59:58 at UTC-5 is 04:59:58 the next day in UTC; whole seconds keep ".000000"
    assert convert([(datetime(2026, 3, 1, 23, 59, 58, tzinfo=EST),)]) == [
        ("2026-03-02 04:59:58.000000",)
    ]
    # a value of the wrong type is the row's fault (isolated), not the database's (retried)
    with pytest.raises(RowRefused):
        convert([("2026-03-01 23:59:58",)])
