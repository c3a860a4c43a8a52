"""Enforcement through the proxy: the boundary, windows, free routes, the SDKs, the race.

Every call here is a plain generateContent on gemini-2.5-flash with a fixed body, so
its reservation is worked by hand (``RESERVATION``); what a call really costs comes
from the emulator's own ``usageMetadata`` priced at the catalog's rates (``helpers``).
"""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from google.genai import errors

from proxy.server.typedefs import budgets_key
from tests.budgets.helpers import (
    BODY,
    INPUT_RATE,
    MODEL,
    OUTPUT_RATE,
    RESERVATION,
    RESERVE_USD,
    call,
    cost_of,
    forwarded,
    probe_cost,
    spend_of,
)
from tests.factories import Stack, StackFactory, add_budget, add_spend, gemini_error, raw
from tests.test_continuation import js_sdk  # noqa: F401  (fixture)

SETTINGS = {"budget_reserve_usd": RESERVE_USD, "budget_refresh_seconds": 3600.0}


def test_the_hand_worked_reservation_matches_the_body():
    assert len(BODY) == 87
    assert Decimal(22) * INPUT_RATE + 100 * OUTPUT_RATE + RESERVE_USD == RESERVATION


async def refresh(stack: Stack) -> None:
    await stack.app[budgets_key].refresh()


async def test_the_boundary_reached_refused_exactly_fitting_admitted_one_nano_over_refused(
    make_stack: StackFactory,
):
    stack = await make_stack(**SETTINGS)
    for user in ("alice", "bob", "carol"):
        await add_budget(stack.app, f"user:{user}", limit_usd="0.01")
    await add_spend(stack.app, "bob", "0.01")  # spend at the limit
    await add_spend(stack.app, "carol", "0.0087434")  # 0.01 - 0.0012566: fits exactly
    await add_spend(stack.app, "alice", "0.0087435")  # 1e-7 over once reserved
    await refresh(stack)

    status, headers, body = await call(stack, "bob")
    assert status == 429
    message = gemini_error(body, 429, "RESOURCE_EXHAUSTED")
    assert "user:bob" in message and "daily" in message and "resets at" in message
    assert int(headers["Retry-After"]) > 0
    status, _, body = await call(stack, "alice")
    assert status == 429, body
    assert forwarded(stack) == 0  # neither refused call reached the upstream

    status, _, body = await call(stack, "carol")
    assert status == 200, body
    assert forwarded(stack) == 1
    # carol's spend is now her old spend plus the real cost, the reservation gone
    real = cost_of(json.loads(body)["usageMetadata"])
    engine = stack.app[budgets_key]
    (carol,) = [b for b in engine.budgets if b.scope_name == "carol"]
    start = carol.bounds(datetime.now(UTC))[0]
    assert engine.local.reserved((carol.id, start)) == 0
    assert engine.local.spend((carol.id, start)) == math.ceil(
        (Decimal("0.0087434") + real) * 1_000_000_000
    )


async def test_a_window_rolls_over_at_local_midnight_in_its_zone(make_stack: StackFactory):
    stack = await make_stack(**SETTINGS)
    zone = ZoneInfo("Asia/Kolkata")  # UTC+05:30: its midnight is 18:30 UTC
    now = datetime.now(zone)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    end = start + timedelta(days=1)
    await add_budget(stack.app, "user:alice", limit_usd="0.01", timezone="Asia/Kolkata")
    # Over the limit, a second before the window: yesterday's, it does not count.
    await add_spend(stack.app, "alice", "0.02", at=start - timedelta(seconds=1))
    await refresh(stack)
    status, _, body = await call(stack, "alice")
    assert status == 200, body

    await add_spend(stack.app, "alice", "0.02", at=start)  # the window's first instant counts
    await refresh(stack)
    status, headers, body = await call(stack, "alice")
    message = gemini_error(body, 429, "RESOURCE_EXHAUSTED")
    assert f"starting {start.isoformat(timespec='seconds')}" in message
    assert f"resets at {end.isoformat(timespec='seconds')}" in message
    assert "+05:30" in message
    assert 0 < int(headers["Retry-After"]) <= math.ceil((end - now).total_seconds()) + 1


async def test_calls_that_cost_nothing_pass_an_exhausted_budget(make_stack: StackFactory):
    stack = await make_stack(**SETTINGS)
    await add_budget(stack.app, "user:alice", limit_usd="0.01")
    await add_budget(stack.app, "global", limit_tokens=1, mode="alert")  # alert never refuses
    status, _, body = await raw(
        "POST",
        stack.url("/v1beta/interactions"),
        headers=stack.headers("alice", **{"content-type": "application/json"}),
        data=json.dumps({"model": MODEL, "input": "hello"}),
    )
    assert status == 200, body
    interaction_id = json.loads(body)["id"]
    await add_spend(stack.app, "alice", "0.01")
    await refresh(stack)

    status, _, body = await call(stack, "alice")
    assert status == 429
    status, _, body = await raw(
        "POST",
        stack.url(f"/v1beta/models/{MODEL}:countTokens"),
        headers=stack.headers("alice", **{"content-type": "application/json"}),
        data=BODY,
    )
    assert status == 200, body
    status, _, body = await raw(
        "GET", stack.url(f"/v1beta/interactions/{interaction_id}"), headers=stack.headers("alice")
    )
    assert status == 200, body
    # creating an interaction is billable: refused like generateContent
    status, _, body = await raw(
        "POST",
        stack.url("/v1beta/interactions"),
        headers=stack.headers("alice", **{"content-type": "application/json"}),
        data=json.dumps({"model": MODEL, "input": "again"}),
    )
    assert status == 429, body
    # bob has no enforced budget: the global one only alerts
    status, _, body = await call(stack, "bob")
    assert status == 200, body
    status, _, text = await raw("GET", stack.url("/metrics"))
    assert status == 200
    assert b'gemini_meter_budget_refusals_total{scope="user"} 2.0' in text


async def test_the_python_sdk_gets_its_usual_quota_error(make_stack: StackFactory):
    stack = await make_stack(**SETTINGS)
    await add_budget(stack.app, "team:research", limit_usd="0.5")
    await add_spend(stack.app, "carol", "0.5")  # a teammate spent the team's budget
    await refresh(stack)
    with pytest.raises(errors.ClientError) as caught:
        await stack.sdk("alice").aio.models.generate_content(model=MODEL, contents="hi")
    assert caught.value.code == 429
    assert caught.value.status == "RESOURCE_EXHAUSTED"
    assert "team:research" in (caught.value.message or "")
    assert forwarded(stack) == 0


async def test_the_javascript_sdk_gets_its_usual_quota_error(
    make_stack: StackFactory,
    js_sdk: Path,  # noqa: F811
):
    stack = await make_stack(**SETTINGS)
    await add_budget(stack.app, "user:carol", limit_usd="0.5")
    await add_spend(stack.app, "carol", "0.5")
    await refresh(stack)
    process = await asyncio.create_subprocess_exec(
        "node",
        str(js_sdk / "quota.mjs"),
        stack.base_url,
        stack.keys["carol"],
        MODEL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    seen = json.loads(stdout)
    assert seen["name"] == "ApiError"
    assert seen["status"] == 429
    assert "RESOURCE_EXHAUSTED" in seen["message"] and "user:carol" in seen["message"]
    assert forwarded(stack) == 0


@pytest.mark.parametrize("reserve", ["0.001", "0"])
async def test_fifty_concurrent_calls_against_a_budget_at_95_percent(
    make_stack: StackFactory, reserve: str
):
    """The documented bound: spend <= limit + sum over admitted calls of (cost - reservation)+.

    With the per-call reserve the reservation covers the cost (the bound is the limit
    itself); without it (and maxOutputTokens 100 below the reply's output) it does not.
    """
    stack = await make_stack(budget_reserve_usd=Decimal(reserve), budget_refresh_seconds=3600.0)
    reservation = RESERVATION - RESERVE_USD + Decimal(reserve)
    cost = await probe_cost(stack)
    limit = Decimal("0.2")
    await add_budget(stack.app, "user:alice", limit_usd=str(limit))
    await add_spend(stack.app, "alice", "0.19")  # 95%
    await refresh(stack)
    before = forwarded(stack)

    results = await asyncio.gather(*(call(stack, "alice") for _ in range(50)))
    statuses = [status for status, _, _ in results]
    admitted = statuses.count(200)
    assert statuses.count(429) == 50 - admitted
    assert forwarded(stack) - before == admitted  # refused calls never reached the upstream

    headroom = limit - Decimal("0.19")
    # Every admission kept spend + reservations + its own within the limit, so at least
    # headroom / max(reservation, cost) calls fit, and none beyond headroom / reservation.
    assert math.floor(headroom / max(reservation, cost)) <= admitted
    assert admitted <= math.floor(headroom / reservation)
    spend = await spend_of(stack, "alice")
    assert spend == Decimal("0.19") + admitted * cost
    bound = admitted * max(Decimal(0), cost - reservation)
    assert spend <= limit + bound
    if reserve != "0":
        assert bound == 0 and spend <= limit


async def test_a_token_budget_reserves_the_estimated_tokens(make_stack: StackFactory):
    # 87 bytes -> 22 input tokens, plus maxOutputTokens 100: 122 tokens reserved.
    stack = await make_stack(budget_reserve_tokens=0, budget_refresh_seconds=3600.0)
    await add_budget(stack.app, "user:alice", limit_tokens=121)
    await add_budget(stack.app, "user:bob", limit_tokens=122)
    await add_budget(stack.app, "user:carol", limit_tokens=10, category="cached")
    await refresh(stack)
    status, _, body = await call(stack, "alice")
    assert "limit 121 tokens" in gemini_error(body, 429, "RESOURCE_EXHAUSTED")
    status, _, body = await call(stack, "bob")
    assert status == 200, body
    # a cached-tokens budget reserves nothing for a prompt without a cache
    status, _, body = await call(stack, "carol")
    assert status == 200, body
    assert forwarded(stack) == 2
