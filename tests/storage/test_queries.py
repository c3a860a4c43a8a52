"""proxy.storage.accounts: users and teams, keys, principals, ownership, reports, repricing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, text

from proxy.metering.records import UNPRICED, Cost, Principal, Usage
from proxy.server.keys import KEY_PREFIX, hash_key
from proxy.storage.accounts import (
    create_key,
    get_or_create_team,
    get_or_create_user,
    interaction_owner,
    list_keys,
    principal_for_key_hash,
    principal_for_user,
    revoke_key,
)
from proxy.storage.reports import (
    records_for_repricing,
    update_record_costs,
    usage_report,
)
from proxy.storage.schema import Interaction, Team, UsageRow, User
from proxy.storage.writes import (
    insert_interaction_owners,
    insert_usage_rows,
    owner_values,
    usage_values,
)

SECRET = b"test-secret"


# ------------------------------------------------------------- users and teams


async def test_get_or_create_is_idempotent(sessionmaker):
    async with sessionmaker.begin() as session:
        team = await get_or_create_team(session, "ml")
        alice = await get_or_create_user(session, "alice", "ml")
        bob = await get_or_create_user(session, "bob", None)
    async with sessionmaker.begin() as session:
        assert (await get_or_create_team(session, "ml")).id == team.id
        again = await get_or_create_user(session, "alice", "other-team")
        assert (again.id, again.team_id) == (alice.id, team.id)  # keeps its team
        assert (await get_or_create_user(session, "bob", None)).id == bob.id
        assert bob.team_id is None
        assert await session.scalar(select(Team.name).where(Team.name == "other-team")) is None


async def test_get_or_create_user_from_concurrent_sessions(sessionmaker):
    async def resolve() -> int:
        async with sessionmaker.begin() as session:
            return (await get_or_create_user(session, "carol", "ops")).id

    ids = await asyncio.gather(*(resolve() for _ in range(8)))
    assert len(set(ids)) == 1
    async with sessionmaker() as session:
        assert len((await session.scalars(select(User).where(User.name == "carol"))).all()) == 1


# ------------------------------------------------------------------------ keys


async def _all_text(session: Any) -> str:
    """Every value in every table, as one string, for secret-leak checks."""
    chunks: list[str] = []
    for table in ("teams", "users", "api_keys", "interactions", "usage_records"):
        rows = await session.execute(text(f"SELECT * FROM {table}"))
        chunks.extend(repr(tuple(row)) for row in rows)
    return "\n".join(chunks)


async def test_create_key_stores_only_the_hash(sessionmaker):
    async with sessionmaker.begin() as session:
        info, key = await create_key(session, SECRET, "alice", "ml")

    assert key.startswith(KEY_PREFIX)
    assert (info.user, info.team, info.active) == ("alice", "ml", True)
    assert info.label == key[: len(KEY_PREFIX) + 4] + "..."
    assert info.created_at.tzinfo is UTC
    async with sessionmaker() as session:
        dump = await _all_text(session)
    assert hash_key(SECRET, key) in dump
    assert key not in dump
    secret_part = key[len(KEY_PREFIX) :]
    # Not even a sizeable piece of the key is stored.
    assert all(secret_part[i : i + 12] not in dump for i in range(len(secret_part) - 11))


async def test_lookup_and_revoke(sessionmaker):
    async with sessionmaker.begin() as session:
        alice_info, alice_key = await create_key(session, SECRET, "alice", "ml")
        bob_info, bob_key = await create_key(session, SECRET, "bob", None)

    async with sessionmaker() as session:
        alice = await principal_for_key_hash(session, hash_key(SECRET, alice_key))
        bob = await principal_for_key_hash(session, hash_key(SECRET, bob_key))
        assert await principal_for_key_hash(session, hash_key(SECRET, "gm-unknown")) is None
        # The same key under another secret is another hash: no match.
        assert await principal_for_key_hash(session, hash_key(b"other", alice_key)) is None
    assert alice == Principal(
        alice_info.user_id, "alice", alice_info.team_id, "ml", key_id=alice_info.id
    )
    assert alice.team_id is not None
    assert bob == Principal(bob_info.user_id, "bob", None, None, key_id=bob_info.id)

    async with sessionmaker.begin() as session:
        assert await revoke_key(session, alice_info.id) is True
        assert await revoke_key(session, alice_info.id) is False  # already revoked
        assert await revoke_key(session, 999_999) is False
    async with sessionmaker() as session:
        assert await principal_for_key_hash(session, hash_key(SECRET, alice_key)) is None
        assert await principal_for_key_hash(session, hash_key(SECRET, bob_key)) == bob
        keys = await list_keys(session)
        active = await list_keys(session, include_revoked=False)
    assert [(k.id, k.active) for k in keys] == [(alice_info.id, False), (bob_info.id, True)]
    assert keys[0].revoked_at is not None and keys[0].revoked_at.tzinfo is UTC
    assert [k.id for k in active] == [bob_info.id]


async def test_a_key_bills_to_its_team_or_the_users_home_team(sessionmaker):
    async with sessionmaker.begin() as session:
        await get_or_create_user(session, "dana", "research")
        home, _ = await create_key(session, SECRET, "dana", None)
        other, _ = await create_key(session, SECRET, "dana", "ml")
    assert (home.team, other.team) == ("research", "ml")
    assert home.user_id == other.user_id


async def test_principal_for_user_creates_on_first_sight(sessionmaker):
    async with sessionmaker.begin() as session:
        first = await principal_for_user(session, "fp-0123456789abcdef")
    async with sessionmaker.begin() as session:
        second = await principal_for_user(session, "fp-0123456789abcdef")
        await get_or_create_user(session, "erin", "ml")
        erin = await principal_for_user(session, "erin")
    assert first == second
    assert (first.user_name, first.team_id, first.key_id) == ("fp-0123456789abcdef", None, None)
    assert (erin.team_name, erin.key_id) == ("ml", None)


async def test_interaction_owner(sessionmaker):
    async with sessionmaker.begin() as session:
        info, _ = await create_key(session, SECRET, "alice", "ml")
        alice = Principal(info.user_id, "alice", info.team_id, "ml", info.id)
        bob = await principal_for_user(session, "bob")
        now = datetime.now(UTC)
        await insert_interaction_owners(
            session,
            [
                owner_values("int-1", alice, "gemini-2.5-pro", now),
                owner_values("int-1", bob, None, now),  # the first owner stays
                owner_values("int-2", bob, None, now),
            ],
        )
    async with sessionmaker() as session:
        assert await interaction_owner(session, "int-1") == alice
        assert await interaction_owner(session, "int-2") == bob
        assert await interaction_owner(session, "int-3") is None
        assert await session.scalar(select(Interaction.model).where(Interaction.id == "int-1")) == (
            "gemini-2.5-pro"
        )


# --------------------------------------------------------------------- records


async def test_usage_values_store_every_field(sessionmaker, make_record):
    async with sessionmaker.begin() as session:
        info, _ = await create_key(session, SECRET, "alice", "ml")
        principal = Principal(info.user_id, "alice", info.team_id, "ml", info.id)
        usage = Usage(
            input_tokens=100,
            cached_tokens=40,
            intermediate_tokens=7,
            output_tokens=20,
            thinking_tokens=30,
            total_tokens=150,
            input_by_modality={"text": 90, "image": 10},
            cached_by_modality={"text": 40},
            output_by_modality={"text": 20},
            grounding={"google_search": 2},
        )
        cost = Cost(
            total=Decimal("0.001"),
            input=Decimal("0.0001"),
            cached=Decimal("0.00001"),
            intermediate=Decimal("0.00002"),
            output=Decimal("0.0003"),
            thinking=Decimal("0.0004"),
            grounding=Decimal("0.00017"),
            catalog_version="2025-06",
        )
        record = make_record(
            principal,
            usage=usage,
            cost=cost,
            interaction_id="int-9",
            response_id="resp-9",
            previous_interaction_id="int-8",
            requested_service_tier="flex",
            effective_service_tier="standard",
            labels={"project": "x"},
            code_execution_calls=3,
            code_execution_errors=1,
            parse_error=True,
            client_disconnected=True,
            streamed=True,
            ttfb_seconds=None,
        )
        await insert_usage_rows(session, [usage_values(record)])
    async with sessionmaker() as session:
        row = await session.scalar(select(UsageRow))
    assert row is not None
    assert (row.user_id, row.team_id, row.key_id) == (info.user_id, info.team_id, info.id)
    assert (row.model, row.endpoint, row.streamed) == (record.model, "generate_content", True)
    assert (row.interaction_id, row.response_id, row.previous_interaction_id) == (
        "int-9",
        "resp-9",
        "int-8",
    )
    assert (row.requested_service_tier, row.effective_service_tier) == ("flex", "standard")
    assert row.labels == {"project": "x"}
    assert row.modalities == {
        "input": {"text": 90, "image": 10},
        "cached": {"text": 40},
        "output": {"text": 20},
    }
    assert row.grounding == {"google_search": 2}
    assert (row.input_tokens, row.cached_tokens, row.intermediate_tokens) == (100, 40, 7)
    assert (row.output_tokens, row.thinking_tokens, row.total_tokens) == (20, 30, 150)
    assert row.total_mismatch is True  # 100 + 7 + 20 + 30 != 150
    assert (row.code_execution_calls, row.code_execution_errors) == (3, 1)
    assert (row.parse_error, row.client_disconnected, row.ttfb_seconds) == (True, True, None)
    assert row.created_at == record.created_at
    assert (row.upstream_status, row.latency_seconds) == (200, 0.25)
    assert (row.cost_usd, row.cost_input_usd, row.cost_cached_usd) == (
        cost.total,
        cost.input,
        cost.cached,
    )
    assert (row.cost_intermediate_usd, row.cost_output_usd) == (cost.intermediate, cost.output)
    assert (row.cost_thinking_usd, row.cost_grounding_usd) == (cost.thinking, cost.grounding)
    assert (row.catalog_version, row.unpriced) == ("2025-06", False)


async def test_usage_values_is_a_snapshot(make_record):
    record = make_record(Principal(1, "alice"), labels={"a": "1"})
    values = usage_values(record)
    record.labels["a"] = "changed"
    assert values["labels"] == {"a": "1"}


async def test_duplicate_interaction_ids_are_recorded_once(sessionmaker, make_record):
    async with sessionmaker.begin() as session:
        principal = await principal_for_user(session, "alice")
        rows = [usage_values(make_record(principal, interaction_id="int-1")) for _ in range(3)]
        rows.append(usage_values(make_record(principal)))  # no interaction: always stored
        await insert_usage_rows(session, rows)
    async with sessionmaker.begin() as session:
        await insert_usage_rows(session, rows[:1])
    async with sessionmaker() as session:
        ids = (await session.scalars(select(UsageRow.interaction_id))).all()
    assert sorted(ids, key=lambda i: (i is not None, i or "")) == [None, "int-1"]


# --------------------------------------------------------------------- reports

DAY1 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
DAY2 = datetime(2025, 3, 2, 0, 30, tzinfo=UTC)


def _cost(total: str) -> Cost:
    amount = Decimal(total)
    return Cost(total=amount, input=amount / 4, output=amount * 3 / 4, catalog_version="t")


@pytest.fixture
async def report_data(sessionmaker, make_record):
    """alice (team ml): 3 calls on two models and two days; bob (no team): 2, one unpriced."""
    async with sessionmaker.begin() as session:
        info, _ = await create_key(session, SECRET, "alice", "ml")
        alice = Principal(info.user_id, "alice", info.team_id, "ml", info.id)
        bob = await principal_for_user(session, "bob")
        usage = Usage(input_tokens=100, cached_tokens=10, output_tokens=50, total_tokens=150)
        records = [
            make_record(alice, created_at=DAY1, model="flash", usage=usage, cost=_cost("0.1")),
            # 23:59 in UTC-1 is already day 2 in UTC.
            make_record(
                alice,
                created_at=datetime(2025, 3, 1, 23, 59, tzinfo=timezone(timedelta(hours=-1))),
                model="flash",
                usage=usage,
                cost=_cost("0.2"),
            ),
            make_record(
                alice, created_at=DAY2, model="pro", usage=usage, cost=_cost("0.000000000001")
            ),
            make_record(bob, created_at=DAY1, model="pro", usage=usage, cost=_cost("1.5")),
            make_record(bob, created_at=DAY2, model="mystery", usage=usage, cost=UNPRICED),
        ]
        await insert_usage_rows(session, [usage_values(r) for r in records])


def _pick(rows: list[dict[str, object]], *keys: str) -> list[tuple[object, ...]]:
    return [tuple(row[k] for k in keys) for row in rows]


async def test_report_by_user(sessionmaker, report_data):
    async with sessionmaker() as session:
        rows = await usage_report(session)
    assert _pick(rows, "user", "requests", "unpriced_requests", "cost_usd") == [
        ("alice", 3, 0, Decimal("0.300000000001")),
        ("bob", 2, 1, Decimal("1.5")),
    ]
    alice = rows[0]
    assert set(alice) == {
        "user",
        "requests",
        "input_tokens",
        "cached_tokens",
        "intermediate_tokens",
        "output_tokens",
        "thinking_tokens",
        "total_tokens",
        "cost_usd",
        "cost_input_usd",
        "cost_cached_usd",
        "cost_intermediate_usd",
        "cost_output_usd",
        "cost_thinking_usd",
        "cost_grounding_usd",
        "unpriced_requests",
    }
    assert (alice["input_tokens"], alice["cached_tokens"], alice["output_tokens"]) == (300, 30, 150)
    assert (alice["total_tokens"], alice["thinking_tokens"]) == (450, 0)
    assert all(type(alice[k]) is int for k in ("requests", "input_tokens", "unpriced_requests"))
    cost_input, cost_output = alice["cost_input_usd"], alice["cost_output_usd"]
    assert isinstance(cost_input, Decimal) and isinstance(cost_output, Decimal)
    assert cost_input + cost_output == alice["cost_usd"]
    # No record had a grounding cost: the sum of nothing but NULLs is None.
    assert alice["cost_grounding_usd"] is None


async def test_report_groupings(sessionmaker, report_data):
    async with sessionmaker() as session:
        by_team = await usage_report(session, group_by=["team"])
        by_model = await usage_report(session, group_by=["model"])
        by_day = await usage_report(session, group_by=["day"])
        by_user_day = await usage_report(session, group_by=["user", "day"])
        by_day_model = await usage_report(session, group_by=["day", "model"])
        total = await usage_report(session, group_by=[])
    assert _pick(by_team, "team", "requests", "cost_usd") == [
        (None, 2, Decimal("1.5")),
        ("ml", 3, Decimal("0.300000000001")),
    ]
    assert _pick(by_model, "model", "requests", "cost_usd", "unpriced_requests") == [
        ("flash", 2, Decimal("0.3"), 0),
        ("mystery", 1, None, 1),  # every record unpriced: no cost, not zero
        ("pro", 2, Decimal("1.500000000001"), 0),
    ]
    assert _pick(by_day, "day", "requests") == [("2025-03-01", 2), ("2025-03-02", 3)]
    assert _pick(by_user_day, "user", "day", "requests", "cost_usd") == [
        ("alice", "2025-03-01", 1, Decimal("0.1")),
        ("alice", "2025-03-02", 2, Decimal("0.200000000001")),
        ("bob", "2025-03-01", 1, Decimal("1.5")),
        ("bob", "2025-03-02", 1, None),
    ]
    assert _pick(by_day_model, "day", "model", "requests") == [
        ("2025-03-01", "flash", 1),
        ("2025-03-01", "pro", 1),
        ("2025-03-02", "flash", 1),
        ("2025-03-02", "mystery", 1),
        ("2025-03-02", "pro", 1),
    ]
    assert _pick(total, "requests", "cost_usd", "unpriced_requests", "input_tokens") == [
        (5, Decimal("1.800000000001"), 1, 500)
    ]


async def test_report_filters(sessionmaker, report_data):
    async with sessionmaker() as session:
        bob = await usage_report(session, user="bob", group_by=["model"])
        ml = await usage_report(session, team="ml", group_by=["user"])
        pro = await usage_report(session, model="pro", group_by=["user"])
        day2 = await usage_report(
            session, since=datetime(2025, 3, 2, tzinfo=UTC), group_by=["user"]
        )
        day1 = await usage_report(
            session,
            since=datetime(2025, 3, 1, tzinfo=UTC),
            until=datetime(2025, 3, 2, tzinfo=UTC),
            group_by=["user"],
        )
        # The same instant in another zone selects the same records.
        day1_elsewhere = await usage_report(
            session,
            until=datetime(2025, 3, 2, 9, tzinfo=timezone(timedelta(hours=9))),
            group_by=["user"],
        )
        nothing = await usage_report(session, user="nobody", group_by=[])
    assert _pick(bob, "model", "requests") == [("mystery", 1), ("pro", 1)]
    assert _pick(ml, "user", "requests") == [("alice", 3)]
    assert _pick(pro, "user", "requests") == [("alice", 1), ("bob", 1)]
    assert _pick(day2, "user", "requests") == [("alice", 2), ("bob", 1)]
    assert _pick(day1, "user", "requests") == [("alice", 1), ("bob", 1)]
    assert day1_elsewhere == day1
    assert nothing == []


async def test_report_rejects_bad_arguments(sessionmaker):
    async with sessionmaker() as session:
        with pytest.raises(ValueError, match="cannot group by"):
            await usage_report(session, group_by=["user", "colour"])
        with pytest.raises(ValueError, match="timezone-aware"):
            await usage_report(session, since=datetime(2025, 1, 1))


# ------------------------------------------------------------------- repricing


async def test_reprice_round_trip(sessionmaker, make_record, report_data):
    batches = []
    async with sessionmaker.begin() as session:
        async for batch in records_for_repricing(session, model="pro", batch_size=1):
            batches.append(batch)
            await update_record_costs(
                session,
                [(row.id, _cost("2") if row.cost.unpriced else _cost("0.5")) for row in batch],
            )
        assert await update_record_costs(session, []) == 0
    assert [len(b) for b in batches] == [1, 1]
    first = batches[0][0]
    assert first.usage == Usage(
        input_tokens=100, cached_tokens=10, output_tokens=50, total_tokens=150
    )
    assert first.model == "pro" and first.endpoint == "generate_content"
    assert first.cost.catalog_version == "t"

    async with sessionmaker.begin() as session:
        since_day2 = [
            row async for batch in records_for_repricing(session, since=DAY2) for row in batch
        ]
        # since is inclusive; the flash call made at 23:59 UTC-1 is on day 2 in UTC.
        assert sorted(str(r.model) for r in since_day2) == ["flash", "mystery", "pro"]
        mystery = next(r for r in since_day2 if r.model == "mystery")
        assert mystery.cost.unpriced
        await update_record_costs(session, [(mystery.id, _cost("2"))])

    async with sessionmaker() as session:
        rows = await usage_report(session, group_by=["model"])
        row = (await session.scalars(select(UsageRow).where(UsageRow.model == "mystery"))).one()
    assert _pick(rows, "model", "cost_usd", "unpriced_requests") == [
        ("flash", Decimal("0.3"), 0),
        ("mystery", Decimal("2"), 0),
        ("pro", Decimal("1.0"), 0),
    ]
    assert (row.cost_input_usd, row.cost_output_usd, row.unpriced) == (
        Decimal("0.5"),
        Decimal("1.5"),
        False,
    )


async def test_reprice_reads_back_units_beyond_tokens(sessionmaker, make_record):
    # A Veo bill and a cache's storage line: repricing must see what they were billed for.
    video = Usage(video_seconds=12, video_seconds_by_resolution={"1080p": 8, "4k": 4})
    stored = Usage(storage_token_seconds=-3_600_000)
    async with sessionmaker.begin() as session:
        alice = await principal_for_user(session, "alice")
        rows = [
            make_record(alice, model="veo", usage=video, cost=UNPRICED),
            make_record(alice, model="cache", usage=Usage(images=3), cost=UNPRICED),
            make_record(alice, model="store", usage=stored, cost=UNPRICED),
        ]
        await insert_usage_rows(session, [usage_values(r) for r in rows])
    async with sessionmaker() as session:
        found = {
            row.model: row.usage async for batch in records_for_repricing(session) for row in batch
        }
    assert found == {"veo": video, "cache": Usage(images=3), "store": stored}
