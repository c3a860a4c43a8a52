"""The CLI on a remote proxy (``--url``, ``--admin-token``) prints what it prints on the
database: ``users``, ``teams``, ``keys`` and ``usage``, run both ways on one database.

The proxy is served on loopback by the test's loop, so the CLI runs as ``python -m
proxy.cli.main`` subprocesses (awaited): once with ``--database`` on the proxy's
database, once with ``--url`` to the proxy, and their stdout must be the same. Expected
figures are worked by hand from the records seeded here.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from proxy.metering.records import Cost, EndpointKind, Principal, Usage, UsageRecord
from proxy.server.typedefs import sessionmaker_key
from proxy.settings import Secret
from proxy.storage import accounts, writes
from proxy.storage.schema import ApiKey, User
from tests.admin.test_cli_budgets import gemini_meter
from tests.factories import Stack, StackFactory, sqlite_only

TOKEN = "admin-token-0123456789abcdef"


@pytest.fixture
async def admin(make_stack: StackFactory) -> Stack:
    return await make_stack(admin_token=Secret(TOKEN))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The CLI's environment: the proxy's key secret, the admin token, and a default
    database that must never be created (remote commands do not touch a database)."""
    found = {k: v for k, v in os.environ.items() if not k.startswith("GEMINI_METER_")}
    found["GEMINI_METER_KEY_SECRET"] = "test-secret"  # the stack's
    found["GEMINI_METER_KEY_SECRET_FILE"] = str(tmp_path / "cli-secret")
    found["GEMINI_METER_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'not-used.db'}"
    found["GEMINI_METER_ADMIN_TOKEN"] = TOKEN
    return found


async def both_ways(stack: Stack, env: dict[str, str], *argv: str) -> str:
    """``argv`` on the database and through the admin API; their stdout, which must agree."""
    (code_db, out_db, err_db), (code_api, out_api, err_api) = await asyncio.gather(
        gemini_meter(*argv, "--database", stack.settings.database_url, env=env),
        gemini_meter(*argv, "--url", stack.base_url, env=env),
    )
    assert (code_db, code_api) == (0, 0), (argv, err_db, err_api)
    assert out_api == out_db, argv
    return out_db


async def remote(stack: Stack, env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    return await gemini_meter(*argv, "--url", stack.base_url, env=env)


def record(
    n: int, principal: Principal, at: datetime, endpoint: EndpointKind, model: str, **kw: Any
) -> dict[str, Any]:
    return writes.usage_values(
        UsageRecord(
            request_id=f"remote-{n}",
            created_at=at,
            principal=principal,
            model=model,
            endpoint=endpoint,
            streamed=endpoint is EndpointKind.STREAM_GENERATE_CONTENT,
            upstream_status=200,
            latency_seconds=0.1,
            ttfb_seconds=0.1,
            **kw,
        )
    )


def usage(inp: int, out: int, think: int = 0) -> Usage:
    return Usage(
        input_tokens=inp, output_tokens=out, thinking_tokens=think, total_tokens=inp + out + think
    )


def cost(inp: str, out: str, think: str = "0") -> Cost:
    i, o, t = Decimal(inp), Decimal(out), Decimal(think)
    return Cost(total=i + o + t, input=i, output=o, thinking=t, catalog_version="t")


async def seed(stack: Stack) -> None:
    day1 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    day2 = datetime(2026, 11, 21, 23, 30, tzinfo=UTC)
    async with stack.app[sessionmaker_key].begin() as session:
        who: dict[str, Principal] = {}
        for name in ("alice", "bob", "carol"):
            user = (await session.scalars(select(User).where(User.name == name))).one()
            key = (await session.scalars(select(ApiKey).where(ApiKey.user_id == user.id))).one()
            who[name] = Principal(user.id, name, key.team_id, None, key.id)
        gen, stream, embed = (
            EndpointKind.GENERATE_CONTENT,
            EndpointKind.STREAM_GENERATE_CONTENT,
            EndpointKind.EMBED_CONTENT,
        )
        apollo, zeus = {"project": "apollo"}, {"project": "zeus"}
        rows = [
            (who["alice"], day1, gen, "m1", usage(100, 50), cost("1.1", "0.2"), apollo),
            (who["alice"], day1, stream, "m2", usage(10, 5), cost("0.25", "0.5"), apollo),
            (who["bob"], day2, embed, "m1", usage(7, 0), cost("0.000007", "0"), {}),
            (who["carol"], day2, gen, "m1", usage(1, 1, 3), cost("2", "3", "0.5"), zeus),
        ]
        await writes.insert_usage_rows(
            session,
            [
                record(n, p, at, ep, m, usage=u, cost=c, labels=labels)
                for n, (p, at, ep, m, u, c, labels) in enumerate(rows)
            ],
        )


async def test_reports_and_lists_print_the_same_locally_and_remotely(
    admin: Stack, env: dict[str, str], tmp_path: Path
) -> None:
    await seed(admin)
    # Keys in every state: one used (a last use to list), one expiring, one revoked.
    async with admin.app[sessionmaker_key].begin() as session:
        secret = admin.settings.secret_bytes()
        expires = datetime(2099, 12, 31, tzinfo=UTC)
        await accounts.create_key(session, secret, "dave", None, expires_at=expires)
        await accounts.record_key_use(session, {1: datetime(2026, 11, 20, 10, 0, 7, 5, tzinfo=UTC)})
        assert await accounts.revoke_key(session, 2)

    for argv in (
        ["users", "list"],
        ["users", "list", "--team", "research", "--format", "json"],
        ["users", "list", "--format", "csv"],
        ["teams", "list"],
        ["teams", "list", "--format", "json"],
        ["keys", "list"],
        ["keys", "list", "--format", "json"],
        ["usage"],
        ["usage", "--group-by", "team", "model", "--columns", "all"],
        ["usage", "--group-by", "key", "endpoint", "day", "--format", "json"],
        ["usage", "--group-by", "day", "--format", "csv"],
        *(["usage", "--user", "alice", "--model", "m1", "--group-by", "model"],),
        *(["usage", "--since", "2026-11-21", "--until", "2026-11-22T00:00+01:00"],),
    ):
        await both_ways(admin, env, *argv)

    keys = json.loads(await both_ways(admin, env, "keys", "list", "--format", "json"))
    assert [(k["user"], k["revoked_at"] is not None) for k in keys] == [
        ("alice", False),
        ("bob", True),
        ("carol", False),
        ("dave", False),
    ]
    assert keys[0]["last_used_at"] == "2026-11-20T10:00:07.000005+00:00"
    assert keys[3]["expires_at"] == "2099-12-31T00:00:00+00:00"
    # Labels too: the report an admin API without label:NAME could not make.
    out = await both_ways(
        admin,
        env,
        *("usage", "--group-by", "label:project", "--columns", "requests,cost_usd"),
        *("--format", "json"),
    )
    assert json.loads(out) == [
        {"label:project": None, "requests": 1, "cost_usd": "0.000007"},  # bob: 0.000007 + 0
        {"label:project": "apollo", "requests": 2, "cost_usd": "2.05"},  # 1.3 + 0.75
        {"label:project": "zeus", "requests": 1, "cost_usd": "5.5"},  # 2 + 3 + 0.5
    ]
    out = await both_ways(admin, env, "usage", "--group-by", "user", "--format", "csv")
    assert out.splitlines()[1].startswith("alice,2,110,0,0,55,0,165,2.05,1.35,")
    assert not (tmp_path / "not-used.db").exists()


@sqlite_only
async def test_changes_through_the_admin_api(
    admin: Stack, env: dict[str, str], tmp_path: Path, make_stack: StackFactory
) -> None:
    async def ok(*argv: str) -> str:
        code, out, err = await remote(admin, env, *argv)
        assert code == 0, (argv, err)
        return out

    async def listed(*argv: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(await both_ways(admin, env, *argv))
        return found

    out = await ok("teams", "create", "platform")
    platform = next(
        t for t in await listed("teams", "list", "--format", "json") if t["name"] == "platform"
    )
    assert out == f"team platform created (id {platform['id']})\n"
    out = await ok("users", "create", "dave", "--team", "platform")
    dave = next(u for u in await listed("users", "list", "--format", "json") if u["name"] == "dave")
    assert out == f"user dave created (id {dave['id']}) in team platform\n"

    code, out, err = await remote(
        admin, env, "keys", "create", "--user", "dave", "--expires", "2099-12-31T00:00Z"
    )
    assert code == 0 and "shown once" in err
    first, key = out.splitlines()
    key_id = next(
        k["id"] for k in await listed("keys", "list", "--format", "json") if k["user"] == "dave"
    )
    assert first == (
        f"key id {key_id} for user dave (team platform), expires 2099-12-31T00:00:00+00:00"
    )
    # The key printed is the key: the proxy serves it (and the emulator saw the call).
    before = len(admin.upstream.requests)
    response = await admin.sdk(key=key).aio.models.generate_content(
        model="gemini-2.5-flash", contents="hi"
    )
    assert response.text and len(admin.upstream.requests) == before + 1

    for scope in ("user:dave", "team:platform"):
        await ok(
            *("budgets", "set", "--scope", scope, "--limit-usd", "5", "--window", "daily"),
            *("--mode", "alert"),
        )
    assert await ok("users", "move", "dave", "--team", "research") == (
        "user dave moved to team research, with 1 key(s)\n"
    )
    assert await ok("users", "rename", "dave", "david") == "user dave renamed to david\n"
    assert await ok("teams", "rename", "platform", "infra") == "team platform renamed to infra\n"
    users = await listed("users", "list", "--team", "research", "--format", "json")
    assert [(u["name"], u["active_keys"]) for u in users] == [
        ("alice", 1),
        ("carol", 1),
        ("david", 1),
    ]
    keys = await listed("keys", "list", "--format", "json")
    assert next(k for k in keys if k["id"] == key_id)["team"] == "research"
    # The budgets followed the renames.
    budgets = json.loads(await ok("budgets", "list", "--format", "json"))
    assert [b["scope"] for b in budgets] == ["user:david", "team:infra"]

    assert await ok("keys", "revoke", str(key_id)) == f"key {key_id} revoked\n"
    code, out, err = await remote(admin, env, "keys", "revoke", str(key_id))
    assert (code, out, err) == (1, "", f"no active key with id {key_id}\n")

    # Refusals: one line each, the proxy's reason, never the token.
    for argv, reason in (
        (["users", "create", "david"], "(409): User 'david' exists already."),
        (["teams", "rename", "infra", "research"], "(409): Team 'research' exists already."),
        (["users", "move", "nobody", "--team", "research"], "(404): No user 'nobody'."),
        (["users", "move", "david", "--team", "nowhere"], "(404): No team 'nowhere'."),
        (["users", "rename", "nobody", "x"], "(404): No user 'nobody'."),
        # Not mistaken for the proxy lacking the admin API (the next case).
        (["users", "rename", "router", "x"], "(404): No user 'router'."),
    ):
        code, out, err = await remote(admin, env, *argv)
        assert (code, out) == (2, ""), argv
        assert len(err.splitlines()) == 1 and err.rstrip().endswith(reason), (argv, err)
        assert TOKEN not in err
    assert not (tmp_path / "not-used.db").exists()

    # A proxy serving no admin API (no token configured) is named as such.
    plain = await make_stack()
    code, out, err = await gemini_meter("teams", "list", "--url", plain.base_url, env=env)
    assert (code, out) == (2, "")
    assert "does not serve the admin API" in err and TOKEN not in err
