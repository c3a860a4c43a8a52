"""Every dashboard query and every alert expression, run on a real Prometheus.

Debian's ``prometheus`` binary runs on loopback with the repository's rules loaded,
scraping (every second) a proxy in front of the emulator that serves traffic from the
real google-genai SDK: three users in two teams, Interactions with code execution and
thinking, plain and streamed generateContent, an OpenAI-style Imagen image, an unpriced
model, an unmetered route, an upstream error, an unreadable usage, and budgets that stand
at 90%, past their limit (so a call is refused), and on course to run out before their
window ends. Then the usage table is taken away for a while, so the writer fails and the
journal fills, and given back.

Each query must be valid (``status: success``) and return at least one finite sample:
the traffic is shaped so that every panel and every alert has something to show, and
nothing is skipped. Last, the token and cost counters Prometheus scraped equal the
database's totals for the same traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from google.genai import errors, types
from google.genai.interactions import Interaction
from sqlalchemy import func, select

from proxy.server.typedefs import budgets_key, journal_key, sessionmaker_key, writer_key
from proxy.storage import accounts
from proxy.storage.schema import UsageRow
from tests.factories import Stack, StackFactory, add_budget, raw, sqlite_only
from tests.faults.helpers import free_port
from tests.observability.helpers import RULES, alert_rules, panel_queries

# What Grafana puts in for its macros when a query runs over the test's traffic.
MACROS = {"$__rate_interval": "1m", "$__range": "15m"}
MODEL = "gemini-2.5-flash"  # thinks, priced
AGENT_MODEL = "gemini-3.5-flash"  # the Interactions model of the end-to-end tests
UNPRICED_MODEL = "gemini-observability-unpriced"  # in no price catalog
PRIMES = (
    "What is the sum of the first 50 prime numbers? "
    "Generate and run code for the calculation, and make sure you get all 50."
)
CODE = types.Tool(code_execution=types.ToolCodeExecution())
# Alerts that hold while the database is away, the others once the traffic has run.
OUTAGE_ALERTS = {"GeminiMeterWriterFailing", "GeminiMeterJournalFilling"}
JOURNAL_LIMIT = 64 * 1024
WAIT = 90.0  # seconds: a bound far beyond the normal case, never a timing assertion


# ------------------------------------------------------------------------ Prometheus


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    session: aiohttp.ClientSession

    async def query(self, expr: str) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/api/v1/query", params={"query": expr}) as r:
            return dict(await r.json(content_type=None))

    async def vector(self, expr: str) -> list[dict[str, Any]]:
        body = await self.query(expr)
        assert body["status"] == "success", (expr, body)
        return list(body["data"]["result"])

    async def scraped_since(self, since: float, scrapes: int = 2) -> None:
        """Wait until the proxy has been scraped ``scrapes`` times after ``since``: then a
        rate over the last minute sees what happened before ``since``."""
        deadline = time.monotonic() + WAIT
        seen: set[float] = set()
        while len(seen) < scrapes:
            assert time.monotonic() < deadline, "Prometheus did not scrape the proxy"
            # a bare selector: timestamp() of anything else is the evaluation time
            result = await self.vector('timestamp(up{job="gemini-meter"})')
            seen |= {float(s["value"][1]) for s in result if float(s["value"][1]) > since}
            await asyncio.sleep(0.2)


def _config(tmp_path: Path, target: str) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "gemini-meter",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.asynccontextmanager
async def running_prometheus(tmp_path: Path, target: str) -> AsyncIterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: install Debian's prometheus package (scripts/test.sh)"
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={_config(tmp_path, target)}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    session = aiohttp.ClientSession()
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process, session)
    try:
        deadline = time.monotonic() + WAIT
        while True:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{prometheus.url}/-/ready") as r:
                    if r.status == 200:
                        break
            await asyncio.sleep(0.1)
        yield prometheus
    finally:
        await session.close()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()


# ------------------------------------------------------------------------ traffic


async def _expect_error(call: Awaitable[Any], status: int | None = None) -> None:
    with pytest.raises(errors.APIError) as raised:
        await call
    if status is not None:
        assert raised.value.code == status, raised.value


async def traffic(stack: Stack, users: tuple[str, ...], *, refused: tuple[str, ...] = ()) -> None:
    """One round of calls through the proxy with the real SDK."""
    for user in users:
        client = stack.sdk(user).aio
        prompt = f"Hello from {user}, count my words please."
        if user in refused:
            # an enforced budget past its limit: refused before reaching the upstream
            await _expect_error(client.models.generate_content(model=MODEL, contents=prompt), 429)
            continue
        # Interactions with code execution: intermediate and thinking tokens
        interaction = await client.interactions.create(
            model=AGENT_MODEL, input=PRIMES, tools=[{"type": "code_execution"}], stream=False
        )
        assert isinstance(interaction, Interaction) and interaction.usage is not None
        assert interaction.usage.total_tool_use_tokens and interaction.usage.total_thought_tokens
        # generateContent, plain with code execution, and streamed
        await client.models.generate_content(
            model=MODEL, contents=PRIMES, config=types.GenerateContentConfig(tools=[CODE])
        )
        async for _ in await client.models.generate_content_stream(model=MODEL, contents=prompt):
            pass
    client = stack.sdk(users[0]).aio

    def trigger(**headers: str) -> types.GenerateContentConfig:
        return types.GenerateContentConfig(http_options=types.HttpOptions(headers=headers))

    # a model the price catalog does not know
    await client.models.generate_content(model=UNPRICED_MODEL, contents="Price me if you can.")
    # no usage in the answer: the meter cannot read what it cost
    await client.models.generate_content(
        model=MODEL,
        contents="Unreadable usage.",
        config=trigger(**{"x-emulator-usage": "missing"}),
    )
    # upstream errors: one call in a handful, well above the alert's 5%
    for _ in range(2):
        await _expect_error(
            client.models.generate_content(
                model=MODEL, contents="Fail.", config=trigger(**{"x-emulator-fail": "500"})
            ),
            500,
        )
    # an OpenAI-style image generation: one Imagen image, billed per image ("media")
    status, _, _ = await raw(
        "POST",
        stack.url("/v1beta/openai/images/generations"),
        headers=stack.headers(users[0]),
        json={"model": "imagen-4.0-generate-001", "prompt": "a cat", "n": 1},
    )
    assert status == 200
    # a billable route the meter does not read (an OpenAI-style text completion), recorded
    # whatever the upstream answers
    status, _, _ = await raw(
        "POST",
        stack.url("/v1beta/openai/completions"),
        headers=stack.headers(users[0]),
        json={"model": MODEL, "prompt": "Say hi"},
    )
    assert status >= 200


# ------------------------------------------------------------------------ checks


def _expression(expr: str) -> str:
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)
    assert "$" not in expr, f"a Grafana macro the test does not fill: {expr}"
    return expr


async def _has_data(prometheus: Prometheus, expr: str) -> str | None:
    """None when ``expr`` is valid and returns a finite sample; else what is wrong."""
    body = await prometheus.query(expr)
    if body.get("status") != "success":
        return f"invalid: {body.get('error')}"
    result = body["data"]["result"]
    if body["data"]["resultType"] == "scalar":
        result = [{"value": result}]
    if not result:
        return "no data"
    if not any(math.isfinite(float(s["value"][1])) for s in result):
        return f"no finite value: {result}"
    return None


async def check_all(prometheus: Prometheus, queries: dict[str, str]) -> dict[str, str]:
    """Poll every query until each returns data, within one deadline; those that never
    do, with what was wrong with them at the end."""
    pending = dict(queries)
    problems: dict[str, str] = {}
    deadline = time.monotonic() + WAIT / 3
    while pending:
        problems = {}
        for name, expr in pending.items():
            problem = await _has_data(prometheus, _expression(expr))
            if problem is not None:
                problems[name] = f"{problem}\n    {expr}"
        pending = {name: pending[name] for name in problems}
        if not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    return problems


async def db_totals(stack: Stack) -> tuple[dict[str, int], Decimal]:
    async with stack.app[sessionmaker_key]() as session:
        row = (
            await session.execute(
                select(
                    func.sum(UsageRow.input_tokens),
                    func.sum(UsageRow.cached_tokens),
                    func.sum(UsageRow.intermediate_tokens),
                    func.sum(UsageRow.output_tokens),
                    func.sum(UsageRow.thinking_tokens),
                    func.sum(UsageRow.cost_usd),
                )
            )
        ).one()
    names = ("input", "cached", "intermediate", "output", "thinking")
    return {n: int(v or 0) for n, v in zip(names, row[:5], strict=True)}, Decimal(row[5] or 0)


async def _user_spend(stack: Stack, user: str, column: Any) -> Decimal:
    user_id = await stack.user_id(user)
    async with stack.app[sessionmaker_key]() as session:
        total = (
            await session.execute(select(func.sum(column)).where(UsageRow.user_id == user_id))
        ).scalar_one()
    return Decimal(total or 0)


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await condition():
        assert time.monotonic() < deadline, f"{what}: not within {WAIT} s"
        await asyncio.sleep(0.1)


# ------------------------------------------------------------------------ the test


@sqlite_only
async def test_every_panel_and_alert_query_returns_data_on_a_real_prometheus(
    make_stack: StackFactory, tmp_path: Path
):
    stack = await make_stack(
        journal_max_bytes=JOURNAL_LIMIT,
        # small segments: a committed row's segment is deleted soon, so the journal's size
        # is what waits for the database
        journal_segment_bytes=2048,
        budget_refresh_seconds=0.5,
        # a reservation no bigger than the call's own estimate: alice's budget refuses nothing
        budget_reserve_usd="0",
    )
    assert stack.proxy.port is not None
    async with stack.app[sessionmaker_key]() as session:
        _, stack.keys["dave"] = await accounts.create_key(
            session, stack.settings.secret_bytes(), "dave", "operations"
        )
        await session.commit()

    async with running_prometheus(tmp_path, f"127.0.0.1:{stack.proxy.port}") as prometheus:
        # The first scrape before any call: every series then starts from its first value,
        # and the rates see the calls.
        await prometheus.scraped_since(time.time(), scrapes=1)
        [up] = await prometheus.vector('up{job="gemini-meter"}')
        assert up["value"][1] == "1", "Prometheus could not scrape the proxy"
        await traffic(stack, ("alice", "bob", "carol"))
        await stack.app[writer_key].flush()
        await prometheus.scraped_since(time.time())

        # Budgets: carol at 90% of a token limit; bob's team past its limit; alice on a pace
        # that ends the month far past a limit she has used a thousandth of (a pace of
        # seconds, extrapolated to the month's end: true unless that is minutes away).
        carol_tokens = await _user_spend(stack, "carol", UsageRow.total_tokens)
        bob_usd = await _user_spend(stack, "bob", UsageRow.cost_usd)
        alice_usd = await _user_spend(stack, "alice", UsageRow.cost_usd)
        assert carol_tokens > 0 and bob_usd > 0 and alice_usd > 0
        await add_budget(stack.app, "user:carol", limit_tokens=math.ceil(carol_tokens / 9 * 10))
        await add_budget(stack.app, "team:support", limit_usd=str(bob_usd / 2))
        await add_budget(stack.app, "user:alice", limit_usd=str(alice_usd * 1000), window="monthly")
        await stack.app[budgets_key].refresh()
        await prometheus.scraped_since(time.time())

        await traffic(stack, ("alice", "bob", "alice"), refused=("bob",))
        await stack.app[writer_key].flush()
        await prometheus.scraped_since(time.time())

        queries = {f"panel {uid} / {title} / {ref}": e for uid, title, ref, e in panel_queries()}
        queries |= {
            f"alert {name}": expr for name, expr in alert_rules() if name not in OUTAGE_ALERTS
        }
        problems = await check_all(prometheus, queries)

        # The database goes away: the writer fails and records wait in the journal.
        journal = stack.app[journal_key]
        assert journal is not None
        database = stack.settings.database_url.removeprefix("sqlite+aiosqlite:///")
        with sqlite3.connect(database, timeout=30) as db:
            db.execute("ALTER TABLE usage_records RENAME TO usage_records_away")
        dave = stack.sdk("dave").aio
        for _ in range(500):
            await journal.flush()
            if journal.held_bytes > 0.85 * JOURNAL_LIMIT:
                break
            await dave.models.generate_content(model=MODEL, contents="Keep the journal busy.")
        assert journal.held_bytes > 0.85 * JOURNAL_LIMIT
        problems |= await check_all(
            prometheus,
            {f"alert {name}": expr for name, expr in alert_rules() if name in OUTAGE_ALERTS},
        )
        with sqlite3.connect(database, timeout=30) as db:
            db.execute("ALTER TABLE usage_records_away RENAME TO usage_records")

        # every record waiting reaches the database (the writer retries until it does)
        async with asyncio.timeout(WAIT):
            await stack.app[writer_key].flush()

        # Prometheus's counters against the database, for the same traffic.
        tokens, cost = await db_totals(stack)
        assert tokens["intermediate"] > 0 and tokens["thinking"] > 0 and cost > 0

        async def scraped_totals() -> tuple[dict[str, float], float]:
            by_type = await prometheus.vector("sum by (type) (gemini_meter_tokens_total)")
            usd = await prometheus.vector("sum(gemini_meter_cost_usd_total)")
            return (
                {s["metric"]["type"]: float(s["value"][1]) for s in by_type},
                sum(float(s["value"][1]) for s in usd),
            )

        async def totals_match() -> bool:
            scraped, usd = await scraped_totals()
            return {t: scraped.get(t, 0.0) for t in tokens} == {
                t: float(v) for t, v in tokens.items()
            } and math.isclose(usd, float(cost), rel_tol=1e-9)

        with contextlib.suppress(AssertionError):
            await eventually(totals_match, "Prometheus's totals reaching the database's")
        scraped, usd = await scraped_totals()
        assert {t: scraped.get(t, 0.0) for t in tokens} == {t: float(v) for t, v in tokens.items()}
        assert usd == pytest.approx(float(cost), rel=1e-9)

    assert not problems, "queries without data on a real Prometheus:\n" + "\n".join(
        f"- {name}: {problem}" for name, problem in sorted(problems.items())
    )
