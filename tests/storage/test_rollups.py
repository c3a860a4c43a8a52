"""``usage_rollups`` (migration 0005): the database keeps the sums of ``usage_records``.

The oracle is the records themselves, read back through the ORM and summed here per
quarter hour (UTC) and per (user, team, key): after every way rows come, go and change
(the writer's own batches, on PostgreSQL by COPY, a provisional row replaced by its
interaction's terminal one, a replayed row that changes nothing, the ORM's INSERT, a
repricing UPDATE, a DELETE), the rollups hold exactly those sums. Both databases.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.metering.records import Cost, Principal, Usage, UsageRecord
from proxy.storage.accounts import create_key, principal_for_user
from proxy.storage.schema import UsageRollup, UsageRow
from proxy.storage.writer import UsageWriter
from proxy.storage.writes import insert_usage_rows, usage_values

SECRET = b"test-secret-test-secret-test-sec"
SUMMED = (
    "cost_usd",
    "cost_input_usd",
    "cost_cached_usd",
    "cost_intermediate_usd",
    "cost_output_usd",
    "cost_thinking_usd",
    "cost_grounding_usd",
    "cost_media_usd",
    "cost_storage_usd",
    "total_tokens",
    "input_tokens",
    "cached_tokens",
    "intermediate_tokens",
    "output_tokens",
    "thinking_tokens",
)
Key = tuple[datetime, int, int, int]


def _quarter(at: datetime) -> datetime:
    at = at.astimezone(UTC)
    return at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)


async def _expected(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[Key, list[Any]]:
    """The records summed here, by bucket and principal; rows that sum to nothing left out."""
    sums: dict[Key, list[Any]] = defaultdict(lambda: [0] * len(SUMMED))
    async with sessionmaker() as session:
        for row in (await session.scalars(select(UsageRow))).all():
            key = (_quarter(row.created_at), row.user_id, row.team_id or 0, row.key_id or 0)
            for index, name in enumerate(SUMMED):
                sums[key][index] += getattr(row, name) or 0
    return {key: values for key, values in sums.items() if any(values)}


async def _rollups(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[Key, list[Any]]:
    async with sessionmaker() as session:
        rows = (await session.scalars(select(UsageRollup))).all()
    found = {
        (row.bucket, row.user_id, row.team_id, row.key_id): [getattr(row, n) for n in SUMMED]
        for row in rows
    }
    return {key: values for key, values in found.items() if any(values)}


def _cost(total: str, **parts: str) -> Cost:
    return Cost(
        total=Decimal(total),
        **{name: Decimal(value) for name, value in parts.items()},
        catalog_version="test",
    )


async def test_the_rollups_are_the_sums_of_the_records_through_every_change(
    sessionmaker: async_sessionmaker[AsyncSession], make_record: Callable[..., UsageRecord]
) -> None:
    async with sessionmaker.begin() as session:
        info, _ = await create_key(session, SECRET, "alice", "ml")
        bob = await principal_for_user(session, "bob")  # no team, no key
    alice = Principal(info.user_id, "alice", info.team_id, "ml", info.id)
    berlin = timezone(timedelta(hours=1))
    base = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    records = [
        # the last microsecond of one quarter hour and the first of the next
        make_record(
            alice,
            created_at=base + timedelta(minutes=14, seconds=59, microseconds=999_999),
            cost=_cost("0.000000000001", input="0.000000000001"),
        ),
        make_record(alice, created_at=base + timedelta(minutes=15)),
        # the same instant written in another zone: the same bucket as 10:20 UTC
        make_record(
            alice,
            created_at=datetime(2026, 11, 30, 11, 20, tzinfo=berlin),
            usage=Usage(input_tokens=7, cached_tokens=3, thinking_tokens=2, total_tokens=9),
            cost=_cost("123456.789012345678", output="123456.789012345678"),
        ),
        # unpriced: no cost at all, its tokens count
        make_record(bob, created_at=base + timedelta(minutes=44), cost=None),
        make_record(bob, created_at=base + timedelta(hours=5, minutes=45)),
    ]
    provisional = make_record(
        alice,
        created_at=base + timedelta(minutes=31),
        interaction_id="v1_cut",
        provisional=True,
        usage=Usage(input_tokens=100, output_tokens=1, total_tokens=101),
    )

    writer = UsageWriter(sessionmaker)
    await writer.start()
    for record in [*records, provisional]:
        writer.submit(record)
    await writer.flush()
    assert await _rollups(sessionmaker) == await _expected(sessionmaker) != {}

    # The interaction's terminal record replaces the provisional one (an upsert's UPDATE),
    # a replayed record changes nothing.
    terminal = make_record(
        alice,
        created_at=provisional.created_at + timedelta(minutes=20),  # the next quarter hour
        interaction_id="v1_cut",
        usage=Usage(input_tokens=100, output_tokens=40, total_tokens=140),
        cost=_cost("0.5", input="0.1", output="0.4"),
    )
    writer.submit(terminal)
    writer.submit(records[1])
    await writer.close()
    async with sessionmaker() as session:
        stored = (
            await session.scalars(select(UsageRow).where(UsageRow.interaction_id == "v1_cut"))
        ).one()
    assert stored.total_tokens == 140 and not stored.provisional
    assert await _rollups(sessionmaker) == await _expected(sessionmaker)

    # The ORM's own INSERT, a repricing UPDATE and a DELETE.
    async with sessionmaker.begin() as session:
        await insert_usage_rows(
            session, [usage_values(make_record(bob, created_at=base + timedelta(minutes=1)))]
        )
    async with sessionmaker.begin() as session:
        await session.execute(
            update(UsageRow)
            .where(UsageRow.request_id == records[0].request_id)
            .values(cost_usd=Decimal("2"), cost_input_usd=Decimal("2"), input_tokens=11)
        )
        await session.execute(delete(UsageRow).where(UsageRow.request_id == records[4].request_id))
    expected = await _expected(sessionmaker)
    assert await _rollups(sessionmaker) == expected
    # and the figures themselves, worked by hand for one bucket: 10:15 to 10:30 UTC holds
    # the record of 10:15 (input 10 and output 5 tokens, $0.000003 and $0.000012) and the
    # one written from Berlin (7 input of which 3 cached, 2 thinking; $123456.789012345678
    # of output)
    assert info.team_id is not None
    bucket = (base + timedelta(minutes=15), alice.user_id, info.team_id, info.id)
    totals = dict(zip(SUMMED, (await _rollups(sessionmaker))[bucket], strict=True))
    assert totals == {
        **dict.fromkeys(SUMMED, 0),
        "cost_usd": Decimal("123456.789027345678"),
        "cost_input_usd": Decimal("0.000003"),
        "cost_output_usd": Decimal("123456.789024345678"),
        "total_tokens": 24,
        "input_tokens": 17,
        "cached_tokens": 3,
        "output_tokens": 5,
        "thinking_tokens": 2,
    }
