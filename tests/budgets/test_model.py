"""The pure parts of enforcement: estimates, amounts, the boundary rule, the refusal."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from proxy.budgets.counters import Entry, LocalCounters, exceeds
from proxy.budgets.engine import TOTAL_RETRY_AFTER, refusal
from proxy.budgets.estimate import estimate, max_output_tokens
from proxy.budgets.rules import Budget, BudgetIndex, Unit, applicable, usage_amount
from proxy.budgets.windows import Window
from proxy.metering.records import Cost, Principal, Usage
from tests.factories import AT, CATALOG


def budget(**overrides: object) -> Budget:
    values: dict[str, object] = {
        "id": 7,
        "scope_kind": "user",
        "scope_name": "alice",
        "unit": Unit.NANO_USD,
        "limit": 10_000_000,  # 0.01 USD
        "category": None,
        "window": Window.DAILY,
        "zone": ZoneInfo("Europe/Paris"),
        "enforce": True,
    }
    values.update(overrides)
    return Budget(**values)  # type: ignore[arg-type]


def test_the_estimate_prices_body_bytes_over_four_and_the_requested_output():
    # gemini-2.5-flash: input $0.30 / 1M, output $2.50 / 1M (prices.toml, 2025-10-08 entry).
    # 87 bytes -> ceil(87 / 4) = 22 input tokens: 22 * 0.30e-6 = 0.0000066
    # 100 output tokens: 100 * 2.50e-6 = 0.00025; plus the per-call 0.001.
    guess = estimate(
        CATALOG,
        "gemini-2.5-flash",
        body_bytes=87,
        body={"generationConfig": {"maxOutputTokens": 100}},
        generates=True,
        default_output_tokens=8192,
        reserve_usd=Decimal("0.001"),
        reserve_tokens=50,
        at=AT,
    )
    assert guess.cost_usd == Decimal("0.0012566")
    assert guess.amount(budget()) == 1_256_600  # nano-dollars
    assert guess.amount(budget(unit=Unit.TOKENS, limit=10_000)) == 22 + 100 + 50
    assert guess.amount(budget(unit=Unit.TOKENS, limit=10_000, category="output")) == 100 + 50
    assert guess.amount(budget(unit=Unit.TOKENS, limit=10_000, category="cached")) == 50


def test_without_a_cap_the_default_output_is_reserved_and_embeddings_reserve_none():
    # 8192 output tokens * 2.50e-6 = 0.02048; 1 byte -> 1 input token * 0.30e-6.
    guess = estimate(
        CATALOG,
        "gemini-2.5-flash",
        body_bytes=1,
        body={},
        generates=True,
        default_output_tokens=8192,
        reserve_usd=Decimal(0),
        reserve_tokens=0,
        at=AT,
    )
    assert guess.cost_usd == Decimal("0.0204803")
    embed = estimate(
        CATALOG,
        "no-such-model",
        body_bytes=400,
        body=None,
        generates=False,
        default_output_tokens=8192,
        reserve_usd=Decimal("0.01"),
        reserve_tokens=0,
        at=AT,
    )
    # an unpriced model reserves the per-call amount alone; 100 input tokens, no output
    assert embed.cost_usd == Decimal("0.01")
    assert embed.usage.input_tokens == 100 and embed.usage.output_tokens == 0


def test_max_output_tokens_in_both_spellings():
    assert max_output_tokens({"generationConfig": {"maxOutputTokens": 12}}) == 12
    assert max_output_tokens({"generation_config": {"max_output_tokens": "34"}}) == 34
    assert max_output_tokens({"generationConfig": {"maxOutputTokens": True}}) is None
    assert max_output_tokens({"generationConfig": {"maxOutputTokens": -1}}) is None
    assert max_output_tokens(["not", "a", "dict"]) is None


def test_max_output_tokens_of_the_openai_compatible_endpoint():
    # OpenAI's cap, and its deprecated name; the current one wins when both are sent
    assert max_output_tokens({"model": "m", "max_completion_tokens": 56}) == 56
    assert max_output_tokens({"model": "m", "max_tokens": 78}) == 78
    assert max_output_tokens({"max_completion_tokens": 9, "max_tokens": 90}) == 9
    assert max_output_tokens({"max_tokens": None}) is None


def test_the_boundary_spend_at_the_limit_refuses_and_exactly_fitting_passes():
    assert exceeds(spend=10, amount=0, limit=10)  # reached: refused even at zero estimate
    assert not exceeds(spend=6, amount=4, limit=10)  # lands exactly on the limit: admitted
    assert exceeds(spend=7, amount=4, limit=10)


def test_usage_amounts_by_unit_and_category():
    usage = Usage(
        input_tokens=100,
        cached_tokens=40,
        intermediate_tokens=30,
        output_tokens=20,
        thinking_tokens=10,
        total_tokens=160,
    )
    tokens = budget(unit=Unit.TOKENS, limit=1)
    # cached is part of input: billed tokens are input + intermediate + output + thinking
    assert usage_amount(tokens, usage, None) == 160
    assert usage_amount(budget(unit=Unit.TOKENS, limit=1, category="cached"), usage, None) == 40
    assert usage_amount(budget(unit=Unit.TOKENS, limit=1, category="thinking"), usage, None) == 10
    # 1e-10 USD rounds up to one nano-dollar; unpriced counts zero
    assert usage_amount(budget(), usage, Cost(total=Decimal("0.0000000001"))) == 1
    assert usage_amount(budget(), usage, None) == 0
    # a USD budget on one cost category counts that part only: $0.000003 of intermediate
    # is 3,000 nano-dollars, whatever the total
    split = Cost(total=Decimal("0.00001"), intermediate=Decimal("0.000003"))
    assert usage_amount(budget(category="intermediate"), usage, split) == 3_000
    assert usage_amount(budget(category="grounding"), usage, split) == 0


def test_local_counters_check_all_budgets_and_settle_replaces_the_reservation():
    local = LocalCounters()
    start = datetime(2026, 11, 28, 23, 0, tzinfo=UTC)
    end = datetime(2026, 11, 29, 23, 0, tzinfo=UTC)
    small = Entry(budget(id=1, limit=100), start, end, 60)
    large = Entry(budget(id=2, limit=1000), start, end, 60)
    assert local.refused([small, large]) is None
    local.reserve([small, large])
    # a second call of 60 breaks budget 1 (120 > 100), not budget 2
    assert local.refused([large, small]) == small
    local.unreserve([small, large])
    local.settle(small.key, end, 30)  # the real cost, 30
    assert local.spend(small.key) == 30 and local.reserved(small.key) == 0
    assert local.refused([small, large]) is None


def test_the_refusal_names_the_budget_its_window_and_its_reset():
    b = budget()
    start = datetime(2026, 11, 28, 23, 0, tzinfo=UTC)  # midnight in Paris (UTC+1)
    end = datetime(2026, 11, 29, 23, 0, tzinfo=UTC)
    error = refusal(Entry(b, start, end, 1), now=datetime(2026, 11, 29, 22, 0, tzinfo=UTC))
    assert error.code == 429 and error.status == "RESOURCE_EXHAUSTED"
    assert "Budget 7 (user:alice, daily, limit 0.01 USD)" in error.message
    assert "2026-11-29T00:00:00+01:00" in error.message
    assert "resets at 2026-11-30T00:00:00+01:00" in error.message
    assert error.headers == {"Retry-After": "3600"}
    total = budget(window=Window.TOTAL, unit=Unit.TOKENS, limit=5, category="thinking")
    error = refusal(Entry(total, start, None, 1), now=start)
    assert "limit 5 thinking tokens" in error.message and "never resets" in error.message
    assert error.headers == {"Retry-After": str(TOTAL_RETRY_AFTER)}


def test_the_index_finds_the_same_budgets_as_a_scan():
    budgets = [
        budget(id=1, scope_kind="global", scope_name=None),
        budget(id=2, scope_kind="user", scope_name="alice"),
        budget(id=3, scope_kind="user", scope_name="bob"),
        budget(id=4, scope_kind="team", scope_name="research"),
        budget(id=5, scope_kind="key", scope_name="12"),
        budget(id=6, scope_kind="key", scope_name="13"),
        budget(id=7, scope_kind="user", scope_name="alice", enforce=False),  # alert only
    ]
    index = BudgetIndex(budgets)
    alice = Principal(1, "alice", team_id=1, team_name="research", key_id=12)
    bob = Principal(2, "bob", team_id=None, team_name=None, key_id=13)
    assert [b.id for b in index.covering(alice)] == [1, 2, 4, 5]
    assert [b.id for b in index.covering(bob)] == [1, 3, 6]
    for who in (alice, bob):
        assert index.covering(who) == applicable(budgets, who)
