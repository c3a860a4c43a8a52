"""proxy.storage.schema: money and timestamp types, the UTC day function, engine settings."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, StatementError

from proxy.metering.records import Cost, Principal
from proxy.storage.accounts import get_or_create_user
from proxy.storage.schema import UsageRow, make_engine, quantize_money, utc_day
from proxy.storage.writes import insert_usage_rows, usage_values


async def _insert(
    sessionmaker: Any, make_record: Any, costs: Iterable[Any] = (), **overrides: Any
) -> None:
    async with sessionmaker.begin() as session:
        user = await get_or_create_user(session, "alice", None)
        principal = Principal(user.id, user.name)
        rows = [usage_values(make_record(principal, cost=Cost(total=c))) for c in costs]
        if overrides:
            rows.append(usage_values(make_record(principal, **overrides)))
        await insert_usage_rows(session, rows)


async def _costs(sessionmaker: Any) -> list[Decimal | None]:
    async with sessionmaker() as session:
        return list(await session.scalars(select(UsageRow.cost_usd).order_by(UsageRow.id)))


# ----------------------------------------------------------------------- money


def test_quantize_money_rounds_half_even_to_12_places():
    assert quantize_money(Decimal("0.0000000000005")) == Decimal(0)
    assert quantize_money(Decimal("0.0000000000015")) == Decimal("0.000000000002")
    assert quantize_money(Decimal("0.0000000000025")) == Decimal("0.000000000002")
    assert quantize_money(Decimal("-0.0000000000035")) == Decimal("-0.000000000004")
    assert quantize_money(3) == Decimal("3.000000000000")
    assert quantize_money(Decimal("1.5")).as_tuple().exponent == -12


@pytest.mark.parametrize(
    "value, error",
    [
        (0.1, TypeError),
        (True, TypeError),
        ("0.1", TypeError),
        (Decimal("NaN"), ValueError),
        (Decimal("Infinity"), ValueError),
        (Decimal("1E16"), ValueError),
    ],
)
def test_quantize_money_refuses_what_is_not_exact_money(value, error):
    with pytest.raises(error):
        quantize_money(value)


async def test_money_round_trips_exactly(sessionmaker, make_record, db_kind):
    values = [
        Decimal("0.000000123456"),
        Decimal("0.000000000001"),
        Decimal("0"),
        Decimal("-0.25"),
        Decimal("1234567.123456789012"),
        Decimal("9223372.036854775807"),  # the largest amount SQLite can hold
        None,
    ]
    if db_kind == "postgresql":
        values.append(Decimal("9999999999999999.999999999999"))
    await _insert(sessionmaker, make_record, values)

    stored = await _costs(sessionmaker)
    assert stored == values
    assert all(isinstance(v, Decimal) for v in stored if v is not None)


async def test_money_is_rounded_half_even_when_stored(sessionmaker, make_record):
    await _insert(
        sessionmaker,
        make_record,
        [Decimal("0.0000000000005"), Decimal("0.0000000000015"), Decimal("0.12345678901249")],
    )
    assert await _costs(sessionmaker) == [
        Decimal("0"),
        Decimal("0.000000000002"),
        Decimal("0.123456789012"),
    ]


async def test_money_is_exact_fixed_point_in_the_database(sessionmaker, make_record, db_kind):
    await _insert(sessionmaker, make_record, [Decimal("0.000000123456")])
    async with sessionmaker() as session:
        if db_kind == "sqlite":
            row = (
                await session.execute(text("SELECT typeof(cost_usd), cost_usd FROM usage_records"))
            ).one()
            assert tuple(row) == ("integer", 123456)
        else:
            row = (
                await session.execute(
                    text(
                        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                        "WHERE attrelid = 'usage_records'::regclass AND attname = 'cost_usd'"
                    )
                )
            ).one()
            assert row[0] == "numeric(28,12)"


async def test_sum_stays_exact(sessionmaker, make_record):
    # 0.1 is the classic binary-float trap; a thousand picodollars the scale's edge.
    await _insert(sessionmaker, make_record, [Decimal("0.1")] * 3 + [Decimal("1E-12")] * 1000)
    async with sessionmaker() as session:
        total = await session.scalar(select(func.sum(UsageRow.cost_usd)))
        tiny = await session.scalar(
            select(func.sum(UsageRow.cost_usd)).where(UsageRow.cost_usd < Decimal("0.01"))
        )
    assert isinstance(total, Decimal)
    assert total == Decimal("0.300000001")
    assert tiny == Decimal("0.000000001")


async def test_sum_of_large_amounts(sessionmaker, make_record, db_kind):
    if db_kind == "postgresql":
        await _insert(sessionmaker, make_record, [Decimal("9999999999999999.999999999999")] * 3)
        async with sessionmaker() as session:
            total = await session.scalar(select(func.sum(UsageRow.cost_usd)))
        assert total == Decimal("29999999999999999.999999999997")
    else:
        # SQLite's 64-bit integers hold about 9.2 million dollars at 1e-12
        # resolution; past that SUM() fails loudly rather than going inexact.
        await _insert(sessionmaker, make_record, [Decimal("5000000.000000000001")] * 2)
        async with sessionmaker() as session:
            with pytest.raises(DBAPIError, match="integer overflow"):
                await session.scalar(select(func.sum(UsageRow.cost_usd)))


async def test_money_beyond_the_storable_range_is_refused(sessionmaker, make_record, db_kind):
    amount = Decimal("10000000") if db_kind == "sqlite" else Decimal("1E16")
    with pytest.raises(StatementError, match="exceeds"):
        await _insert(sessionmaker, make_record, [amount])
    assert await _costs(sessionmaker) == []


async def test_float_money_is_refused(sessionmaker, make_record):
    with pytest.raises(StatementError, match="Decimal"):
        await _insert(sessionmaker, make_record, [0.1])


# ------------------------------------------------------------------ timestamps


async def test_timestamps_come_back_aware_utc(sessionmaker, make_record):
    paris = timezone(timedelta(hours=2))
    moment = datetime(2025, 6, 30, 23, 30, 0, 123456, tzinfo=paris)
    await _insert(sessionmaker, make_record, created_at=moment)
    async with sessionmaker() as session:
        stored = await session.scalar(select(UsageRow.created_at))
    assert stored == moment
    assert stored.tzinfo == UTC
    assert stored.hour == 21


async def test_naive_timestamps_are_refused(sessionmaker, make_record):
    with pytest.raises(StatementError, match="naive"):
        await _insert(sessionmaker, make_record, created_at=datetime(2025, 1, 1))


async def test_utc_day(sessionmaker, make_record):
    # 23:30 in New York on March 1st is already March 2nd in UTC.
    new_york = timezone(timedelta(hours=-5))
    await _insert(
        sessionmaker, make_record, created_at=datetime(2025, 3, 1, 23, 30, tzinfo=new_york)
    )
    async with sessionmaker() as session:
        day = await session.scalar(select(utc_day(UsageRow.created_at)))
        grouped = (
            await session.execute(
                select(utc_day(UsageRow.created_at), func.count()).group_by(
                    utc_day(UsageRow.created_at)
                )
            )
        ).all()
    assert day == "2025-03-02"
    assert [tuple(r) for r in grouped] == [("2025-03-02", 1)]


# ---------------------------------------------------------------------- engine


async def test_sqlite_engine_settings(tmp_path):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'e.db'}")
    try:
        async with engine.connect() as connection:
            pragmas = {
                name: (await connection.execute(text(f"PRAGMA {name}"))).scalar()
                for name in ("journal_mode", "foreign_keys", "busy_timeout")
            }
    finally:
        await engine.dispose()
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 5000}


async def test_foreign_keys_are_enforced(sessionmaker, make_record):
    with pytest.raises(DBAPIError):
        async with sessionmaker.begin() as session:
            record = make_record(Principal(user_id=424242, user_name="ghost"))
            await insert_usage_rows(session, [usage_values(record)])


@pytest.mark.postgresql
async def test_postgresql_engine_settings(postgres_database):
    engine = make_engine(postgres_database)
    try:
        async with engine.connect() as connection:
            timezone_setting = (await connection.execute(text("SHOW timezone"))).scalar()
    finally:
        await engine.dispose()
    assert timezone_setting == "UTC"
    assert engine.pool._pre_ping
