"""Budget alerts against real databases and a real webhook receiver on loopback.

Spend comes from ``usage_records`` rows with hand-chosen costs; the alerts are judged by
what the outbox holds and what the receiver (an aiohttp server) recorded. Both SQLite
and PostgreSQL. Waits are bounded polls, never timing assertions.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from proxy.budgets.alerts import AlertDelivery, AlertEvaluator
from proxy.budgets.engine import window_total
from proxy.budgets.rules import from_row
from proxy.metering.records import Cost, Principal, Usage, UsageRecord
from proxy.server.app import create_app
from proxy.server.keys import seal
from proxy.server.typedefs import (
    alert_delivery_key,
    alert_evaluator_key,
    metrics_key,
    sessionmaker_key,
)
from proxy.settings import Secret, Settings
from proxy.storage import accounts
from proxy.storage.schema import BudgetAlert, BudgetRow
from proxy.storage.writes import insert_usage_rows, usage_values
from tests.faults.helpers import free_port

SECRET = b"test-secret"
# The instant every evaluation below happens at: 2026-11-15 13:00 in Berlin (CET, +01:00).
NOW = datetime(2026, 11, 15, 12, tzinfo=UTC)


async def _wait_for(predicate: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Poll ``predicate`` for up to 30 s (a deadline, not a timing assertion)."""
    for _ in range(600):
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _proxy_log(caplog: pytest.LogCaptureFixture) -> str:
    """Everything logged but the test receiver's own access log (which quotes its path)."""
    return "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}"
        for r in caplog.records
        if r.name != "aiohttp.access"
    )


@dataclass
class Receiver:
    """A webhook receiver: answers ``down_status`` (or is absent) while down, 200 when up."""

    server: TestServer | None = None
    accepted: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    down: bool = False
    headers: list[dict[str, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/hooks/T000/B000/very-secret-token"))

    def ids(self) -> list[str]:
        return [h["x-gemini-meter-alert-id"] for h in self.headers]


def _receiver_app(receiver: Receiver) -> web.Application:
    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        if receiver.down:
            receiver.refused += 1
            return web.Response(status=503, text="down")
        receiver.accepted.append(body)
        receiver.headers.append({k.lower(): v for k, v in request.headers.items()})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks/{tail:.*}", hook)
    return app


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    receiver = Receiver()
    receiver.server = await aiohttp_server(_receiver_app(receiver))
    return receiver


async def _principal(session: AsyncSession, user: str, team: str) -> Principal:
    row = await accounts.get_or_create_user(session, user, team)
    team_row = await accounts.get_or_create_team(session, team)
    return Principal(user_id=row.id, user_name=user, team_id=team_row.id, team_name=team)


def _cost(**parts: str) -> Cost:
    values = {k: Decimal(v) for k, v in parts.items()}
    return Cost(total=sum(values.values(), Decimal(0)), catalog_version="test", **values)


async def _insert(
    sessionmaker: async_sessionmaker[AsyncSession], records: list[UsageRecord]
) -> None:
    async with sessionmaker.begin() as session:
        await insert_usage_rows(session, [usage_values(r) for r in records])


async def _add_budget(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    webhook: str | None = None,
    fmt: str = "json",
    **values: Any,
) -> int:
    row = BudgetRow(
        scope_kind=values.pop("scope_kind", "team"),
        scope_name=values.pop("scope_name", "research"),
        limit_usd=values.pop("limit_usd", Decimal("10")),
        limit_tokens=values.pop("limit_tokens", None),
        category=values.pop("category", None),
        window=values.pop("window", "monthly"),
        timezone=values.pop("timezone", "Europe/Berlin"),
        thresholds=values.pop("thresholds", ["0.5", "0.8", "1"]),
        mode=values.pop("mode", "alert"),
        webhook_sealed=seal(SECRET, webhook) if webhook else None,
        webhook_format=fmt,
    )
    assert not values, values
    async with sessionmaker.begin() as session:
        session.add(row)
        await session.flush()
        return row.id


async def _alerts(sessionmaker: async_sessionmaker[AsyncSession]) -> list[BudgetAlert]:
    async with sessionmaker() as session:
        query = select(BudgetAlert).order_by(BudgetAlert.id)
        return list((await session.scalars(query)).all())


async def _research_spend(
    sessionmaker: async_sessionmaker[AsyncSession], make_record: Callable[..., UsageRecord]
) -> None:
    """$8.12 of team research's November in Berlin, and spend that must not count.

    In the window (2026-10-31T23:00Z to 2026-11-30T23:00Z):
    - alice, flash, Nov 10: input 1.00 + intermediate 3.00 + output 0.50 = 4.50
    - carol, pro, Nov 12: input 0.20 + intermediate 1.95 + thinking 0.43 = 2.58
    - alice, flash, 2026-10-31T23:30Z (00:30 on Nov 1 in Berlin): output 1.04
    Total 8.12: flash 5.54, pro 2.58; intermediate 4.95 (60.96%), output 1.54, input 1.20,
    thinking 0.43.
    Not in it: bob's $100 (team support), alice's $50 at 2026-10-31T22:30Z (23:30 on
    October 31 in Berlin), an unpriced record.
    """
    async with sessionmaker.begin() as session:
        alice = await _principal(session, "alice", "research")
        carol = await _principal(session, "carol", "research")
        bob = await _principal(session, "bob", "support")
    flash, pro = "gemini-3.5-flash", "gemini-2.5-pro"
    await _insert(
        sessionmaker,
        [
            make_record(
                alice,
                model=flash,
                created_at=datetime(2026, 11, 10, tzinfo=UTC),
                cost=_cost(input="1.00", intermediate="3.00", output="0.50"),
            ),
            make_record(
                carol,
                model=pro,
                created_at=datetime(2026, 11, 12, tzinfo=UTC),
                cost=_cost(input="0.20", intermediate="1.95", thinking="0.43"),
            ),
            make_record(
                alice,
                model=flash,
                created_at=datetime(2026, 10, 31, 23, 30, tzinfo=UTC),
                cost=_cost(output="1.04"),
            ),
            make_record(
                bob,
                model=flash,
                created_at=datetime(2026, 11, 11, tzinfo=UTC),
                cost=_cost(input="100"),
            ),
            make_record(
                alice,
                model=flash,
                created_at=datetime(2026, 10, 31, 22, 30, tzinfo=UTC),
                cost=_cost(input="50"),
            ),
            make_record(
                alice,
                model="unknown-model",
                created_at=datetime(2026, 11, 13, tzinfo=UTC),
                cost=Cost(total=None),
            ),
        ],
    )


# ------------------------------------------------------------------ evaluation


async def test_crossing_two_thresholds_alerts_each_once(
    sessionmaker: async_sessionmaker[AsyncSession], make_record: Callable[..., UsageRecord]
) -> None:
    await _research_spend(sessionmaker, make_record)
    budget_id = await _add_budget(sessionmaker)
    evaluator = AlertEvaluator(sessionmaker, clock=lambda: NOW)

    first = await evaluator.evaluate()
    alerts = await _alerts(sessionmaker)
    assert len(first) == 2 and [a.id for a in alerts] == first
    assert [a.threshold for a in alerts] == ["0.5", "0.8"]
    assert {a.spend for a in alerts} == {"8.12"}
    assert all(a.budget_id == budget_id and a.sent_at is None for a in alerts)
    # Midnight on November 1 in Berlin (CET, +01:00).
    assert {a.window_start for a in alerts} == {datetime(2026, 10, 31, 23, tzinfo=UTC)}

    payload = alerts[1].payload
    assert (payload["scope"], payload["spend"], payload["limit"]) == ("team:research", "8.12", "10")
    assert payload["threshold"] == "0.8"
    assert payload["window"]["end"] == "2026-11-30T23:00:00+00:00"
    assert payload["top_models"] == [
        {"model": "gemini-3.5-flash", "spend": "5.54", "share": "0.6823"},
        {"model": "gemini-2.5-pro", "spend": "2.58", "share": "0.3177"},
    ]
    assert payload["categories"][0] == {
        "category": "intermediate",
        "spend": "4.95",
        "share": "0.6096",
    }
    assert "Intermediate (code execution) tokens made 61% of the spend." in payload["text"]
    assert "$8.12 of $10.00 (81%) — crossed 80%" in payload["text"]

    # Nothing new: a second evaluation, and a second evaluator (another process).
    assert await evaluator.evaluate() == []
    assert await AlertEvaluator(sessionmaker, clock=lambda: NOW).evaluate() == []
    assert len(await _alerts(sessionmaker)) == 2


async def test_a_pass_below_every_threshold_reads_the_rollups_alone(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    make_record: Callable[..., UsageRecord],
) -> None:
    # $8.12 of $100: no threshold is near. The pass reads the window's spend from the
    # quarter-hour rollups, one sum, and not the records: neither their sum nor the split
    # (by category, by model) that only an alert's payload needs.
    await _research_spend(sessionmaker, make_record)
    await _add_budget(sessionmaker, limit_usd=Decimal("100"))
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "usage_r" in statement:
            statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        assert await AlertEvaluator(sessionmaker, clock=lambda: NOW).evaluate() == []
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)
    assert len(statements) == 1, statements
    assert "usage_rollups" in statements[0] and "usage_records" not in statements[0]
    assert "GROUP BY" not in statements[0] and statements[0].count("sum(") == 1

    # Over the 5 dollar line, the alert's payload still has the whole split.
    await _add_budget(sessionmaker, limit_usd=Decimal("10"), thresholds=["0.5"])
    assert await _alerts(sessionmaker) == []
    assert len(await AlertEvaluator(sessionmaker, clock=lambda: NOW).evaluate()) == 1
    [alert] = await _alerts(sessionmaker)
    assert alert.payload["spend"] == "8.12"
    assert [m["model"] for m in alert.payload["top_models"]] == [
        "gemini-3.5-flash",
        "gemini-2.5-pro",
    ]
    assert alert.payload["categories"][0]["category"] == "intermediate"


async def test_a_new_window_in_a_non_utc_zone_alerts_again(
    sessionmaker: async_sessionmaker[AsyncSession], make_record: Callable[..., UsageRecord]
) -> None:
    """A daily token budget in Tokyo (+09:00): 15:00 UTC is midnight there."""
    async with sessionmaker.begin() as session:
        alice = await _principal(session, "alice", "research")
    user_id = alice.user_id
    budget_id = await _add_budget(
        sessionmaker,
        scope_kind="user",
        scope_name="alice",
        limit_usd=None,
        limit_tokens=1000,
        window="daily",
        timezone="Asia/Tokyo",
        thresholds=["1"],
    )
    clock = [datetime(2026, 11, 10, 14, 45, tzinfo=UTC)]
    evaluator = AlertEvaluator(sessionmaker, clock=lambda: clock[0])

    # 23:30 on Nov 10 in Tokyo: 1200 tokens, over the limit.
    await _insert(
        sessionmaker,
        [
            make_record(
                alice,
                created_at=datetime(2026, 11, 10, 14, 30, tzinfo=UTC),
                usage=Usage(input_tokens=1000, output_tokens=200, total_tokens=1200),
            )
        ],
    )
    assert len(await evaluator.evaluate()) == 1

    # 00:30 on Nov 11 in Tokyo, the same UTC day: a new window. 1000 tokens reach the
    # limit exactly: input 600 of which cached 100, output 300, thinking 100.
    await _insert(
        sessionmaker,
        [
            make_record(
                alice,
                created_at=datetime(2026, 11, 10, 15, 30, tzinfo=UTC),
                usage=Usage(
                    input_tokens=600,
                    cached_tokens=100,
                    output_tokens=300,
                    thinking_tokens=100,
                    total_tokens=1000,
                ),
            )
        ],
    )
    clock[0] = datetime(2026, 11, 10, 15, 45, tzinfo=UTC)
    assert len(await evaluator.evaluate()) == 1
    assert await evaluator.evaluate() == []

    alerts = await _alerts(sessionmaker)
    assert [(a.budget_id, a.window_start, a.spend) for a in alerts] == [
        (budget_id, datetime(2026, 11, 9, 15, tzinfo=UTC), "1200"),
        (budget_id, datetime(2026, 11, 10, 15, tzinfo=UTC), "1000"),
    ]
    second = alerts[1].payload
    assert user_id and second["unit"] == "tokens"
    # Uncached input 500 (50%), output 300, cached 100, thinking 100.
    assert [(c["category"], c["share"]) for c in second["categories"]] == [
        ("input", "0.5"),
        ("output", "0.3"),
        ("cached", "0.1"),
        ("thinking", "0.1"),
    ]
    assert "Resets 2026-11-12T00:00+09:00." in second["text"]


async def test_spend_of_a_windows_last_moments_alerts_after_the_reset(
    sessionmaker: async_sessionmaker[AsyncSession], make_record: Callable[..., UsageRecord]
) -> None:
    """A record at 23:59:59 in Tokyo, first evaluated 30 s after midnight there."""
    async with sessionmaker.begin() as session:
        alice = await _principal(session, "alice", "research")
    await _add_budget(
        sessionmaker,
        scope_kind="user",
        scope_name="alice",
        limit_usd=Decimal("1"),
        window="daily",
        timezone="Asia/Tokyo",
        thresholds=["0.8"],
    )
    await _insert(
        sessionmaker,
        [
            make_record(
                alice,
                created_at=datetime(2026, 11, 10, 14, 59, 59, tzinfo=UTC),
                cost=_cost(output="0.90"),
            )
        ],
    )
    evaluator = AlertEvaluator(
        sessionmaker, clock=lambda: datetime(2026, 11, 10, 15, 0, 30, tzinfo=UTC)
    )
    assert len(await evaluator.evaluate()) == 1
    [alert] = await _alerts(sessionmaker)
    assert alert.window_start == datetime(2026, 11, 9, 15, tzinfo=UTC)
    assert alert.payload["text"].endswith(
        "$0.90 of $1.00 (90%) — crossed 80%. Top models: gemini-2.5-flash 100%. Output tokens"
        " made 100% of the spend. The window ended 2026-11-11T00:00+09:00."
    )


async def test_provisional_records_and_key_scope_count(
    sessionmaker: async_sessionmaker[AsyncSession], make_record: Callable[..., UsageRecord]
) -> None:
    async with sessionmaker.begin() as session:
        info, _ = await accounts.create_key(session, SECRET, "dave", "ops")
        other, _ = await accounts.create_key(session, SECRET, "dave", "ops")
        dave = await _principal(session, "dave", "ops")
    keyed = Principal(dave.user_id, "dave", dave.team_id, "ops", key_id=info.id)
    other_key = Principal(dave.user_id, "dave", dave.team_id, "ops", key_id=other.id)
    at = datetime(2026, 11, 14, tzinfo=UTC)
    # 0.30 provisional + 0.25 terminal on this key = 0.55 of 1.00; 0.90 on the other key.
    await _insert(
        sessionmaker,
        [
            make_record(
                keyed,
                created_at=at,
                interaction_id="i-1",
                provisional=True,
                cost=_cost(output="0.30"),
            ),
            make_record(keyed, created_at=at, cost=_cost(input="0.25")),
            make_record(other_key, created_at=at, cost=_cost(input="0.90")),
        ],
    )
    await _add_budget(
        sessionmaker, scope_kind="key", scope_name=str(info.id), limit_usd=Decimal("1")
    )
    await AlertEvaluator(sessionmaker, clock=lambda: NOW).evaluate()
    assert [(a.threshold, a.spend) for a in await _alerts(sessionmaker)] == [("0.5", "0.55")]


async def test_a_token_budget_alerts_on_what_enforcement_counts(
    sessionmaker: async_sessionmaker[AsyncSession], make_record: Callable[..., UsageRecord]
) -> None:
    # A response whose total disagrees with its parts (total_mismatch): 60 input (20 of
    # them cached) + 10 intermediate + 25 output + 5 thinking are 100 billed tokens, its
    # totalTokenCount says 1,000. Enforcement counts the billed 100 (rules.usage_amount);
    # the alert pass must reach the same figure, so 0.5 of 150 tokens alerts and 1.0 not.
    async with sessionmaker.begin() as session:
        erin = await _principal(session, "erin", "lab")
    usage = Usage(
        input_tokens=60,
        cached_tokens=20,
        intermediate_tokens=10,
        output_tokens=25,
        thinking_tokens=5,
        total_tokens=1000,
    )
    await _insert(
        sessionmaker,
        [make_record(erin, created_at=datetime(2026, 11, 14, tzinfo=UTC), usage=usage)],
    )
    budget_id = await _add_budget(
        sessionmaker,
        scope_kind="user",
        scope_name="erin",
        limit_usd=None,
        limit_tokens=150,
        thresholds=["0.5", "1"],
    )
    await AlertEvaluator(sessionmaker, clock=lambda: NOW).evaluate()
    [alert] = await _alerts(sessionmaker)
    assert (alert.budget_id, alert.threshold, alert.spend) == (budget_id, "0.5", "100")
    assert alert.payload["categories"][0] == {"category": "input", "spend": "40", "share": "0.4"}

    async with sessionmaker() as session:
        row = await session.get(BudgetRow, budget_id)
        assert row is not None
        budget = from_row(row, "UTC")
        assert budget is not None
        start, end = budget.bounds(NOW)
        assert await window_total(session, budget, start, end) == 100


# -------------------------------------------------------------------- delivery


def _delivery(sessionmaker: async_sessionmaker[AsyncSession], **overrides: Any) -> AlertDelivery:
    values: dict[str, Any] = {"retry_initial": 0.05, "retry_max": 0.2, "poll": 0.1, "timeout": 5.0}
    values.update(overrides)
    return AlertDelivery(sessionmaker, SECRET, **values)


@pytest.mark.parametrize("outage", ["503", "refused"])
async def test_receiver_down_then_up_gets_each_alert_once(
    outage: str,
    sessionmaker: async_sessionmaker[AsyncSession],
    make_record: Callable[..., UsageRecord],
    aiohttp_server: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = Receiver(down=outage == "503")
    port: int | None
    if outage == "refused":
        # A port nothing listens on yet; the receiver starts there later.
        port = free_port()
        url = f"http://127.0.0.1:{port}/hooks/T000/B000/very-secret-token"
    else:
        receiver.server = await aiohttp_server(_receiver_app(receiver))
        url, port = receiver.url, receiver.server.port
    await _research_spend(sessionmaker, make_record)
    budget_id = await _add_budget(sessionmaker, webhook=url)
    await AlertEvaluator(sessionmaker, clock=lambda: NOW).evaluate()

    failed: list[int] = []
    delivery = _delivery(sessionmaker, on_failed=lambda: failed.append(1))
    # One pass while the receiver is down: both attempts fail and are scheduled again.
    assert await delivery.deliver_due() == 0
    alerts = await _alerts(sessionmaker)
    assert [(a.attempts, a.sent_at) for a in alerts] == [(1, None), (1, None)]
    expected = (
        f"webhook of budget #{budget_id} answered HTTP 503"
        if outage == "503"
        else f"webhook of budget #{budget_id} unreachable: ClientConnectorError"
    )
    assert {a.last_error for a in alerts} == {expected}
    assert len(failed) == 2

    delivery.start()
    try:
        if outage == "refused":
            receiver.server = await aiohttp_server(_receiver_app(receiver), port=port)
        else:
            await _wait_for(lambda: receiver.refused >= 4, "retries while down")
            receiver.down = False
        await _wait_for(lambda: len(receiver.accepted) == 2, "both alerts delivered")
        passes = delivery.passes_total
        await _wait_for(lambda: delivery.passes_total >= passes + 2, "more delivery passes")
    finally:
        await delivery.stop()

    assert sorted(b["threshold"] for b in receiver.accepted) == ["0.5", "0.8"]
    alerts = await _alerts(sessionmaker)
    assert receiver.ids() == [f"gemini-meter-alert-{budget_id}-{a.id}" for a in alerts]
    assert all(h["idempotency-key"] == h["x-gemini-meter-alert-id"] for h in receiver.headers)
    assert [b["alert_id"] for b in receiver.accepted] == [a.id for a in alerts]
    assert all(a.sent_at is not None and a.last_error is None for a in alerts)
    assert all(a.attempts >= 2 for a in alerts)
    # The webhook URL (and its secret path) never reaches the log; the budget is named.
    logged = _proxy_log(caplog)
    assert "very-secret-token" not in logged
    assert f"127.0.0.1:{port}" not in logged
    assert f"webhook of budget #{budget_id}" in logged
    assert logged.count("budget alert #") >= 2  # every alert logged


async def test_slack_format_and_a_budget_without_webhook(
    sessionmaker: async_sessionmaker[AsyncSession],
    make_record: Callable[..., UsageRecord],
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    await _research_spend(sessionmaker, make_record)
    slack_id = await _add_budget(
        sessionmaker, webhook=receiver.url, fmt="slack", thresholds=["0.8"]
    )
    logged_id = await _add_budget(sessionmaker, thresholds=["0.5"])
    await AlertEvaluator(sessionmaker, clock=lambda: NOW).evaluate()
    sent: list[int] = []
    assert await _delivery(sessionmaker, on_sent=lambda: sent.append(1)).deliver_due() == 2
    assert len(sent) == 2

    assert receiver.accepted == [
        {
            "text": f"Budget #{slack_id} (team:research, monthly, Europe/Berlin): $8.12 of $10.00"
            " (81%) — crossed 80%. Top models: gemini-3.5-flash 68%, gemini-2.5-pro 32%."
            " Intermediate (code execution) tokens made 61% of the spend. Resets"
            " 2026-12-01T00:00+01:00."
        }
    ]
    # No webhook: delivered to the log, marked sent, not retried.
    assert f"(budget #{logged_id}) has no webhook: delivered to this log" in caplog.text
    assert all(a.sent_at is not None for a in await _alerts(sessionmaker))
    assert "very-secret-token" not in _proxy_log(caplog)


async def test_two_workers_deliver_each_alert_once(
    sessionmaker: async_sessionmaker[AsyncSession],
    make_record: Callable[..., UsageRecord],
    receiver: Receiver,
) -> None:
    """Two delivery workers (as in two processes) claim disjoint rows."""
    await _research_spend(sessionmaker, make_record)
    thresholds = [str(Decimal(n) / 100) for n in range(5, 85, 5)]  # 16 reached of 8.12/10
    await _add_budget(sessionmaker, webhook=receiver.url, thresholds=thresholds)
    assert len(await AlertEvaluator(sessionmaker, clock=lambda: NOW).evaluate()) == 16
    first, second = _delivery(sessionmaker, batch_size=2), _delivery(sessionmaker, batch_size=3)
    sent = await asyncio.gather(first.deliver_due(), second.deliver_due())
    assert sum(sent) == 16
    assert len(receiver.accepted) == 16
    assert len(set(receiver.ids())) == 16


# ------------------------------------------------------------- across restarts


def _settings(database_url: str, tmp_path: Any, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "upstream": "http://127.0.0.1:9",
        "upstream_api_key": Secret("upstream-secret-key"),
        "database_url": database_url,
        "key_secret": Secret(SECRET.decode()),
        "key_secret_file": tmp_path / "secret",
        "journal_dir": tmp_path / f"journal-{uuid.uuid4().hex[:8]}",
        "alert_interval_seconds": 0.1,
    }
    values.update(overrides)
    return Settings(**values)


async def test_alerts_exactly_once_across_restarts(
    migrated_url: str,
    tmp_path: Any,
    sessionmaker: async_sessionmaker[AsyncSession],
    make_record: Callable[..., UsageRecord],
    receiver: Receiver,
    proxy_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    """The first proxy inserts the alerts and stops while the receiver is down; the
    second delivers them once; the third finds nothing to send again."""
    now = datetime.now(UTC)
    async with sessionmaker.begin() as session:
        alice = await _principal(session, "alice", "research")
    # $6 of $10 this month (UTC): 50% reached, 80% not.
    await _insert(sessionmaker, [make_record(alice, created_at=now, cost=_cost(input="6"))])
    budget_id = await _add_budget(sessionmaker, webhook=receiver.url, timezone="UTC")

    async def run_proxy(until: Callable[[web.Application], Awaitable[bool] | bool]) -> None:
        app = create_app(_settings(migrated_url, tmp_path), registry=CollectorRegistry())
        server = await proxy_server(app)
        try:
            await _wait_for(lambda: until(app), "the proxy's alert tasks")
        finally:
            await server.close()

    receiver.down = True
    await run_proxy(lambda app: receiver.refused >= 1)
    alerts = await _alerts(sessionmaker)
    assert [(a.threshold, a.sent_at) for a in alerts] == [("0.5", None)]

    receiver.down = False

    def delivered(app: web.Application) -> bool:
        return len(receiver.accepted) == 1 and app[metrics_key].alerts_sent._value.get() == 1

    await run_proxy(delivered)
    alerts = await _alerts(sessionmaker)
    assert alerts[0].sent_at is not None

    def idle(app: web.Application) -> bool:
        # Evaluated and a delivery pass done since the start.
        return (
            app[alert_evaluator_key].evaluations_total >= 2
            and app[alert_delivery_key].passes_total >= 2
        )

    await run_proxy(idle)
    assert len(receiver.accepted) == 1
    assert receiver.ids() == [f"gemini-meter-alert-{budget_id}-{alerts[0].id}"]
    assert len(await _alerts(sessionmaker)) == 1


async def test_alerts_disabled_starts_no_tasks(
    migrated_url: str,
    tmp_path: Any,
    proxy_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    app = create_app(
        _settings(migrated_url, tmp_path, alerts_enabled=False), registry=CollectorRegistry()
    )
    await proxy_server(app)
    assert alert_evaluator_key not in app and alert_delivery_key not in app


async def test_a_call_through_the_proxy_alerts_without_waiting_for_the_interval(
    make_stack: Any, receiver: Receiver
) -> None:
    """End to end: the SDK's code-execution interaction through the proxy, a token budget
    on team research, an evaluation interval of an hour. The records the writer commits
    bring the evaluation forward; the alert names the model and the intermediate share
    of the tokens the upstream reported."""
    stack = await make_stack(alert_interval_seconds=3600)
    sessionmaker = stack.app[sessionmaker_key]
    budget_id = await _add_budget(
        sessionmaker,
        webhook=receiver.url,
        limit_usd=None,
        limit_tokens=100,
        window="daily",
        timezone="America/New_York",
        thresholds=["1"],
    )
    model = "gemini-3.5-flash"
    interaction = await stack.sdk("alice").aio.interactions.create(
        model=model,
        input="What is the sum of the first 50 prime numbers? Generate and run code for the"
        " calculation, and make sure you get all 50.",
        tools=[{"type": "code_execution"}],
    )
    usage = interaction.usage
    assert usage is not None and usage.total_tokens and usage.total_tool_use_tokens

    await _wait_for(lambda: len(receiver.accepted) == 1, "the alert")
    [body] = receiver.accepted
    assert (body["budget_id"], body["scope"], body["unit"]) == (
        budget_id,
        "team:research",
        "tokens",
    )
    assert body["spend"] == str(usage.total_tokens)
    assert body["top_models"] == [{"model": model, "spend": str(usage.total_tokens), "share": "1"}]
    share = (Decimal(usage.total_tool_use_tokens) / usage.total_tokens).quantize(Decimal("0.0001"))
    intermediate = {c["category"]: c for c in body["categories"]}["intermediate"]
    assert intermediate == {
        "category": "intermediate",
        "spend": str(usage.total_tool_use_tokens),
        "share": format(share.normalize(), "f"),
    }
    assert stack.app[alert_evaluator_key].evaluations_total >= 2  # the start, and the nudge
