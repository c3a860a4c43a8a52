"""``GET /admin/v1/records``: the most recent usage records, on SQLite and PostgreSQL.

Records are seeded with ``add_spend`` at hand-picked times and amounts; the expected
answers are those figures, newest first.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from proxy.admin.openapi import openapi_document
from proxy.settings import Secret
from tests.factories import Stack, StackFactory, add_spend, gemini_error, raw

TOKEN = "admin-token-0123456789abcdef"
BEARER = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin(make_stack: StackFactory) -> Stack:
    return await make_stack(admin_token=Secret(TOKEN))


async def records(stack: Stack, query: str = "") -> tuple[int, bytes]:
    status, _, body = await raw("GET", stack.url(f"/admin/v1/records{query}"), headers=BEARER)
    return status, body


async def test_the_most_recent_records_newest_first(admin: Stack) -> None:
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    # Written out of time order: the answer follows created_at, not insertion.
    await add_spend(admin.app, "bob", "0.25", at=start + timedelta(hours=2), input_tokens=40)
    await add_spend(admin.app, "alice", "1.5", at=start, input_tokens=100, output_tokens=20)
    await add_spend(admin.app, "carol", "0.125", at=start + timedelta(hours=1), output_tokens=7)

    status, body = await records(admin)
    assert status == 200
    got = json.loads(body)["records"]
    assert [(r["user"], r["team"], r["cost_usd"]) for r in got] == [
        ("bob", "support", "0.25"),
        ("carol", "research", "0.125"),
        ("alice", "research", "1.5"),
    ]
    assert got[0]["created_at"].startswith("2026-03-01T14:00:00")
    alice = got[2]
    assert alice["model"] == "gemini-2.5-flash" and alice["endpoint"] == "generate_content"
    assert (alice["status"], alice["streamed"], alice["provisional"]) == (200, False, False)
    assert (alice["input_tokens"], alice["output_tokens"], alice["total_tokens"]) == (100, 20, 120)
    assert alice["cached_tokens"] == alice["intermediate_tokens"] == alice["thinking_tokens"] == 0

    status, body = await records(admin, "?limit=2")
    assert [r["user"] for r in json.loads(body)["records"]] == ["bob", "carol"]


async def test_the_limit_is_bounded(admin: Stack) -> None:
    for bad in ("0", "1001", "x", "-1"):
        status, body = await records(admin, f"?limit={bad}")
        assert status == 400, bad
        assert "limit" in gemini_error(body, 400, "INVALID_ARGUMENT")
    status, body = await records(admin, "?user=alice")
    assert status == 400
    status, body = await records(admin, "?limit=1000")
    assert (status, json.loads(body)) == (200, {"records": []})


def test_documented() -> None:
    op = openapi_document()["paths"]["/admin/v1/records"]["get"]
    [limit] = op["parameters"]
    assert (limit["name"], limit["schema"]["maximum"], limit["schema"]["default"]) == (
        "limit",
        1000,
        50,
    )
    assert op["security"] == [{"adminToken": []}, {"uiSession": []}]
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RecordList"
    }
