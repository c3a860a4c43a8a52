"""Shared by the budget tests: one fixed generateContent call, its hand-worked
reservation, and what the emulator and the database say it cost."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from tests.factories import Stack, raw

MODEL = "gemini-2.5-flash"
PATH = f"/v1beta/models/{MODEL}:generateContent"
BODY = b'{"contents":[{"parts":[{"text":"Say hi"}]}],"generationConfig":{"maxOutputTokens":100}}'
# gemini-2.5-flash (prices.toml, entry of 2025-10-08): input $0.30, output $2.50 per 1M.
INPUT_RATE = Decimal("0.30") / 1_000_000
OUTPUT_RATE = Decimal("2.50") / 1_000_000
RESERVE_USD = Decimal("0.001")
# 87 bytes -> ceil(87 / 4) = 22 input tokens: 22 * 0.30e-6 = 0.0000066;
# 100 output tokens (maxOutputTokens): 100 * 2.50e-6 = 0.00025; plus the per-call 0.001.
RESERVATION = Decimal("0.0012566")


def cost_of(usage: dict[str, Any]) -> Decimal:
    """A response's cost at gemini-2.5-flash's rates, from the upstream's own usage."""
    output = usage.get("candidatesTokenCount", 0) + usage.get("thoughtsTokenCount", 0)
    return Decimal(usage["promptTokenCount"]) * INPUT_RATE + Decimal(output) * OUTPUT_RATE


async def call(stack: Stack, user: str, base_url: str | None = None) -> tuple[int, Any, Any]:
    status, headers, body = await raw(
        "POST",
        (base_url or stack.base_url) + PATH,
        headers=stack.headers(user, **{"content-type": "application/json"}),
        data=BODY,
    )
    return status, headers, body


def forwarded(stack: Stack) -> int:
    """generateContent calls the emulator received (its own ledger)."""
    return sum(1 for r in stack.upstream.requests if r.path.endswith(":generateContent"))


async def probe_cost(stack: Stack) -> Decimal:
    """What one call costs (bob has no budget), from the emulator's usage."""
    status, _, body = await call(stack, "bob")
    assert status == 200, body
    return cost_of(json.loads(body)["usageMetadata"])


async def spend_of(stack: Stack, user: str) -> Decimal:
    user_id = await stack.user_id(user)
    records = await stack.records()
    return sum((r["cost_usd"] for r in records if r["user_id"] == user_id), Decimal(0))
