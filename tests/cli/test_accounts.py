"""``users``, ``teams``, ``keys create --expires`` and the last use in ``keys list``;
an expired key refused at the proxy, and a key's use written off the request path."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from proxy.cli.keys import expiry
from proxy.server.typedefs import authenticator_key, sessionmaker_key
from proxy.storage import accounts
from proxy.storage.schema import ApiKey
from tests.cli.conftest import PG_SECRET
from tests.cli.test_cli import cli, principal_for
from tests.factories import Stack, StackFactory

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def rows(capsys, *argv: str) -> list[dict[str, Any]]:
    ran = cli(capsys, *argv, "--format", "json")
    assert ran.code == 0, ran.err
    found: list[dict[str, Any]] = ran.json()
    return found


# --- users and teams ------------------------------------------------------------------------


def test_users_and_teams_create_list_rename(capsys, db):
    assert cli(capsys, "teams", "create", "research", "--database", db).code == 0
    made = cli(capsys, "users", "create", "alice", "--team", "research", "--database", db)
    assert made.code == 0 and made.out.startswith("user alice created")
    assert cli(capsys, "users", "create", "bob", "--database", db).code == 0
    teams = rows(capsys, "teams", "list", "--database", db)
    assert [(t["name"], t["users"]) for t in teams] == [("research", 1)]
    users = rows(capsys, "users", "list", "--database", db)
    assert [(u["name"], u["team"], u["active_keys"]) for u in users] == [
        ("alice", "research", 0),
        ("bob", None, 0),
    ]

    assert cli(capsys, "teams", "rename", "research", "ml", "--database", db).code == 0
    assert cli(capsys, "users", "rename", "bob", "robert", "--database", db).code == 0
    users = rows(capsys, "users", "list", "--database", db)
    assert [(u["name"], u["team"]) for u in users] == [("alice", "ml"), ("robert", None)]
    assert [u["name"] for u in rows(capsys, "users", "list", "--team", "ml", "--database", db)] == [
        "alice"
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["users", "create", "alice"], "gemini-meter: user 'alice' exists already"),
        (["teams", "create", "research"], "gemini-meter: team 'research' exists already"),
        (["users", "rename", "nobody", "x"], "gemini-meter: no user 'nobody'"),
        (["users", "rename", "alice", "bob"], "gemini-meter: user 'bob' exists already"),
        (["teams", "rename", "nowhere", "x"], "gemini-meter: no team 'nowhere'"),
        (["users", "move", "alice", "--team", "nowhere"], "gemini-meter: no team 'nowhere'"),
        (["users", "move", "nobody", "--team", "research"], "gemini-meter: no user 'nobody'"),
    ],
)
def test_users_and_teams_refuse_what_cannot_be_done(capsys, db, argv, message):
    cli(capsys, "users", "create", "alice", "--team", "research", "--database", db)
    cli(capsys, "users", "create", "bob", "--database", db)
    ran = cli(capsys, *argv, "--database", db)
    assert (ran.code, ran.out) == (2, "")
    assert ran.err.splitlines() == [message]


def test_moving_a_user_moves_the_keys_that_followed_its_team(capsys, db):
    cli(capsys, "teams", "create", "support", "--database", db)
    followed = cli(
        capsys, "keys", "create", "--user", "alice", "--team", "research", "--database", db
    )
    # Made for another team explicitly: stays with it.
    other = cli(capsys, "keys", "create", "--user", "alice", "--team", "audit", "--database", db)
    moved = cli(capsys, "users", "move", "alice", "--team", "support", "--database", db)
    assert moved.code == 0
    assert moved.out == "user alice moved to team support, with 1 key(s)\n"
    assert [u["team"] for u in rows(capsys, "users", "list", "--database", db)] == ["support"]
    # What the proxy bills from now on, looked up the way its auth does.
    followed_principal = principal_for(db, followed.out.splitlines()[-1])
    other_principal = principal_for(db, other.out.splitlines()[-1])
    assert followed_principal is not None and followed_principal.team_name == "support"
    assert other_principal is not None and other_principal.team_name == "audit"


def test_a_rename_carries_the_budgets_that_name_the_user_or_team(capsys, db):
    cli(capsys, "users", "create", "bob", "--team", "research", "--database", db)
    for scope in ("user:bob", "team:research", "user:alice"):
        made = cli(
            capsys,
            *("budgets", "set", "--scope", scope, "--limit-usd", "5", "--window", "daily"),
            *("--mode", "enforce", "--database", db),
        )
        assert made.code == 0, made.err
    assert cli(capsys, "users", "rename", "bob", "robert", "--database", db).code == 0
    assert cli(capsys, "teams", "rename", "research", "ml", "--database", db).code == 0
    scopes = [b["scope"] for b in rows(capsys, "budgets", "list", "--database", db)]
    # A budget on a name nobody has any more would cap nothing; alice's is untouched.
    assert scopes == ["user:robert", "team:ml", "user:alice"]


def test_moving_a_user_to_the_team_it_is_in_moves_no_key(capsys, db):
    cli(capsys, "users", "create", "alice", "--team", "research", "--database", db)
    cli(capsys, "teams", "create", "support", "--database", db)
    cli(capsys, "keys", "create", "--user", "alice", "--database", db)
    there = cli(capsys, "users", "move", "alice", "--team", "support", "--database", db)
    assert there.out == "user alice moved to team support, with 1 key(s)\n"
    # Already there: nothing moves, and the count says so.
    again = cli(capsys, "users", "move", "alice", "--team", "support", "--database", db)
    assert again.out == "user alice moved to team support, with 0 key(s)\n"


# --- keys: expiry and last use --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", NOW + timedelta(days=30)),
        ("12h", NOW + timedelta(hours=12)),
        ("90m", NOW + timedelta(minutes=90)),
        ("2w", NOW + timedelta(weeks=2)),
        ("2026-12-31T00:00Z", datetime(2026, 12, 31, tzinfo=UTC)),
        ("2026-12-31", datetime(2026, 12, 31, tzinfo=UTC)),  # naive: UTC
        ("2026-12-31T02:00+02:00", datetime(2026, 12, 31, tzinfo=UTC)),
    ],
)
def test_expiry_accepts_durations_and_iso_times(text, expected):
    assert expiry(text, NOW) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [("2026-01-01", "is not in the future"), ("30x", "neither a duration"), ("0d", "future")],
)
def test_expiry_refuses_the_past_and_nonsense(text, reason):
    with pytest.raises(argparse.ArgumentTypeError, match=reason):
        expiry(text, NOW)


def test_keys_create_with_an_expiry_shows_it_in_the_list(capsys, db):
    ran = cli(
        capsys,
        *("keys", "create", "--user", "alice", "--expires", "2099-12-31T00:00Z"),
        *("--database", db),
    )
    assert ran.code == 0, ran.err
    assert ran.out.splitlines()[0] == ("key id 1 for user alice, expires 2099-12-31T00:00:00+00:00")
    [listed] = rows(capsys, "keys", "list", "--database", db)
    assert listed["expires_at"] == "2099-12-31T00:00:00+00:00"
    assert listed["last_used_at"] is None  # never used yet
    assert principal_for(db, ran.out.splitlines()[-1]) is not None


def test_keys_create_refuses_an_expiry_in_the_past(capsys, db):
    with pytest.raises(SystemExit) as exit_:
        cli(capsys, "keys", "create", "--user", "a", "--expires", "2020-01-01", "--database", db)
    assert exit_.value.code == 2
    assert "argument --expires: '2020-01-01' is not in the future" in capsys.readouterr().err


async def new_key(stack: Stack, user: str, expires_at: datetime | None) -> tuple[int, str]:
    async with stack.app[sessionmaker_key].begin() as session:
        info, key = await accounts.create_key(
            session, stack.settings.secret_bytes(), user, "research", expires_at=expires_at
        )
    return info.id, key


async def generate(stack: Stack, key: str) -> int:
    """A generateContent call through the proxy with ``key``; its status."""
    async with (
        aiohttp.ClientSession() as client,
        client.post(
            stack.url("/v1beta/models/gemini-2.5-flash:generateContent"),
            headers={"x-goog-api-key": key},
            json={"contents": [{"parts": [{"text": "Hi"}]}]},
        ) as response,
    ):
        await response.read()
        return response.status


def reached_upstream(stack: Stack) -> int:
    return sum(1 for seen in stack.upstream.requests if "generateContent" in seen.path)


async def test_an_expired_key_is_refused_and_never_forwarded(make_stack: StackFactory):
    stack = await make_stack()
    _, key = await new_key(stack, "dave", datetime.now(UTC) - timedelta(seconds=1))
    before = reached_upstream(stack)
    assert await generate(stack, key) == 401
    assert reached_upstream(stack) == before
    # The same user with a live key is served: it is the expiry that refused.
    _, live = await new_key(stack, "dave", datetime.now(UTC) + timedelta(days=1))
    assert await generate(stack, live) == 200
    assert reached_upstream(stack) == before + 1


async def test_the_key_cache_never_outlives_an_expiry(make_stack: StackFactory):
    # An hour of cache, a key valid for a few more seconds.
    stack = await make_stack(key_cache_ttl_seconds=3600.0)
    expires_at = datetime.now(UTC) + timedelta(seconds=4)
    _, key = await new_key(stack, "erin", expires_at)
    assert await generate(stack, key) == 200  # cached now
    while datetime.now(UTC) <= expires_at:  # bounded: four seconds of wall clock
        await asyncio.sleep(0.1)
    before = reached_upstream(stack)
    assert await generate(stack, key) == 401
    assert reached_upstream(stack) == before


async def last_used(stack: Stack, key_id: int) -> datetime | None:
    async with stack.app[sessionmaker_key]() as session:
        value: datetime | None = await session.scalar(
            select(ApiKey.last_used_at).where(ApiKey.id == key_id)
        )
    return value


async def test_last_use_is_written_in_the_background_not_on_the_call(make_stack: StackFactory):
    stack = await make_stack()
    key_id, key = await new_key(stack, "frank", None)
    start = datetime.now(UTC)
    assert await generate(stack, key) == 200
    assert await generate(stack, key) == 200
    # The calls are answered before anything is written about their key.
    assert await last_used(stack, key_id) is None
    assert await stack.app[authenticator_key].flush_key_use() == 1
    used = await last_used(stack, key_id)
    assert used is not None and start <= used <= datetime.now(UTC)
    # Nothing new since: the next flush writes nothing.
    assert await stack.app[authenticator_key].flush_key_use() == 0


async def test_last_use_is_written_at_shutdown_and_listed(
    make_stack: StackFactory, capsys, monkeypatch
):
    monkeypatch.setenv("GEMINI_METER_KEY_SECRET", PG_SECRET)  # PostgreSQL needs one
    stack = await make_stack()
    key_id, key = await new_key(stack, "grace", None)
    assert await generate(stack, key) == 200
    await stack.proxy.close()  # the app's cleanup contexts run: a last flush
    url = stack.settings.database_url

    def listed() -> list[dict[str, Any]]:
        ran = cli(capsys, "keys", "list", "--format", "json", "--database", url)
        assert ran.code == 0, ran.err
        found: list[dict[str, Any]] = json.loads(ran.out)
        return found

    [grace] = [k for k in await asyncio.to_thread(listed) if k["id"] == key_id]
    assert grace["last_used_at"] is not None
    assert datetime.fromisoformat(grace["last_used_at"]) <= datetime.now(UTC)


async def test_record_key_use_never_moves_a_time_backwards(make_stack: StackFactory):
    stack = await make_stack()
    key_id, _ = await new_key(stack, "heidi", None)
    later = datetime(2026, 6, 1, tzinfo=UTC)
    earlier = datetime(2026, 5, 1, tzinfo=UTC)
    for when in (later, earlier):
        async with stack.app[sessionmaker_key].begin() as session:
            await accounts.record_key_use(session, {key_id: when})
    assert await last_used(stack, key_id) == later
