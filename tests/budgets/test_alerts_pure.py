"""The pure parts of budget alerts: thresholds reached, payload, Slack text, backoff.

Every expected figure is worked by hand in the comments.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from proxy.budgets.alerts import (
    Budget,
    Spend,
    alert_id_header,
    backoff_seconds,
    build_payload,
    normalize_threshold,
    reached_thresholds,
    slack_text,
    webhook_body,
    windows_to_check,
)
from proxy.budgets.windows import TOTAL_START, Window


def _budget(**overrides: object) -> Budget:
    values: dict[str, object] = {
        "id": 3,
        "scope_kind": "team",
        "scope_name": "research",
        "limit_usd": Decimal("10"),
        "limit_tokens": None,
        "category": None,
        "window": Window.MONTHLY,
        "timezone": "Europe/Berlin",
        "thresholds": ("0.5", "0.8", "1"),
        "mode": "enforce",
    }
    values.update(overrides)
    return Budget(**values)  # type: ignore[arg-type]


def test_thresholds_reached_exactly_and_above() -> None:
    # 8 of 10 is exactly 80%: reached (>=), 100% is not.
    assert reached_thresholds(Decimal("8"), Decimal("10"), ["0.5", "0.8", "1"]) == ["0.5", "0.8"]
    assert reached_thresholds(Decimal("7.99"), Decimal("10"), ["0.5", "0.8", "1"]) == ["0.5"]
    assert reached_thresholds(Decimal("0"), Decimal("10"), ["0.5"]) == []
    assert reached_thresholds(Decimal("12"), Decimal("10"), ["1", "0.5"]) == ["0.5", "1"]
    # Same threshold written two ways is one threshold.
    assert reached_thresholds(Decimal("6"), Decimal("10"), ["0.50", "0.5"]) == ["0.5"]


def test_threshold_normalized_and_checked() -> None:
    assert normalize_threshold("0.50") == "0.5"
    assert normalize_threshold("1.0") == "1"
    assert normalize_threshold("10") == "10"
    assert normalize_threshold(Decimal("0.125")) == "0.125"
    for bad in ("0", "-0.5", "nan", "abc", "inf"):
        with pytest.raises(ValueError):
            normalize_threshold(bad)


def test_backoff_doubles_and_is_capped() -> None:
    assert backoff_seconds(0, 1.0, 300.0) == 0.0
    assert [backoff_seconds(n, 1.0, 300.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_seconds(9, 1.0, 300.0) == 256.0
    assert backoff_seconds(10, 1.0, 300.0) == 300.0
    # A row retried for months does not overflow.
    assert backoff_seconds(10_000, 1.0, 300.0) == 300.0


def test_alert_id_header_names_alert_and_budget() -> None:
    assert alert_id_header(17, 3) == "gemini-meter-alert-3-17"


def test_usd_payload_and_slack_text() -> None:
    # $8.12 of $10: flash 5.54 (68.23%), pro 2.58 (31.77%); intermediate 4.95 of 8.12
    # is 60.96%, shown as 61%.
    spend = Spend(
        total=Decimal("8.12"),
        categories={
            "input": Decimal("1.20"),
            "cached": Decimal("0"),
            "intermediate": Decimal("4.95"),
            "output": Decimal("1.54"),
            "thinking": Decimal("0.43"),
            "grounding": Decimal("0"),
        },
        models={"gemini-3.5-flash": Decimal("5.54"), "gemini-2.5-pro": Decimal("2.58")},
    )
    start = datetime(2026, 10, 31, 23, tzinfo=UTC)
    end = datetime(2026, 11, 30, 23, tzinfo=UTC)
    payload = build_payload(
        _budget(),
        threshold="0.8",
        spend=spend,
        window_start=start,
        window_end=end,
        at=datetime(2026, 11, 15, 12, tzinfo=UTC),
    )
    assert payload["scope"] == "team:research"
    assert payload["unit"] == "USD"
    assert (payload["spend"], payload["limit"], payload["fraction"]) == ("8.12", "10", "0.812")
    assert payload["window"] == {
        "name": "monthly",
        "zone": "Europe/Berlin",
        "start": "2026-10-31T23:00:00+00:00",
        "end": "2026-11-30T23:00:00+00:00",
    }
    assert payload["top_models"] == [
        {"model": "gemini-3.5-flash", "spend": "5.54", "share": "0.6823"},
        {"model": "gemini-2.5-pro", "spend": "2.58", "share": "0.3177"},
    ]
    # Largest first; zero categories left out.
    assert [(c["category"], c["share"]) for c in payload["categories"]] == [
        ("intermediate", "0.6096"),
        ("output", "0.1897"),
        ("input", "0.1478"),
        ("thinking", "0.053"),
    ]
    assert payload["text"] == (
        "Budget #3 (team:research, monthly, Europe/Berlin): $8.12 of $10.00 (81%) — crossed"
        " 80%. Top models: gemini-3.5-flash 68%, gemini-2.5-pro 32%. Intermediate (code"
        " execution) tokens made 61% of the spend. Resets 2026-12-01T00:00+01:00."
    )
    assert webhook_body(9, payload, "slack") == {"text": payload["text"]}
    body = webhook_body(9, payload, "json")
    assert body["alert_id"] == 9 and body["budget_id"] == 3 and body["text"] == payload["text"]


def test_token_payload_of_one_category_in_a_total_window() -> None:
    budget = _budget(
        id=5,
        scope_kind="global",
        scope_name=None,
        limit_usd=None,
        limit_tokens=2_000_000,
        category="thinking",
        window=Window.TOTAL,
        timezone="UTC",
    )
    spend = Spend(
        total=Decimal(1_000_000),
        categories={"thinking": Decimal(1_000_000)},
        # Top three of four: the smallest is left out.
        models={
            "a": Decimal(400_000),
            "b": Decimal(300_000),
            "c": Decimal(200_000),
            "d": Decimal(100_000),
        },
    )
    payload = build_payload(
        budget,
        threshold="0.5",
        spend=spend,
        window_start=TOTAL_START,
        window_end=None,
        at=datetime(2026, 11, 15, tzinfo=UTC),
    )
    assert [m["model"] for m in payload["top_models"]] == ["a", "b", "c"]
    assert slack_text(payload) == (
        "Budget #5 (global, total, UTC): 1,000,000 of 2,000,000 thinking tokens (50%) —"
        " crossed 50%. Top models: a 40%, b 30%, c 20%. Thinking tokens made 100% of the"
        " tokens. The window is the whole history (total): it never resets."
    )


def test_usd_below_a_cent_keeps_its_digits() -> None:
    spend = Spend(total=Decimal("0.000015"), categories={}, models={})
    payload = build_payload(
        _budget(limit_usd=Decimal("0.00002"), window=Window.DAILY, timezone="UTC"),
        threshold="0.5",
        spend=spend,
        window_start=datetime(2026, 11, 15, tzinfo=UTC),
        window_end=datetime(2026, 11, 16, tzinfo=UTC),
        at=datetime(2026, 11, 15, 1, tzinfo=UTC),
    )
    # 0.000015 / 0.00002 = 75%.
    assert payload["text"].startswith(
        "Budget #3 (team:research, daily, UTC): $0.000015 of $0.000020 (75%) — crossed 50%."
    )


def test_previous_window_is_checked_for_an_hour_after_it_ended() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    nov10 = (datetime(2026, 11, 9, 15, tzinfo=UTC), datetime(2026, 11, 10, 15, tzinfo=UTC))
    nov11 = (datetime(2026, 11, 10, 15, tzinfo=UTC), datetime(2026, 11, 11, 15, tzinfo=UTC))
    # 00:30 on Nov 11 in Tokyo: Nov 11, and Nov 10 whose last records may be late.
    at = datetime(2026, 11, 10, 15, 30, tzinfo=UTC)
    assert windows_to_check(Window.DAILY, tokyo, at) == [nov11, nov10]
    # 01:00 on Nov 11: Nov 10 is left alone.
    assert windows_to_check(Window.DAILY, tokyo, datetime(2026, 11, 10, 16, tzinfo=UTC)) == [nov11]
    assert windows_to_check(Window.TOTAL, tokyo, at) == [(TOTAL_START, None)]


def test_an_alert_found_after_the_reset_says_when_the_window_ended() -> None:
    spend = Spend(total=Decimal("9"), categories={}, models={})
    payload = build_payload(
        _budget(window=Window.DAILY, timezone="Asia/Tokyo"),
        threshold="0.8",
        spend=spend,
        window_start=datetime(2026, 11, 9, 15, tzinfo=UTC),
        window_end=datetime(2026, 11, 10, 15, tzinfo=UTC),
        at=datetime(2026, 11, 10, 15, 0, 30, tzinfo=UTC),
    )
    assert payload["text"].endswith("(90%) — crossed 80%. The window ended 2026-11-11T00:00+09:00.")
