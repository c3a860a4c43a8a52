"""Self-service: GET /meter/v1/usage and /meter/v1/budget show a key its own user's data only.

alice (team research), bob (support) and carol (research) each make real calls through
the proxy with the SDK; what each call cost is read from the stored records, and the
endpoints must report exactly alice's share to alice whatever she sends.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.budgets.model import BudgetSpec
from proxy.server.typedefs import sessionmaker_key
from proxy.settings import Secret
from proxy.storage import accounts, budgets
from tests.factories import Stack, StackFactory, gemini_error, raw, sqlite_only


async def make_calls(stack: Stack, calls: dict[str, int]) -> None:
    for user, count in calls.items():
        client = stack.sdk(user)
        for _ in range(count):
            await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")


async def get(stack: Stack, path: str, headers: dict[str, str], **params: str) -> tuple[int, Any]:
    status, _, data = await raw("GET", stack.url(path), headers=headers, params=params)
    return status, json.loads(data)


async def test_usage_is_the_callers_own(stack: Stack) -> None:
    await make_calls(stack, {"alice": 2, "bob": 3, "carol": 1})
    records = await stack.records()
    alice_id = await stack.user_id("alice")
    mine = [r for r in records if r["user_id"] == alice_id]
    assert len(mine) == 2 and len(records) == 6

    carriers: list[tuple[dict[str, str], dict[str, str]]] = [
        ({"x-goog-api-key": stack.keys["alice"]}, {}),
        ({"authorization": f"Bearer {stack.keys['alice']}"}, {}),
        ({}, {"key": stack.keys["alice"]}),
    ]
    for headers, query in carriers:
        status, body = await get(stack, "/meter/v1/usage", headers, **query)
        assert status == 200, body
        [total] = body["rows"]
        assert total["requests"] == 2
        assert total["total_tokens"] == sum(r["total_tokens"] for r in mine)
        assert "user" not in total

    alice = {"x-goog-api-key": stack.keys["alice"]}
    status, body = await get(stack, "/meter/v1/usage", alice, group_by="model,day")
    assert status == 200 and [r["requests"] for r in body["rows"]] == [2]
    assert body["rows"][0]["model"] == "gemini-2.5-flash"

    # Nothing names anyone else: such parameters are refused, not applied.
    refused: list[dict[str, str]] = [
        {"user": "bob"},
        {"team": "support"},
        {"group_by": "user"},
        {"key_id": "2"},
    ]
    for params in refused:
        status, body = await get(stack, "/meter/v1/usage", alice, **params)
        assert status == 400, params
        assert "bob" not in json.dumps(body)
    # bob sees his three.
    status, body = await get(stack, "/meter/v1/usage", {"x-goog-api-key": stack.keys["bob"]})
    assert body["rows"][0]["requests"] == 3


@sqlite_only
async def test_refused_without_a_valid_key(stack: Stack) -> None:
    for headers in ({}, {"x-goog-api-key": "gm-not-a-key"}, {"authorization": "Bearer nope"}):
        for path in ("/meter/v1/usage", "/meter/v1/budget"):
            status, _, data = await raw("GET", stack.url(path), headers=headers)
            assert status == 401
            gemini_error(data, 401, "UNAUTHENTICATED")


async def test_budgets_are_those_that_apply_to_the_caller(stack: Stack) -> None:
    await make_calls(stack, {"alice": 1, "bob": 1})
    records = await stack.records()  # flushed: what the status must add up
    secret = stack.settings.secret_bytes()
    async with stack.app[sessionmaker_key].begin() as session:
        keys = {k.user: k.id for k in await accounts.list_keys(session)}
        ids = {}
        for name, scope in {
            "global": "global",
            "alice": "user:alice",
            "research": "team:research",
            "alice-key": f"key:{keys['alice']}",
            "bob": "user:bob",
            "support": "team:support",
            "bob-key": f"key:{keys['bob']}",
        }.items():
            spec = BudgetSpec(
                scope=scope,
                limit_tokens=1_000_000,
                window="total",
                mode="enforce",
                webhook="https://hooks.example.test/secret-" + name,
            )
            ids[name] = (await budgets.create_budget(session, secret, spec)).id

    alice = {"x-goog-api-key": stack.keys["alice"]}
    status, _, data = await raw("GET", stack.url("/meter/v1/budget"), headers=alice)
    assert status == 200 and b"secret-" not in data
    statuses = json.loads(data)["statuses"]
    assert {s["budget"]["id"] for s in statuses} == {
        ids["global"],
        ids["alice"],
        ids["research"],
        ids["alice-key"],
    }
    everyone = sum(r["total_tokens"] for r in records)
    alice_id = await stack.user_id("alice")
    hers = sum(r["total_tokens"] for r in records if r["user_id"] == alice_id)
    spend = {s["budget"]["id"]: int(s["spend"]) for s in statuses}
    assert spend[ids["global"]] == everyone and everyone > hers > 0
    assert spend[ids["alice"]] == spend[ids["alice-key"]] == spend[ids["research"]] == hers

    for params in ({"user": "bob"}, {"scope": "user:bob"}, {"id": str(ids["bob"])}):
        status, _, data = await raw(
            "GET", stack.url("/meter/v1/budget"), headers=alice, params=params
        )
        assert status == 400 and b"bob" not in data.replace(b"user:bob", b"")


async def test_admin_token_is_not_a_virtual_key(make_stack: StackFactory) -> None:
    token = "admin-token-0123456789abcdef"
    stack = await make_stack(admin_token=Secret(token))
    status, _, _ = await raw("GET", stack.url("/meter/v1/usage"), headers={"x-goog-api-key": token})
    assert status == 401
