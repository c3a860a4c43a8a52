"""CLI rendering: exact decimals in JSON and CSV, aligned tables."""

from __future__ import annotations

import json
from decimal import Decimal

from proxy.cli.format import render

ROWS = [
    {"user": "alice", "requests": 3, "cost_usd": Decimal("0.000123456789")},
    {"user": "bob", "requests": 10, "cost_usd": None},
]


def test_json_keeps_exact_decimal_strings():
    data = json.loads(render(ROWS, ["user", "requests", "cost_usd"], "json"))
    assert data == [
        {"user": "alice", "requests": 3, "cost_usd": "0.000123456789"},
        {"user": "bob", "requests": 10, "cost_usd": None},
    ]


def test_csv_has_a_header_and_empty_nulls():
    assert render(ROWS, ["user", "cost_usd"], "csv").splitlines() == [
        "user,cost_usd",
        "alice,0.000123456789",
        "bob,",
    ]


def test_table_aligns_numbers_right():
    lines = render(ROWS, ["user", "requests", "cost_usd"], "table").splitlines()
    assert lines[0].split() == ["user", "requests", "cost_usd"]
    assert lines[1].split() == ["alice", "3", "0.000123"]
    assert lines[2].split() == ["bob", "10", "-"]
    assert lines[1].index("3") == lines[2].index("10") + 1
