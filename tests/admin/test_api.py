"""proxy.admin: the admin API under /admin/v1, on a real proxy, SQLite and PostgreSQL.

The proxy runs as ``make_stack`` builds it (emulator upstream, keys for alice, bob and
carol) with an admin token set. Expected values are worked by hand from the records the
tests seed (amounts in the comments), never read back through the code under test.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from openapi_spec_validator import validate
from sqlalchemy import select

from proxy.admin.routes import OPERATIONS
from proxy.metering.records import Cost, EndpointKind, Principal, Usage, UsageRecord
from proxy.server.keys import unseal
from proxy.server.typedefs import sessionmaker_key
from proxy.settings import Secret
from proxy.storage import writes
from proxy.storage.schema import ApiKey, BudgetRow, User
from tests.factories import Stack, StackFactory, gemini_error, raw, sqlite_only

TOKEN = "admin-token-0123456789abcdef"
WEBHOOK = "https://hooks.example.test/services/T000/B000/s3cr3t-webhook-path"


@pytest.fixture
async def admin(make_stack: StackFactory) -> Stack:
    return await make_stack(admin_token=Secret(TOKEN))


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def call(
    stack: Stack, method: str, path: str, body: Any = None, token: str | None = TOKEN
) -> tuple[int, Any]:
    headers = bearer(token) if token is not None else {}
    kwargs: dict[str, Any] = {}
    if body is not None:
        kwargs["data"] = json.dumps(body)
        headers["content-type"] = "application/json"
    status, _, data = await raw(method, stack.url(path), headers=headers, **kwargs)
    return status, (json.loads(data) if data else None)


def concrete(path: str) -> str:
    return path.replace("{id}", "1").replace("{name}", "alice")


# ------------------------------------------------------------------------- the token


@sqlite_only
async def test_every_route_refuses_a_missing_or_wrong_token(admin: Stack) -> None:
    wrong = [None, "", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), admin.keys["alice"]]
    for op in OPERATIONS:
        for token in wrong:
            headers = {} if token is None else bearer(token)
            status, _, body = await raw(op.method, admin.url(concrete(op.path)), headers=headers)
            assert status == 401, (op.method, op.path, token)
            message = gemini_error(body, 401, "UNAUTHENTICATED")
            assert TOKEN not in message
        # The right token in the wrong place is refused too.
        status, _, _ = await raw(
            op.method, admin.url(concrete(op.path)), headers={"x-goog-api-key": TOKEN}
        )
        assert status == 401


@sqlite_only
async def test_absent_without_a_configured_token(stack: Stack) -> None:
    for op in OPERATIONS:
        status, _, body = await raw(op.method, stack.url(concrete(op.path)), headers=bearer())
        assert status == 404, (op.method, op.path)
        gemini_error(body, 404, "NOT_FOUND")


def test_the_token_setting_is_validated(tmp_path: Any) -> None:
    from proxy.settings import Settings, SettingsError

    for bad in ("", "   ", "short-token"):
        with pytest.raises(SettingsError, match="admin_token"):
            Settings(admin_token=bad, key_secret_file=tmp_path / "s")
    assert Settings(admin_token=TOKEN, key_secret_file=tmp_path / "s").admin_token is not None


# -------------------------------------------------------------------- users and teams


async def test_users_and_teams(admin: Stack) -> None:
    status, body = await call(admin, "GET", "/admin/v1/users")
    assert status == 200
    assert {(u["name"], u["team"]) for u in body["users"]} == {
        ("alice", "research"),
        ("bob", "support"),
        ("carol", "research"),
    }
    status, body = await call(admin, "POST", "/admin/v1/teams", {"name": "platform"})
    assert (status, body["name"], body["users"]) == (201, "platform", 0)
    status, body = await call(admin, "POST", "/admin/v1/teams", {"name": "platform"})
    assert status == 409 and body["error"]["status"] == "ALREADY_EXISTS"

    status, body = await call(admin, "POST", "/admin/v1/users", {"name": "dave", "team": "ops"})
    assert (status, body["name"], body["team"]) == (201, "dave", "ops")
    status, body = await call(admin, "POST", "/admin/v1/users", {"name": "dave"})
    assert status == 409

    # Move, then rename, then leave every team.
    status, body = await call(admin, "PATCH", "/admin/v1/users/dave", {"team": "platform"})
    assert (status, body["team"]) == (200, "platform")
    for scope in ("user:dave", "team:platform", "user:bob"):
        budget = {"scope": scope, "limit_usd": "1", "window": "total", "mode": "alert"}
        assert (await call(admin, "POST", "/admin/v1/budgets", budget))[0] == 201
    status, body = await call(admin, "PATCH", "/admin/v1/users/dave", {"name": "david"})
    assert (status, body["name"], body["team"]) == (200, "david", "platform")
    status, body = await call(admin, "PATCH", "/admin/v1/users/david", {"team": None})
    assert (status, body["team"]) == (200, None)
    status, body = await call(admin, "PATCH", "/admin/v1/users/david", {"name": "alice"})
    assert status == 409
    status, body = await call(admin, "PATCH", "/admin/v1/users/nobody", {"team": "x"})
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"

    status, body = await call(admin, "PATCH", "/admin/v1/teams/platform", {"name": "infra"})
    assert (status, body["name"]) == (200, "infra")
    status, body = await call(admin, "PATCH", "/admin/v1/teams/research", {"name": "infra"})
    assert status == 409
    # The budgets of a renamed user or team follow it.
    status, body = await call(admin, "GET", "/admin/v1/budgets")
    assert [b["scope"] for b in body["budgets"]] == ["user:david", "team:infra", "user:bob"]
    status, body = await call(admin, "GET", "/admin/v1/teams")
    assert {t["name"]: t["users"] for t in body["teams"]} == {
        "research": 2,
        "support": 1,
        "ops": 0,
        "infra": 0,
    }
    status, body = await call(admin, "POST", "/admin/v1/users", {"name": "eve", "role": "x"})
    assert status == 400 and "role" in body["error"]["message"]


async def test_a_move_takes_the_keys_that_followed_the_home_team(admin: Stack) -> None:
    # alice's key bills to research, her home team; one more is made for audit explicitly.
    status, body = await call(admin, "POST", "/admin/v1/keys", {"user": "alice", "team": "audit"})
    audit_key = body["info"]["id"]
    status, body = await call(admin, "PATCH", "/admin/v1/users/alice", {"team": "support"})
    assert (status, body["team"], body["keys_moved"], body["active_keys"]) == (
        200,
        "support",
        1,
        2,
    )
    status, body = await call(admin, "GET", "/admin/v1/keys")
    alices = {k["id"]: k["team"] for k in body["keys"] if k["user"] == "alice"}
    assert alices.pop(audit_key) == "audit" and list(alices.values()) == ["support"]
    # A team that does not exist is not made by a move: 404, and nothing changed.
    status, body = await call(admin, "PATCH", "/admin/v1/users/alice", {"team": "nowhere"})
    assert status == 404 and "nowhere" in body["error"]["message"]
    status, body = await call(admin, "GET", "/admin/v1/users?team=support")
    assert [(u["name"], u["team"]) for u in body["users"]] == [
        ("alice", "support"),
        ("bob", "support"),
    ]
    status, body = await call(admin, "GET", "/admin/v1/teams")
    assert "nowhere" not in {t["name"] for t in body["teams"]}


# ----------------------------------------------------------------------------- keys


async def test_keys_issue_list_and_revoke(admin: Stack) -> None:
    expires = datetime.now(UTC) + timedelta(days=30)
    status, body = await call(
        admin,
        "POST",
        "/admin/v1/keys",
        {"user": "dave", "team": "research", "expires_at": expires.isoformat()},
    )
    assert status == 201
    key, info = body["key"], body["info"]
    assert key.startswith("gm-") and info["user"] == "dave" and info["team"] == "research"
    assert datetime.fromisoformat(info["expires_at"]) == expires

    # The key works for a proxied call (the emulator saw the call, with the upstream key).
    response = await admin.sdk(key=key).aio.models.generate_content(
        model="gemini-2.5-flash", contents="hello"
    )
    assert response.text

    status, _, listing = await raw("GET", admin.url("/admin/v1/keys"), headers=bearer())
    assert status == 200 and key.encode() not in listing
    keys = {k["id"]: k for k in json.loads(listing)["keys"]}
    assert keys[info["id"]]["label"] == key[:7] + "..."
    assert {k["user"] for k in keys.values()} == {"alice", "bob", "carol", "dave"}
    assert all("last_used_at" in k for k in keys.values())

    status, body = await call(admin, "DELETE", f"/admin/v1/keys/{info['id']}")
    assert status == 200 and body["revoked_at"] is not None
    status, body = await call(admin, "DELETE", f"/admin/v1/keys/{info['id']}")
    assert status == 404
    status, body = await call(admin, "DELETE", "/admin/v1/keys/abc")
    assert status == 400

    for bad in (
        {"user": "dave", "expires_at": "2020-01-01T00:00:00Z"},
        {"user": "dave", "expires_at": "2099-01-01T00:00:00"},
        {"user": ""},
    ):
        status, body = await call(admin, "POST", "/admin/v1/keys", bad)
        assert status == 400, bad
        assert ("expires_at" if "expires_at" in bad else "user") in body["error"]["message"]


# -------------------------------------------------------------------------- budgets

BUDGET = {
    "scope": "team:research",
    "limit_usd": "25.50",
    "window": "monthly",
    "timezone": "Europe/Paris",
    "mode": "enforce",
    "webhook": WEBHOOK,
    "webhook_format": "slack",
}


async def test_budgets_crud(admin: Stack) -> None:
    status, _, data = await raw(
        "POST", admin.url("/admin/v1/budgets"), headers=bearer(), data=json.dumps(BUDGET)
    )
    assert status == 201 and WEBHOOK.encode() not in data
    created = json.loads(data)
    assert created["scope"] == "team:research"
    assert Decimal(created["limit_usd"]) == Decimal("25.50")
    assert created["limit_tokens"] is None
    assert created["thresholds"] == ["0.5", "0.8", "1"]
    assert created["webhook_configured"] is True and "webhook" not in created
    budget_id = created["id"]

    # Stored sealed: the column is not the URL, and unseals to it under the server secret.
    async with admin.app[sessionmaker_key]() as session:
        row = await session.get(BudgetRow, budget_id)
    assert row is not None and row.webhook_sealed is not None
    assert WEBHOOK not in row.webhook_sealed
    assert unseal(admin.settings.secret_bytes(), row.webhook_sealed) == WEBHOOK

    status, body = await call(admin, "GET", f"/admin/v1/budgets/{budget_id}")
    assert (status, body) == (200, created)
    status, body = await call(admin, "GET", "/admin/v1/budgets")
    assert body["budgets"] == [created]

    replaced = {
        "scope": "user:alice",
        "limit_tokens": 1000,
        "category": "thinking",
        "window": "daily",
        "mode": "alert",
        "thresholds": ["0.25", "0.9"],
    }
    status, body = await call(admin, "PUT", f"/admin/v1/budgets/{budget_id}", replaced)
    assert status == 200
    assert (body["scope"], body["limit_tokens"], body["limit_usd"]) == ("user:alice", 1000, None)
    assert (body["category"], body["timezone"], body["thresholds"]) == (
        "thinking",
        "UTC",
        ["0.25", "0.9"],
    )
    assert body["webhook_configured"] is False

    status, body = await call(admin, "PUT", "/admin/v1/budgets/999", replaced)
    assert status == 404
    status, body = await call(admin, "DELETE", f"/admin/v1/budgets/{budget_id}")
    assert (status, body) == (204, None)
    status, body = await call(admin, "GET", f"/admin/v1/budgets/{budget_id}")
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"
    status, body = await call(admin, "DELETE", f"/admin/v1/budgets/{budget_id}")
    assert status == 404


# Each bad budget and the field its 400 must name.
INVALID_BUDGETS: list[tuple[dict[str, Any], str]] = [
    ({"scope": "group:x"}, "scope"),
    ({"scope": "user:"}, "scope"),
    ({"scope": "key:abc"}, "scope"),
    ({"limit_usd": "0"}, "limit_usd"),
    ({"limit_usd": "-3"}, "limit_usd"),
    ({"limit_usd": 2.5}, "limit_usd"),
    ({"limit_usd": "lots"}, "limit_usd"),
    ({"limit_tokens": 100}, "limit_usd and limit_tokens"),
    ({"limit_usd": None}, "limit_usd and limit_tokens"),
    ({"limit_usd": None, "limit_tokens": 0}, "limit_tokens"),
    ({"limit_usd": None, "limit_tokens": 1.5}, "limit_tokens"),
    ({"category": "grounding", "limit_usd": None, "limit_tokens": 5}, "category"),
    ({"category": "pictures"}, "category"),
    ({"window": "hourly"}, "window"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"thresholds": ["0.8", "0.5"]}, "thresholds"),
    ({"thresholds": ["0", "0.5"]}, "thresholds"),
    ({"thresholds": ["0.5", "1.5"]}, "thresholds"),
    ({"thresholds": []}, "thresholds"),
    ({"mode": "block"}, "mode"),
    ({"webhook": "http://hooks.example.test/x"}, "webhook"),
    ({"webhook": "ftp://127.0.0.1/x"}, "webhook"),
    ({"webhook_format": "xml"}, "webhook_format"),
    ({"colour": "red"}, "colour"),
]


@sqlite_only
async def test_budget_validation_names_the_field(admin: Stack) -> None:
    for change, field in INVALID_BUDGETS:
        body = {**BUDGET, **change}
        for method, path in (("POST", "/admin/v1/budgets"), ("PUT", "/admin/v1/budgets/1")):
            status, _, data = await raw(
                method, admin.url(path), headers=bearer(), data=json.dumps(body)
            )
            assert status == 400, (change, method)
            message = gemini_error(data, 400, "INVALID_ARGUMENT")
            assert field in message, (change, message)
            assert WEBHOOK not in message
    status, body = await call(admin, "GET", "/admin/v1/budgets")
    assert body["budgets"] == []
    # A category is allowed on both kinds: grounding cost, thinking tokens.
    for ok in (
        {"category": "grounding"},
        {"category": "thinking", "limit_usd": None, "limit_tokens": 5},
    ):
        status, body = await call(admin, "POST", "/admin/v1/budgets", {**BUDGET, **ok})
        assert status == 201, body
    # An http webhook to loopback is accepted (a local receiver).
    status, body = await call(
        admin, "POST", "/admin/v1/budgets", {**BUDGET, "webhook": "http://127.0.0.1:9/hook"}
    )
    assert status == 201


# ------------------------------------------------------------------- status and usage


async def seed(stack: Stack, rows: list[tuple[str, datetime, Usage, Cost, str]]) -> None:
    """Usage records for (user, at, usage, cost, model), billed to the user's key's team."""
    async with stack.app[sessionmaker_key].begin() as session:
        values: list[dict[str, Any]] = []
        for user, at, usage, cost, model in rows:
            user_row = (await session.scalars(select(User).where(User.name == user))).one()
            key = (
                await session.scalars(select(ApiKey).where(ApiKey.user_id == user_row.id))
            ).first()
            assert key is not None
            principal = Principal(user_row.id, user, key.team_id, None, key.id)
            record = UsageRecord(
                request_id=f"seed-{len(values)}-{at.timestamp()}-{user}",
                created_at=at,
                principal=principal,
                model=model,
                endpoint=EndpointKind.GENERATE_CONTENT,
                streamed=False,
                upstream_status=200,
                latency_seconds=0.1,
                ttfb_seconds=0.1,
                usage=usage,
                cost=cost,
            )
            values.append(writes.usage_values(record))
        await writes.insert_usage_rows(session, values)


def usage_of(inp: int, out: int, think: int = 0) -> Usage:
    return Usage(
        input_tokens=inp,
        output_tokens=out,
        thinking_tokens=think,
        total_tokens=inp + out + think,
    )


def cost_of(inp: str, out: str, think: str = "0") -> Cost:
    i, o, t = Decimal(inp), Decimal(out), Decimal(think)
    return Cost(total=i + o + t, input=i, output=o, thinking=t, catalog_version="t")


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC)


async def test_budget_status_sums_the_scope_in_the_window(admin: Stack, now: datetime) -> None:
    # A weekly window in Tokyo (UTC+9, no DST): the week began on Monday 00:00 JST.
    from zoneinfo import ZoneInfo

    local = now.astimezone(ZoneInfo("Asia/Tokyo"))
    monday = (local - timedelta(days=local.weekday())).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    week_start = monday.astimezone(UTC)
    inside = week_start + timedelta(minutes=1)
    before = week_start - timedelta(minutes=1)
    await seed(
        admin,
        [
            ("alice", inside, usage_of(100, 50, 30), cost_of("1.25", "2.50", "0.75"), "m1"),
            ("carol", inside, usage_of(10, 5), cost_of("0.10", "0.20"), "m2"),
            ("bob", inside, usage_of(1000, 500), cost_of("9", "9"), "m1"),
            ("alice", before, usage_of(7, 7), cost_of("5", "5"), "m1"),
        ],
    )
    spec: dict[str, Any] = {"window": "weekly", "timezone": "Asia/Tokyo", "mode": "alert"}
    created = {}
    extras: dict[str, dict[str, Any]] = {
        # research = alice + carol in the window: 1.25+2.50+0.75 + 0.10+0.20 = 4.80 of 6
        "team": {"scope": "team:research", "limit_usd": "6"},
        # alice's thinking tokens in the window: 30 of 40
        "thinking": {"scope": "user:alice", "limit_tokens": 40, "category": "thinking"},
        # everyone's total tokens: 180 + 15 + 1500 = 1695 of 1000 (exceeded)
        "global": {"scope": "global", "limit_tokens": 1000},
    }
    for name, extra in extras.items():
        status, body = await call(admin, "POST", "/admin/v1/budgets", {**spec, **extra})
        assert status == 201
        created[name] = body["id"]

    status, team = await call(admin, "GET", f"/admin/v1/budgets/{created['team']}/status")
    assert status == 200
    assert (Decimal(team["spend"]), Decimal(team["limit"])) == (Decimal("4.80"), Decimal(6))
    assert Decimal(team["remaining"]) == Decimal("1.20")
    assert Decimal(team["ratio"]) == Decimal("0.8")
    assert [Decimal(t) for t in team["thresholds_reached"]] == [Decimal("0.5"), Decimal("0.8")]
    assert team["unit"] == "usd" and team["exceeded"] is False
    assert datetime.fromisoformat(team["window_start"]) == week_start
    assert datetime.fromisoformat(team["resets_at"]) == week_start + timedelta(days=7)

    status, body = await call(admin, "GET", "/admin/v1/budgets/status")
    by_id = {s["budget"]["id"]: s for s in body["statuses"]}
    thinking, everyone = by_id[created["thinking"]], by_id[created["global"]]
    assert (thinking["unit"], thinking["spend"], thinking["ratio"]) == ("tokens", "30", "0.75")
    assert (everyone["spend"], everyone["exceeded"], everyone["remaining"]) == ("1695", True, "0")
    assert everyone["thresholds_reached"] == ["0.5", "0.8", "1"]


async def test_usage_report(admin: Stack, now: datetime) -> None:
    day = now.replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=3)
    await seed(
        admin,
        [
            ("alice", day, usage_of(100, 50), cost_of("1", "2"), "m1"),
            ("alice", day, usage_of(10, 5), cost_of("0.5", "0.25"), "m2"),
            ("bob", day, usage_of(1, 1), cost_of("0.001", "0.002"), "m1"),
            ("alice", day - timedelta(days=2), usage_of(9, 9), cost_of("7", "7"), "m1"),
        ],
    )
    since = (day - timedelta(hours=1)).isoformat()
    status, _, data = await raw(
        "GET",
        admin.url("/admin/v1/usage"),
        headers=bearer(),
        params={"group_by": "user,model", "since": since},
    )
    assert status == 200
    body = json.loads(data)
    assert body["group_by"] == ["user", "model"]
    got = {
        (r["user"], r["model"]): (r["requests"], r["total_tokens"], Decimal(r["cost_usd"]))
        for r in body["rows"]
    }
    assert got == {
        ("alice", "m1"): (1, 150, Decimal(3)),
        ("alice", "m2"): (1, 15, Decimal("0.75")),
        ("bob", "m1"): (1, 2, Decimal("0.003")),
    }
    assert all("team" not in r and "day" not in r for r in body["rows"])
    status, body = await call(admin, "GET", "/admin/v1/usage?group_by=team&team=research")
    assert [(r["team"], r["requests"]) for r in body["rows"]] == [("research", 3)]
    status, body = await call(admin, "GET", "/admin/v1/usage?group_by=colour")
    assert status == 400 and "group_by" in body["error"]["message"]
    status, body = await call(admin, "GET", "/admin/v1/usage?since=yesterday")
    assert status == 400 and "since" in body["error"]["message"]
    status, body = await call(admin, "GET", "/admin/v1/usage?verbose=1")
    assert status == 400 and "verbose" in body["error"]["message"]


# -------------------------------------------------------------------------- OpenAPI


@sqlite_only
async def test_openapi_document_is_valid_and_complete(admin: Stack) -> None:
    status, doc = await call(admin, "GET", "/admin/v1/openapi.json")
    assert status == 200
    validate(doc)  # OpenAPI 3.1, every $ref resolved
    assert doc["openapi"] == "3.1.0"
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in admin.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith(("/admin/v1/", "/meter/v1/"))
    }
    documented = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert served == documented
    assert len(served) == len(OPERATIONS) + 2
    budget = doc["components"]["schemas"]
    # Money is a decimal string in responses, never a float.
    assert any(
        s.get("properties", {}).get("spend", {}).get("type") == "string" for s in budget.values()
    )
    # Behind the token like every admin route.
    status, _ = await call(admin, "GET", "/admin/v1/openapi.json", token=None)
    assert status == 401


# ------------------------------------------------------------------------ no secrets


@sqlite_only
async def test_no_secret_in_logs(admin: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await call(admin, "POST", "/admin/v1/budgets", BUDGET)
    await call(admin, "POST", "/admin/v1/budgets", {**BUDGET, "webhook": "http://x/" + WEBHOOK})
    _, created = await call(admin, "POST", "/admin/v1/keys", {"user": "zed"})
    await call(admin, "GET", "/admin/v1/users", token=TOKEN + "nope")
    await raw("GET", admin.url("/meter/v1/usage"), headers={"x-goog-api-key": created["key"]})
    text = caplog.text
    for secret in (TOKEN, WEBHOOK, created["key"], "s3cr3t"):
        assert secret not in text
