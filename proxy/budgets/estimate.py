"""The reservation a call holds against its budgets while it runs: pure.

At admission the proxy does not know what a call will cost, so it reserves an
estimate, settled against the real cost once the call is recorded:

- input tokens: the request body's bytes / 4, rounded up (the emulator's and
  Gemini's rough ratio for text; media in the body as base64 count more bytes
  than tokens, which errs on the safe side);
- output tokens: the requested maximum (``generationConfig.maxOutputTokens``,
  ``generation_config.max_output_tokens`` on the Interactions API, or the
  OpenAI-compatible endpoint's top-level ``max_completion_tokens`` / older
  ``max_tokens``), else a configured default; embeddings produce none;
- priced with the catalog at the requested service tier, like a record;
- plus a fixed reservation per call for what cannot be estimated (code execution's
  intermediate tokens, thinking, grounding fees): ``budget_reserve_usd`` and
  ``budget_reserve_tokens``.

Images and video (``estimate_usage``) are estimated from what the request asks
for (``server.media.requested_usage``: Imagen's ``sampleCount`` images, Veo's
seconds × videos at the requested resolution), priced at the catalog's
``per_image`` / ``per_video_second``, plus the same per-call reserve.

What a call costs beyond its reservation is the overshoot ``docs/budgets.md`` bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from ..metering.records import Usage
from ..pricing import Catalog, price
from .rules import Budget, Unit, usage_amount, usd_to_nanos

__all__ = ["Estimate", "estimate", "estimate_usage", "max_output_tokens"]

_BYTES_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Estimate:
    """What one call is expected to spend at most, before the per-call reserve."""

    usage: Usage
    cost_usd: Decimal  # priced usage plus the per-call reserve; unpriced models: the reserve
    reserve_tokens: int

    def amount(self, budget: Budget) -> int:
        """The reservation against ``budget``, in its unit."""
        if budget.unit is Unit.NANO_USD:
            return usd_to_nanos(self.cost_usd)
        return usage_amount(budget, self.usage, None) + self.reserve_tokens


def _field(body: object, *names: str) -> object:
    if not isinstance(body, dict):
        return None
    for name in names:
        if name in body:
            return body[name]
    return None


def max_output_tokens(body: object) -> int | None:
    """The output cap a request body asks for, in any of the APIs' spellings."""
    config = _field(body, "generationConfig", "generation_config")
    value = _field(config, "maxOutputTokens", "max_output_tokens")
    if value is None:
        # OpenAI's chat completions; ``max_tokens`` is its deprecated name for the same cap.
        value = _field(body, "max_completion_tokens", "max_tokens")
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():  # proto int32 as JSON may be a string
        return int(value)
    return None


def estimate(
    catalog: Catalog,
    model: str | None,
    *,
    body_bytes: int,
    body: object,
    generates: bool,
    default_output_tokens: int,
    reserve_usd: Decimal,
    reserve_tokens: int,
    service_tier: str | None = None,
    at: datetime | None = None,
) -> Estimate:
    """The estimate for a call whose body is ``body_bytes`` long (``body`` parsed, or None)."""
    input_tokens = -(-max(0, body_bytes) // _BYTES_PER_TOKEN)
    output_tokens = 0
    if generates:
        requested = max_output_tokens(body)
        output_tokens = default_output_tokens if requested is None else requested
    usage = Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
    )
    return estimate_usage(
        catalog,
        model,
        usage,
        reserve_usd=reserve_usd,
        reserve_tokens=reserve_tokens,
        service_tier=service_tier,
        at=at,
    )


def estimate_usage(
    catalog: Catalog,
    model: str | None,
    usage: Usage,
    *,
    reserve_usd: Decimal,
    reserve_tokens: int,
    service_tier: str | None = None,
    at: datetime | None = None,
) -> Estimate:
    """The estimate for a call expected to use ``usage``: priced, plus the per-call reserve."""
    cost = price(catalog, model, usage, service_tier=service_tier, at=at).total
    return Estimate(
        usage=usage,
        cost_usd=(cost or Decimal(0)) + reserve_usd,
        reserve_tokens=reserve_tokens,
    )
