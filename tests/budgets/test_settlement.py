"""Settlement: a reservation is replaced by what the record counts, streams and
provisional records included; compared with the upstream's own usage figures."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from proxy.budgets.engine import BudgetEngine, build_budget_metrics
from proxy.budgets.estimate import Estimate
from proxy.budgets.rules import Budget
from proxy.errors import ResourceExhausted
from proxy.metering.records import Usage
from proxy.server.typedefs import budgets_key, sessionmaker_key
from proxy.settings import Secret, Settings
from proxy.storage import accounts
from proxy.storage.schema import BudgetRow, make_engine, make_sessionmaker
from tests.factories import UPSTREAM_KEY, Stack, StackFactory, add_budget, raw
from tests.faults.helpers import cutting_upstream
from tests.faults.test_stream_faults import _read_cut

CREATE = "/v1beta/interactions"
STREAM_GENERATE = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"


async def token_budget(stack: Stack, user: str) -> Budget:
    budget_id = await add_budget(stack.app, f"user:{user}", limit_tokens=1_000_000)
    await stack.app[budgets_key].refresh()
    (budget,) = [b for b in stack.app[budgets_key].budgets if b.id == budget_id]
    return budget


def counted(stack: Stack, budget: Budget) -> tuple[int, int]:
    """(spend, reserved) in this process's counters for the budget's current window."""
    local = stack.app[budgets_key].local
    key = (budget.id, budget.bounds(datetime.now(UTC))[0])
    return local.spend(key), local.reserved(key)


async def test_a_stream_settles_to_the_tokens_it_carried(make_stack: StackFactory):
    stack = await make_stack(budget_refresh_seconds=3600.0)
    budget = await token_budget(stack, "alice")
    body = {"contents": [{"role": "user", "parts": [{"text": "Stream me something."}]}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url(STREAM_GENERATE), headers=stack.headers(), json=body) as response,
    ):
        assert response.status == 200
        events = [
            json.loads(line[len(b"data: ") :])
            async for line in response.content
            if line.startswith(b"data: ")
        ]
    usage = events[-1]["usageMetadata"]  # the upstream's own total for the call
    billed = usage["promptTokenCount"] + usage["candidatesTokenCount"]
    billed += usage.get("thoughtsTokenCount", 0)
    assert counted(stack, budget) == (billed, 0)


async def test_a_provisional_record_is_replaced_not_added(
    make_stack: StackFactory, aiohttp_server: Any
):
    async def wrap(emulator_url: str) -> str:
        relay = await aiohttp_server(cutting_upstream(emulator_url, 2))
        return str(relay.make_url("")).rstrip("/")

    stack = await make_stack(wrap_upstream=wrap, budget_refresh_seconds=3600.0)
    budget = await token_budget(stack, "alice")
    body = {"model": "gemini-3.5-flash", "input": "Say hello after a cut.", "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url(CREATE), headers=stack.headers(), json=body) as response,
    ):
        assert response.status == 200
        await _read_cut(response)
    [iid] = list(stack.upstream.interactions)
    [record] = await stack.records()
    assert record["provisional"] is True
    partial = record["input_tokens"] + record["output_tokens"] + record["thinking_tokens"]
    assert counted(stack, budget) == (partial, 0)

    status, _, _ = await raw("GET", stack.url(f"{CREATE}/{iid}"), headers=stack.headers())
    assert status == 200
    upstream_url = str(stack.emulator.make_url(f"{CREATE}/{iid}"))
    _, _, direct = await raw("GET", upstream_url, headers={"x-goog-api-key": UPSTREAM_KEY})
    total = json.loads(direct)["usage"]["total_tokens"]
    assert total > partial
    # the terminal usage replaces the partial one: counted once, as in the database
    assert counted(stack, budget) == (total, 0)


async def test_the_engine_counts_a_provisional_record_then_only_the_difference(
    make_stack: StackFactory, make_record: Any
):
    # Interaction streams carry usage only at their end, so through the proxy a cut
    # leaves a zero provisional record; here the engine gets one with partial usage.
    stack = await make_stack(budget_refresh_seconds=3600.0)
    budget = await token_budget(stack, "alice")
    engine = stack.app[budgets_key]
    async with stack.app[sessionmaker_key]() as session:
        alice = await accounts.principal_for_user(session, "alice")
    partial = Usage(input_tokens=30, output_tokens=5, total_tokens=35)
    whole = Usage(input_tokens=30, output_tokens=70, thinking_tokens=20, total_tokens=120)
    engine.settle(make_record(alice, interaction_id="i-1", usage=partial, provisional=True), None)
    assert counted(stack, budget) == (35, 0)
    engine.settle(make_record(alice, interaction_id="i-1", usage=whole), None)
    assert counted(stack, budget) == (120, 0)
    engine.settle(make_record(alice, interaction_id="i-2", usage=whole), None)
    assert counted(stack, budget) == (240, 0)


async def test_counters_start_afresh_when_the_window_rolls_over(
    migrated_url: str, make_record: Any, tmp_path: Any
):
    """The engine's own clock moved past the window's end: the new window's counter
    starts at zero, while the records of the old one stay counted in it."""
    settings = Settings(
        database_url=migrated_url,
        key_secret=Secret("test-secret"),
        key_secret_file=tmp_path / "secret",
        budget_reserve_usd=Decimal(0),
        budget_default_output_tokens=0,
    )
    engine_ = make_engine(migrated_url)
    sessions = make_sessionmaker(engine_)
    zone = ZoneInfo("America/Los_Angeles")
    now = [datetime(2026, 3, 8, 23, 30, tzinfo=zone)]  # the 23-hour day of DST's start
    engine = BudgetEngine(
        settings, sessions, build_budget_metrics(CollectorRegistry()), clock=lambda: now[0]
    )
    try:
        async with sessions() as session:
            alice = await accounts.principal_for_user(session, "alice")
            session.add(
                BudgetRow(
                    scope_kind="user",
                    scope_name="alice",
                    limit_tokens=100,
                    window="daily",
                    timezone="America/Los_Angeles",
                    thresholds=["1"],
                    mode="enforce",
                    webhook_format="json",
                )
            )
            await session.commit()
        await engine.refresh()

        def guess() -> Estimate:
            return Estimate(Usage(input_tokens=10, total_tokens=10), Decimal(0), 0)

        spent = Usage(input_tokens=100, total_tokens=100)
        engine.settle(make_record(alice, created_at=now[0], usage=spent), None)
        with pytest.raises(ResourceExhausted) as refused:
            await engine.admit(alice, guess)
        # local midnight after 2026-03-08 in Los Angeles is 07:00 UTC (PDT, UTC-7)
        assert "resets at 2026-03-09T00:00:00-07:00" in refused.value.message
        assert refused.value.headers == {"Retry-After": str(30 * 60)}

        now[0] = datetime(2026, 3, 9, 0, 0, tzinfo=zone)
        reservation = await engine.admit(alice, guess)
        assert reservation is not None
        (entry,) = reservation.entries
        assert entry.start == datetime(2026, 3, 9, 7, 0, tzinfo=UTC)
        assert engine.local.spend(entry.key) == 0 and engine.local.reserved(entry.key) == 10
    finally:
        await engine.close()
        await engine_.dispose()
