"""``/metrics`` after real traffic: the contract's names and labels, counters that
equal the database, the principal label's cap, budget gauges, a separate port.

Traffic goes through the proxy with the real google-genai SDK to the emulator;
the scrape is parsed with prometheus-client's own parser. Expected figures are
the database's totals, the emulator's token rule (``ceil(characters / 4)``)
and the catalog's published rates worked by hand.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from google.genai import types
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from proxy.emulator import create_emulator_app
from proxy.metering.records import Cost, EndpointKind, Principal, Usage, UsageRecord
from proxy.server.metrics import MODEL_LIMIT, OTHER, _Buckets, _Tally, build_metrics
from proxy.server.typedefs import budgets_key, metrics_key, sessionmaker_key
from proxy.settings import Settings, SettingsError
from proxy.storage import accounts
from tests.factories import Stack, StackFactory, add_budget, add_spend, raw
from tests.faults.helpers import ProxyProcess, cli, free_port, proxy_env

# 26 characters: ceil(26 / 4) = 7 tokens
EMBED_TEXT = "Metrics count every token."
# 28 characters: 7 tokens
PROMPT = "Say something about metrics."
EMBED_MODEL = "gemini-embedding-001"
MODEL = "gemini-2.5-flash"

# The contract: exposition name -> its label names (histograms: their _count sample).
CONTRACT: dict[str, set[str]] = {
    "gemini_meter_requests_total": {"model", "endpoint", "status_class", "streamed", "principal"},
    "gemini_meter_tokens_total": {"type", "model", "principal"},
    "gemini_meter_cost_usd_total": {"category", "model", "principal"},
    "gemini_meter_request_duration_seconds_count": {"endpoint", "streamed"},
    "gemini_meter_time_to_first_byte_seconds_count": {"endpoint", "streamed"},
    "gemini_meter_overhead_seconds_count": {"endpoint"},
    "gemini_meter_upstream_errors_total": {"status"},
    "gemini_meter_unpriced_records_total": set(),
    "gemini_meter_unmetered_route_requests_total": {"route"},
    "gemini_meter_usage_parse_errors_total": {"endpoint"},
    "gemini_meter_total_mismatch_total": {"endpoint"},
    "gemini_meter_journal_bytes": set(),
    "gemini_meter_journal_limit_bytes": set(),
    "gemini_meter_journal_dropped_total": set(),
    "gemini_meter_writer_queue_records": set(),
    "gemini_meter_writer_batch_duration_seconds_count": set(),
    "gemini_meter_writer_failures_total": set(),
    "gemini_meter_budget_spend": {"budget_id", "scope", "window", "unit"},
    "gemini_meter_budget_limit": {"budget_id", "scope", "window", "unit"},
    "gemini_meter_budget_utilization_ratio": {"budget_id", "scope", "window", "unit"},
    "gemini_meter_budget_window_end_timestamp_seconds": {"budget_id", "scope", "window", "unit"},
    "gemini_meter_alerts_sent_total": set(),
    "gemini_meter_alerts_failed_total": set(),
    "gemini_meter_budget_refusals_total": {"scope"},
}
# Names the contract replaced: gone.
RETIRED = ("gemini_meter_records_total",)

TOKEN_COLUMNS = ("input", "cached", "intermediate", "output", "thinking")
COST_COLUMNS = (*TOKEN_COLUMNS, "grounding")


def parse(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


async def scrape(url: str) -> list[Sample]:
    status, headers, body = await raw("GET", url)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    return parse(body.decode())


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def values(samples: Iterable[Sample], name: str, label: str) -> set[str]:
    return {s.labels[label] for s in samples if s.name == name}


def embed_config(**headers: str) -> types.EmbedContentConfig:
    return types.EmbedContentConfig(
        output_dimensionality=4, http_options=types.HttpOptions(headers=headers)
    )


async def embed(stack: Stack, user: str, text: str = EMBED_TEXT) -> None:
    await stack.sdk(user).aio.models.embed_content(
        model=EMBED_MODEL, contents=text, config=embed_config()
    )


async def test_counters_equal_the_database_and_hand_worked_figures(stack: Stack):
    alice, bob = stack.sdk("alice"), stack.sdk("bob")
    await embed(stack, "alice")
    generated = await alice.aio.models.generate_content(model=MODEL, contents=PROMPT)
    delayed = types.GenerateContentConfig(
        http_options=types.HttpOptions(headers={"x-emulator-chunk-delay-ms": "200"})
    )
    chunks = [
        c
        async for c in await bob.aio.models.generate_content_stream(
            model=MODEL, contents="Tell me a story about counters.", config=delayed
        )
    ]
    assert len(chunks) >= 2
    await embed(stack, "bob", "A longer text to embed, for the other team's tally.")
    records = await stack.records()
    assert len(records) == 4
    samples = await scrape(stack.url("/metrics"))

    # by hand: alice's embedding, 7 tokens at $0.15 per million
    embed_series = {"model": EMBED_MODEL, "principal": "research"}
    assert total(samples, "gemini_meter_tokens_total", type="input", **embed_series) == 7
    assert total(
        samples, "gemini_meter_cost_usd_total", category="input", **embed_series
    ) == pytest.approx(7 * 0.15 / 1e6, rel=1e-12)
    # by hand: alice's generation, 7 input tokens at $0.30 per million, output and
    # thoughts as the upstream reported them to the SDK, at $2.50 per million
    usage = generated.usage_metadata
    assert usage is not None and usage.candidates_token_count
    output, thoughts = usage.candidates_token_count, usage.thoughts_token_count or 0
    series = {"model": MODEL, "principal": "research"}
    assert total(samples, "gemini_meter_tokens_total", type="input", **series) == 7
    assert total(samples, "gemini_meter_tokens_total", type="output", **series) == output
    assert total(samples, "gemini_meter_tokens_total", type="thinking", **series) == thoughts
    assert total(samples, "gemini_meter_cost_usd_total", category="input", **series) == (
        pytest.approx(7 * 0.30 / 1e6, rel=1e-12)
    )
    assert total(samples, "gemini_meter_cost_usd_total", category="output", **series) == (
        pytest.approx(output * 2.50 / 1e6, rel=1e-12)
    )

    # every token and every cent the database holds, and nothing else
    for name in TOKEN_COLUMNS:
        stored = sum(r[f"{name}_tokens"] for r in records)
        assert total(samples, "gemini_meter_tokens_total", type=name) == stored, name
    for name in COST_COLUMNS:
        stored_cost = sum(float(r[f"cost_{name}_usd"] or 0) for r in records)
        counted = total(samples, "gemini_meter_cost_usd_total", category=name)
        assert counted == pytest.approx(stored_cost, rel=1e-9, abs=1e-15), name
    assert total(samples, "gemini_meter_requests_total") == len(records)
    assert (
        total(
            samples,
            "gemini_meter_requests_total",
            model=MODEL,
            endpoint="stream_generate_content",
            status_class="2xx",
            streamed="true",
            principal="support",
        )
        == 1
    )

    # duration, time to first byte and overhead: one observation per call
    for name in (
        "gemini_meter_request_duration_seconds_count",
        "gemini_meter_time_to_first_byte_seconds_count",
        "gemini_meter_overhead_seconds_count",
    ):
        assert total(samples, name) == 4, name
        assert total(samples, name, endpoint="batch_embed_contents") == 2, name
    # The stream's upstream paused 200 ms between chunks: that is upstream time, not
    # the proxy's, so its overhead is at least that much below its duration.
    stream = {"endpoint": "stream_generate_content"}
    duration = total(samples, "gemini_meter_request_duration_seconds_sum", **stream)
    overhead = total(samples, "gemini_meter_overhead_seconds_sum", **stream)
    assert 0 <= overhead <= duration - 0.2
    for name in RETIRED:
        assert total(samples, name) == 0 and not any(s.name == name for s in samples)


async def test_every_contract_metric_has_exactly_its_labels(stack: Stack):
    app = stack.app
    await add_budget(app, "user:alice", limit_usd="5")
    await add_budget(app, "user:bob", limit_tokens=1)
    await add_spend(app, "bob", "0.01", input_tokens=10)
    await app[budgets_key].refresh()
    await embed(stack, "alice")
    # bob's budget is spent: refused before the upstream
    status, _, _ = await raw(
        "POST",
        stack.url(f"/v1beta/models/{EMBED_MODEL}:batchEmbedContents"),
        headers=stack.headers("bob"),
        json={"requests": [{"content": {"parts": [{"text": EMBED_TEXT}]}}]},
    )
    assert status == 429
    status, _, _ = await raw(
        "POST",
        stack.url(f"/v1beta/models/{MODEL}:generateContent"),
        headers=stack.headers(**{"x-emulator-fail": "503"}),
        json={"contents": [{"parts": [{"text": PROMPT}]}]},
    )
    assert status == 503
    await embed_raw(stack, {"x-emulator-usage": "malformed"})
    status, _, _ = await raw(
        "POST",
        stack.url("/v1beta/models/gemini-not-in-the-catalog:generateContent"),
        headers=stack.headers(),
        json={"contents": [{"parts": [{"text": PROMPT}]}]},
    )
    assert status == 200
    # Two record shapes the emulator does not produce, through the recorder's own counting.
    principal = await principal_of(stack, "carol")
    metrics = app[metrics_key]
    priced = Cost(total=Decimal("0.000001"), input=Decimal("0.000001"), catalog_version="test")
    mismatched = Usage(input_tokens=3, total_tokens=9)
    metrics.observe(record(principal, EndpointKind.GENERATE_CONTENT, mismatched, cost=priced))
    metrics.observe(
        record(principal, EndpointKind.CACHED_CONTENT_CREATE, Usage(), unmetered_route=True)
    )
    await stack.records()

    samples = await scrape(stack.url("/metrics"))
    for name, labels in CONTRACT.items():
        found = [s for s in samples if s.name == name]
        assert found, f"{name} has no sample"
        for sample in found:
            names = set(sample.labels) - {"le"}
            assert names == labels, (name, sample.labels)
    assert total(samples, "gemini_meter_upstream_errors_total", status="503") == 1
    assert total(samples, "gemini_meter_budget_refusals_total", scope="user") == 1
    assert total(samples, "gemini_meter_usage_parse_errors_total") == 1
    assert total(samples, "gemini_meter_total_mismatch_total", endpoint="generate_content") == 1
    assert total(samples, "gemini_meter_unpriced_records_total") == 1
    assert values(samples, "gemini_meter_tokens_total", "model") >= {
        EMBED_MODEL,
        "gemini-not-in-the-catalog",
    }
    assert total(samples, "gemini_meter_writer_failures_total") == 0
    assert total(samples, "gemini_meter_writer_batch_duration_seconds_count") >= 1


async def embed_raw(stack: Stack, headers: dict[str, str]) -> None:
    status, _, _ = await raw(
        "POST",
        stack.url(f"/v1beta/models/{EMBED_MODEL}:batchEmbedContents"),
        headers=stack.headers(**headers),
        json={"requests": [{"content": {"parts": [{"text": EMBED_TEXT}]}}]},
    )
    assert status == 200


async def principal_of(stack: Stack, user: str) -> Any:
    async with stack.app[sessionmaker_key]() as session:
        return await accounts.principal_for_user(session, user)


def record(principal: Any, endpoint: EndpointKind, usage: Usage, **fields: Any) -> UsageRecord:
    return UsageRecord(
        request_id=uuid.uuid4().hex,
        created_at=datetime.now(UTC),
        principal=principal,
        model=MODEL,
        endpoint=endpoint,
        streamed=False,
        upstream_status=200,
        latency_seconds=0.05,
        ttfb_seconds=0.01,
        usage=usage,
        **fields,
    )


async def test_principals_past_the_limit_are_counted_as_other(make_stack: StackFactory):
    stack = await make_stack(metrics_principal_limit=1)
    await embed(stack, "alice")  # research: the first team seen keeps its name
    await embed(stack, "bob")  # support: past the limit of one
    await embed(stack, "carol")  # research again
    samples = await scrape(stack.url("/metrics"))
    assert total(samples, "gemini_meter_tokens_total", type="input", principal="research") == 14
    assert total(samples, "gemini_meter_tokens_total", type="input", principal=OTHER) == 7
    assert values(samples, "gemini_meter_requests_total", "principal") == {"research", OTHER}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("none", {""}), ("user", {"alice", "bob"}), ("team", {"research", "support"})],
)
async def test_the_principal_label_follows_the_setting(
    make_stack: StackFactory, mode: str, expected: set[str]
):
    stack = await make_stack(metrics_principal=mode)
    await embed(stack, "alice")
    await embed(stack, "bob")
    samples = await scrape(stack.url("/metrics"))
    assert values(samples, "gemini_meter_tokens_total", "principal") == expected
    assert total(samples, "gemini_meter_tokens_total", type="input") == 14


def test_media_and_storage_cost_count_and_a_refund_counts_apart(make_record):
    registry = CollectorRegistry()
    metrics = build_metrics(registry, resolve_model=lambda name: name)
    # a cache created ($0.20 of storage), then deleted early ($0.05 given back), and an
    # Imagen call of three images ($0.12)
    for cost in (
        Cost(total=Decimal("0.20"), storage=Decimal("0.20")),
        Cost(total=Decimal("-0.05"), storage=Decimal("-0.05")),
        Cost(total=Decimal("0.12"), media=Decimal("0.12")),
    ):
        who = Principal(user_id=1, user_name="alice")
        metrics.observe(make_record(who, model="m", cost=cost))
    samples = parse(generate_latest(registry).decode())
    assert total(samples, "gemini_meter_cost_usd_total", category="storage") == 0.20
    assert total(samples, "gemini_meter_cost_refunded_usd_total", category="storage") == 0.05
    assert total(samples, "gemini_meter_cost_usd_total", category="media") == 0.12
    assert total(samples, "gemini_meter_cost_refunded_usd_total", category="media") == 0


def test_model_names_are_capped():
    metrics = build_metrics(CollectorRegistry(), resolve_model=lambda name: None)
    long = "x" * 500
    assert metrics.model_label(long) == "x" * 64
    for n in range(MODEL_LIMIT - 1):
        assert metrics.model_label(f"model-{n}") == f"model-{n}"
    assert metrics.model_label("one-too-many") == OTHER
    assert metrics.model_label("model-3") == "model-3"


async def test_budget_gauges_are_the_engines_spend_in_the_window(stack: Stack):
    app = stack.app
    usd = await add_budget(app, "user:alice", limit_usd="5", window="daily")
    tokens = await add_budget(app, "team:research", limit_tokens=1000, mode="alert")
    await add_spend(app, "alice", "1.25", input_tokens=100)
    await app[budgets_key].refresh()
    await embed(stack, "alice")  # 7 tokens, $0.00000105, settled in memory
    samples = await scrape(stack.url("/metrics"))

    now = datetime.now(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    usd_series = {"budget_id": str(usd), "scope": "user:alice", "window": "daily", "unit": "usd"}
    assert total(samples, "gemini_meter_budget_spend", **usd_series) == pytest.approx(
        1.25 + 7 * 0.15 / 1e6, rel=1e-12
    )
    assert total(samples, "gemini_meter_budget_limit", **usd_series) == 5
    assert total(samples, "gemini_meter_budget_utilization_ratio", **usd_series) == (
        pytest.approx((1.25 + 7 * 0.15 / 1e6) / 5, rel=1e-12)
    )
    assert total(
        samples, "gemini_meter_budget_window_end_timestamp_seconds", **usd_series
    ) == pytest.approx(midnight.timestamp())
    # an alert-only budget is counted too
    token_series = {"budget_id": str(tokens), "scope": "team:research", "unit": "tokens"}
    assert total(samples, "gemini_meter_budget_spend", **token_series) == 107
    assert total(samples, "gemini_meter_budget_utilization_ratio", **token_series) == 0.107


async def test_a_metrics_port_serves_metrics_and_the_proxy_port_does_not(
    tmp_path: Path, aiohttp_server: Any
):
    emulator = await aiohttp_server(create_emulator_app())
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'meter.db'}"
    env = proxy_env(tmp_path, database_url, str(emulator.make_url("")).rstrip("/"))
    key = cli(env, "keys", "create", "--user", "alice").strip().splitlines()[-1]
    metrics_port = free_port()
    proxy = ProxyProcess(
        env, free_port(), tmp_path / "proxy.log", args=("--metrics-port", str(metrics_port))
    )
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{proxy.url}/v1beta/models/{EMBED_MODEL}:batchEmbedContents",
                json={"requests": [{"content": {"parts": [{"text": EMBED_TEXT}]}}]},
                headers={"x-goog-api-key": key},
            ) as response:
                assert response.status == 200
            async with session.get(f"{proxy.url}/metrics") as response:
                assert response.status == 404
                assert "gemini_meter" not in await response.text()
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                assert response.status == 200
                samples = parse(await response.text())
        proxy.signal(signal.SIGTERM)
        assert await proxy.wait() == 0  # both sites stop cleanly
    finally:
        proxy.kill()
    assert total(samples, "gemini_meter_tokens_total", type="input", model=EMBED_MODEL) == 7


def test_the_metrics_port_must_be_another_port():
    with pytest.raises(SettingsError, match="metrics_port"):
        Settings(port=9400, metrics_port=9400)
    assert Settings(port=9400, metrics_port=9401).metrics_port == 9401


def _exposed(registry: CollectorRegistry) -> list[str]:
    """The text exposition's lines, each ``_created`` sample's time left out (it is the
    moment the series was made, never the same twice)."""
    lines = generate_latest(registry).decode().splitlines()
    return [line.rsplit(" ", 1)[0] if "_created{" in line else line for line in lines]


def test_the_per_call_series_are_exposed_as_prometheus_clients_own_types_are():
    # prometheus_client's Counter and Histogram are the reference: the same observations
    # through them and through the meter's own series must expose the same text.
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    labels = ["model", "principal"]
    bounds = (0.005, 0.01, 0.25, 1, 300)
    tally = _Tally("demo_calls_total", "Calls.", labels, ours)
    buckets = _Buckets("demo_seconds", "Seconds.", ["endpoint"], bounds, ours)
    counter = Counter("demo_calls_total", "Calls.", labels, registry=theirs)
    histogram = Histogram("demo_seconds", "Seconds.", ["endpoint"], buckets=bounds, registry=theirs)
    for model, principal, amount in [("a", "t1", 1), ("a", "t1", 2.5), ("b", "", 1e-9)]:
        tally.add((model, principal), amount)
        counter.labels(model, principal).inc(amount)
    # a bound exactly, between two, past the last, zero, and a second series
    for endpoint, seconds in [("x", 0.01), ("x", 0.2), ("x", 301.0), ("x", 0.0), ("y", 1.0)]:
        buckets.observe((endpoint,), seconds)
        histogram.labels(endpoint).observe(seconds)
    assert _exposed(ours) == _exposed(theirs)
    assert 'demo_seconds_bucket{endpoint="x",le="0.01"} 2.0' in _exposed(ours)
