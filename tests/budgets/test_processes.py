"""Two proxy processes on one PostgreSQL enforce one budget: with Redis, and without.

Each "process" is a full ``create_app`` with its own journal, served on its own port,
on the same database (and the same Redis key prefix when Redis is used): everything
they share goes through PostgreSQL and Redis, as between real processes. Calls are
made one at a time (each process's Redis settlements sent before the next) where the
test counts admissions exactly; the race tests are concurrent.

Redis is the one on 127.0.0.1:6379 (``scripts/test.sh`` starts it); each test uses
database 15 under a key prefix of its own, deleted afterwards. Unreachable, the tests
fail: they never skip.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from proxy.budgets.rules import usd_to_nanos
from proxy.server.app import create_app
from proxy.server.typedefs import budgets_key, writer_key
from proxy.settings import Secret
from tests.budgets.helpers import RESERVATION, call, forwarded, probe_cost, spend_of
from tests.factories import Stack, StackFactory, add_budget, add_spend, gemini_error, raw

postgresql_only = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgresql)], indirect=True
)
REDIS_URL = "redis://127.0.0.1:6379/15"
LIMIT = Decimal("0.2")
BEFORE = Decimal("0.197")


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own on the test Redis, its keys deleted afterwards."""
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        await client.ping()  # type: ignore[misc]  # redis-py types ping for both clients
    except Exception as exc:
        await client.aclose()
        pytest.fail(
            f"Redis is unreachable at {REDIS_URL} ({exc!r}); start redis-server "
            "(scripts/test.sh does).",
            pytrace=False,
        )
    prefix = f"gm-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def second_process(stack: Stack, proxy_server: Any, tmp_path: Any) -> TestServer:
    """Another proxy on the same settings (database, secret, Redis), its own journal."""
    settings = stack.settings.replace(journal_dir=tmp_path / "journal-second")
    server: TestServer = await proxy_server(create_app(settings, registry=CollectorRegistry()))
    return server


async def total_spend(stack: Stack, *servers: TestServer, user: str) -> Decimal:
    """The user's spend in the database once every process's writer has flushed."""
    for server in servers:
        await server.app[writer_key].flush()
    return await spend_of(stack, user)


def base_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def one_call(stack: Stack, server: TestServer, user: str) -> int:
    """One call through ``server``; its Redis settlement sent before returning."""
    status, _, _ = await call(stack, user, base_url(server))
    await server.app[budgets_key].settled()
    return status


def admissions(cost: Decimal) -> int:
    """How many calls one view admits from BEFORE, one at a time.

    A call is admitted while spend + RESERVATION <= LIMIT; each admitted call then
    settles to ``cost``: the k-th (from 0) needs BEFORE + k * cost + RESERVATION <= LIMIT.
    """
    return math.floor((LIMIT - BEFORE - RESERVATION) / cost) + 1


@postgresql_only
async def test_with_redis_two_processes_share_one_count(
    make_stack: StackFactory, proxy_server: Any, tmp_path: Any, redis_prefix: str
):
    stack = await make_stack(
        budget_reserve_usd=Decimal("0.001"),
        budget_refresh_seconds=3600.0,
        redis_url=Secret(REDIS_URL),
        redis_prefix=redis_prefix,
    )
    cost = await probe_cost(stack)
    expected = admissions(cost)
    # 0.003 of headroom: (0.003 - 0.0012566) / cost + 1 calls, whichever process serves them
    assert expected >= 2
    budget_id = await add_budget(stack.app, "user:alice", limit_usd=str(LIMIT))
    await add_spend(stack.app, "alice", str(BEFORE))
    first = stack.proxy
    second = await second_process(stack, proxy_server, tmp_path)
    await first.app[budgets_key].refresh()
    before = forwarded(stack)

    statuses = [await one_call(stack, (first, second)[i % 2], "alice") for i in range(3 * expected)]
    assert statuses.count(200) == expected
    assert statuses[:expected] == [200] * expected  # both processes served some
    assert forwarded(stack) - before == expected
    assert await total_spend(stack, second, user="alice") == BEFORE + expected * cost <= LIMIT

    # A Redis restart loses the counters: the next refresh rebuilds them from the database.
    engine = first.app[budgets_key]
    assert engine.redis is not None
    (budget,) = [b for b in engine.budgets if b.id == budget_id]
    key = (budget.id, budget.bounds(datetime.now(UTC))[0])
    assert await engine.redis.value(key) == usd_to_nanos(BEFORE + expected * cost)
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    await client.delete(*[k async for k in client.scan_iter(match=f"{redis_prefix}*")])
    await client.aclose()
    assert await engine.redis.value(key) == 0
    await engine.refresh()
    assert await engine.redis.value(key) == usd_to_nanos(BEFORE + expected * cost)
    # the other process, whose own view is stale, is refused by the rebuilt count
    status, _, body = await call(stack, "alice", base_url(second))
    assert status == 429, body
    gemini_error(body, 429, "RESOURCE_EXHAUSTED")


@postgresql_only
async def test_with_redis_concurrent_calls_on_two_processes_stay_within_the_limit(
    make_stack: StackFactory, proxy_server: Any, tmp_path: Any, redis_prefix: str
):
    stack = await make_stack(
        budget_reserve_usd=Decimal("0.001"),
        budget_refresh_seconds=3600.0,
        redis_url=Secret(REDIS_URL),
        redis_prefix=redis_prefix,
    )
    cost = await probe_cost(stack)
    await add_budget(stack.app, "user:carol", limit_usd=str(LIMIT))
    await add_spend(stack.app, "carol", "0.19")
    second = await second_process(stack, proxy_server, tmp_path)
    await stack.app[budgets_key].refresh()
    before = forwarded(stack)
    servers = (stack.proxy, second)
    results = await asyncio.gather(
        *(call(stack, "carol", base_url(servers[i % 2])) for i in range(50))
    )
    admitted = [status for status, _, _ in results].count(200)
    assert forwarded(stack) - before == admitted
    # One process alone would admit at least 0.01 / RESERVATION; two sharing Redis no more
    # than the headroom allows: reservation >= cost, so the bound is the limit itself.
    assert math.floor(Decimal("0.01") / RESERVATION) <= admitted
    assert admitted <= math.floor(Decimal("0.01") / cost)
    spend = await total_spend(stack, second, user="carol")
    assert spend == Decimal("0.19") + admitted * cost <= LIMIT


@postgresql_only
async def test_without_redis_each_process_admits_on_its_view_until_it_refreshes(
    make_stack: StackFactory, proxy_server: Any, tmp_path: Any
):
    stack = await make_stack(budget_reserve_usd=Decimal("0.001"), budget_refresh_seconds=3600.0)
    cost = await probe_cost(stack)
    expected = admissions(cost)
    await add_budget(stack.app, "user:alice", limit_usd=str(LIMIT))
    await add_spend(stack.app, "alice", str(BEFORE))
    first = stack.proxy
    second = await second_process(stack, proxy_server, tmp_path)
    await first.app[budgets_key].refresh()

    # Neither refreshes meanwhile: each admits what its own view allows.
    first_statuses = [await one_call(stack, first, "alice") for _ in range(expected + 2)]
    second_statuses = [await one_call(stack, second, "alice") for _ in range(expected + 2)]
    assert first_statuses.count(200) == second_statuses.count(200) == expected
    spend = await total_spend(stack, second, user="alice")
    assert spend == BEFORE + 2 * expected * cost
    # docs/budgets.md: overshoot <= (processes - 1) * what one view can admit past the
    # last refresh, here the whole headroom the snapshot showed.
    assert spend <= LIMIT + (2 - 1) * (LIMIT - BEFORE)
    assert spend > LIMIT  # the bound is not idle: without Redis the views do diverge

    # A refresh brings in the other's spend from PostgreSQL: both refuse.
    await first.app[writer_key].flush()
    await second.app[writer_key].flush()
    for server in (first, second):
        await server.app[budgets_key].refresh()
        assert await one_call(stack, server, "alice") == 429


async def test_redis_unreachable_fails_open_to_the_local_view(make_stack: StackFactory):
    stack = await make_stack(
        budget_refresh_seconds=3600.0,
        redis_url=Secret("redis://127.0.0.1:1/0"),
        redis_timeout_seconds=2.0,
    )
    await add_budget(stack.app, "user:alice", limit_usd="1")
    await add_budget(stack.app, "user:bob", limit_usd="1")
    await add_spend(stack.app, "bob", "1")
    await stack.app[budgets_key].refresh()
    status, _, body = await call(stack, "alice")
    assert status == 200, body
    status, _, body = await call(stack, "bob")  # the local view still knows bob's spend
    assert status == 429, body
    _, _, text = await raw("GET", stack.url("/metrics"))
    # bob's call was refused by the local view without asking Redis
    assert b'gemini_meter_budget_redis_errors_total{operation="reserve"} 1.0' in text
    assert b'gemini_meter_budget_redis_errors_total{operation="seed"}' in text


async def test_redis_unreachable_fails_closed_when_configured(make_stack: StackFactory):
    stack = await make_stack(
        budget_refresh_seconds=3600.0,
        redis_url=Secret("redis://127.0.0.1:1/0"),
        redis_timeout_seconds=2.0,
        budget_redis_failure="closed",
    )
    await add_budget(stack.app, "user:alice", limit_usd="1")
    await stack.app[budgets_key].refresh()
    status, _, body = await call(stack, "alice")
    gemini_error(body, 503, "UNAVAILABLE")
    assert status == 503 and forwarded(stack) == 0
    status, _, body = await call(stack, "bob")  # no enforced budget: Redis is not asked
    assert status == 200, body
