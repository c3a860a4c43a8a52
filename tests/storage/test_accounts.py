"""storage.accounts for the operator: key expiry and last use, users and teams moved and
renamed; and storage.reports' groupings by a label, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from proxy.metering.records import Principal, Usage
from proxy.server.keys import hash_key
from proxy.storage import accounts
from proxy.storage.reports import usage_report
from proxy.storage.schema import utcnow
from proxy.storage.writes import insert_usage_rows, usage_values

SECRET = b"test-secret"


async def test_an_expired_key_resolves_to_no_one(sessionmaker):
    async with sessionmaker.begin() as session:
        _, expired = await accounts.create_key(
            session, SECRET, "alice", None, expires_at=utcnow() - timedelta(seconds=1)
        )
        info, live = await accounts.create_key(
            session, SECRET, "alice", None, expires_at=datetime(2099, 1, 1, tzinfo=UTC)
        )
    async with sessionmaker() as session:
        assert await accounts.active_key(session, hash_key(SECRET, expired)) is None
        assert await accounts.principal_for_key_hash(session, hash_key(SECRET, expired)) is None
        found = await accounts.active_key(session, hash_key(SECRET, live))
        assert found is not None
        assert found.expires_at == datetime(2099, 1, 1, tzinfo=UTC)
        assert found.principal.key_id == info.id
        keys = await accounts.list_keys(session)
        assert [k.active for k in keys] == [False, True]


async def test_a_naive_expiry_is_refused(sessionmaker):
    async with sessionmaker() as session:
        with pytest.raises(ValueError, match="timezone-aware"):
            await accounts.create_key(session, SECRET, "a", None, expires_at=datetime(2099, 1, 1))


async def test_users_count_only_keys_that_still_work(sessionmaker):
    async with sessionmaker.begin() as session:
        await accounts.create_key(session, SECRET, "alice", "ml")
        revoked, _ = await accounts.create_key(session, SECRET, "alice", "ml")
        await accounts.revoke_key(session, revoked.id)
        await accounts.create_key(
            session, SECRET, "alice", "ml", expires_at=utcnow() - timedelta(days=1)
        )
        await accounts.create_user(session, "bob", None)
    async with sessionmaker() as session:
        users = await accounts.list_users(session)
        teams = await accounts.list_teams(session)
    assert [(u.name, u.team, u.active_keys) for u in users] == [
        ("alice", "ml", 1),
        ("bob", None, 0),
    ]
    assert [(t.name, t.users) for t in teams] == [("ml", 1)]


async def test_key_use_is_written_in_one_statement_for_many_keys(sessionmaker):
    async with sessionmaker.begin() as session:
        a, _ = await accounts.create_key(session, SECRET, "alice", None)
        b, _ = await accounts.create_key(session, SECRET, "bob", None)
    at = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    async with sessionmaker.begin() as session:
        await accounts.record_key_use(session, {a.id: at, b.id: at + timedelta(minutes=1)})
        await accounts.record_key_use(session, {})  # nothing to write: no statement
    async with sessionmaker() as session:
        keys = {k.id: k.last_used_at for k in await accounts.list_keys(session)}
    assert keys == {a.id: at, b.id: at + timedelta(minutes=1)}


async def test_moving_a_user_without_a_team_moves_its_teamless_keys(sessionmaker):
    async with sessionmaker.begin() as session:
        await accounts.create_team(session, "ml")
        await accounts.create_key(session, SECRET, "alice", None)
        await accounts.create_key(session, SECRET, "alice", "audit")
        moved = await accounts.move_user(session, "alice", "ml")
    assert moved == 1
    async with sessionmaker() as session:
        assert sorted(str(k.team) for k in await accounts.list_keys(session)) == ["audit", "ml"]


async def test_grouping_by_a_label(sessionmaker, make_record):
    async with sessionmaker.begin() as session:
        user = await accounts.get_or_create_user(session, "alice", None)
        principal = Principal(user.id, "alice")
        rows = [
            usage_values(
                make_record(
                    principal,
                    labels=labels,
                    usage=Usage(input_tokens=n, total_tokens=n),
                )
            )
            for labels, n in [({"app": "x"}, 1), ({"app": "x"}, 2), ({"app": "y"}, 4), ({}, 8)]
        ]
        await insert_usage_rows(session, rows)
    async with sessionmaker() as session:
        report = await usage_report(session, group_by=("label:app",))
        with pytest.raises(ValueError, match="cannot group by"):
            await usage_report(session, group_by=("colour",))
    assert [(r["label:app"], r["requests"], r["input_tokens"]) for r in report] == [
        (None, 1, 8),
        ("x", 2, 3),
        ("y", 1, 4),
    ]
