"""The cost engine: a ``Usage`` in, an exact ``Cost`` out.

``price`` is a pure function over the catalog's dataclasses (``catalog``) that never
raises on odd input from the wire. The recorder calls it once per finished record;
``reprice`` and the CLI's ``price`` command call it too.

How one record is priced (docs/pricing.md has the worked reasoning):

- The model resolves to its catalog entry in force on the record's UTC date
  (``Catalog.resolve`` and ``Catalog.entry``); without one the record is unpriced
  (``UNPRICED``), never guessed.
- Long-context models bill the whole request at their higher rates when the prompt
  (``input_tokens``, cached part included) exceeds the threshold.
- Uncached input, cached input, intermediate (tool-use) and output tokens bill at the
  rate of their modality where the model has one, text rates otherwise; thinking tokens
  bill at the (text) output rate.
- When the response reports no cached-by-modality breakdown, the cached tokens' modality
  is derived from the prompt's (``_cached_modalities``): exact for a one-modality prompt,
  an upper bound of the bill for a mixed one.
- Units billed other than by the token: images at the entry's ``per_image``, seconds of
  video at ``per_video_second`` (or, for the resolutions it lists, at
  ``per_video_second_by_resolution``), and cache storage (tokens x seconds) at
  ``cache_storage_per_hour`` per million tokens; a record with such units on a model
  whose entry lacks the rate is unpriced, never priced without them.
- The service tier's factor (flex, batch/deferred, priority) multiplies the input,
  intermediate, output and thinking charges; cached tokens have their own per-tier factor
  (``cached_tiers``, 1 where the entry leaves a tier out; docs/pricing.md says how each
  was settled). Grounding fees are added per grounded prompt or per search query, as the
  model bills them, in every tier alike.

Money is ``decimal.Decimal`` throughout, computed in a local context wide enough that no
operation rounds: a record's cost is exact, and only the display helpers round.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)
from types import MappingProxyType
from typing import Final

from ..metering.records import UNPRICED, Cost, Usage
from .catalog import _STANDARD, Catalog, ModelPrices, Rates, _tool_key, _utc_day, _warn_once

__all__ = ["price"]

# Rates are quoted per million tokens.
_PER_MILLION: Final = Decimal(1_000_000)
_SECONDS_PER_HOUR: Final = Decimal(3600)
_ZERO: Final = Decimal(0)

# 80 significant digits: a rate of a dozen digits times a token count of a dozen digits
# times a tier factor never comes close, so no multiplication or division here rounds.
# The traps turn a would-be silent NaN or infinity into an error the tests would see.
_EXACT: Final = Context(
    prec=80,
    rounding=ROUND_HALF_EVEN,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)

# Every spelling either API uses for a tier, to the catalog's name. The Interactions API
# calls its batch-priced asynchronous tier ``deferred``; generateContent's enum spells
# tiers ``SERVICE_TIER_*`` (the prefix is stripped before this lookup).
_TIER_SPELLINGS: Final = MappingProxyType(
    {
        "": _STANDARD,
        "unspecified": _STANDARD,
        "standard": _STANDARD,
        "default": _STANDARD,
        "flex": "flex",
        "batch": "batch",
        "deferred": "batch",
        "priority": "priority",
    }
)


def price(
    catalog: Catalog,
    model: str | None,
    usage: Usage,
    *,
    service_tier: str | None = None,
    at: datetime | None = None,
) -> Cost:
    """The exact cost of ``usage`` on ``model``, or ``UNPRICED`` when the catalog has no price.

    ``service_tier`` is the tier the call was billed at: the effective tier the response
    reported if known, else the requested one; None and unknown names price at standard.
    ``at`` (default: now) picks the dated entry. Nonsensical counts are clamped, never
    raised on: negative counts count as 0, and cached tokens beyond the prompt as the
    prompt (cached is a subset of input).
    """
    canonical = catalog.resolve(model)
    if canonical is None:
        catalog._note_unpriced(model, "not in the catalog")
        return UNPRICED
    day = _utc_day(at if at is not None else datetime.now(UTC))
    entry = catalog.entry(canonical, day)
    if entry is None:
        catalog._note_unpriced(model, f"no entry in force on {day.isoformat()}")
        return UNPRICED
    missing = _missing_unit_rate(entry, usage)
    if missing is not None:
        catalog._note_unpriced(model, f"no {missing} rate")
        return UNPRICED
    return _cost(entry, usage, _tier_name(service_tier), catalog.version)


def _missing_unit_rate(entry: ModelPrices, usage: Usage) -> str | None:
    if usage.images and entry.per_image is None:
        return "per_image"
    if usage.video_seconds and entry.per_video_second is None:
        return "per_video_second"
    if usage.storage_token_seconds and entry.cache_storage_per_hour is None:
        return "cache_storage_per_hour"
    return None


def _cost(entry: ModelPrices, usage: Usage, tier: str, version: str) -> Cost:
    with localcontext(_EXACT):
        prompt = _count(usage.input_tokens)
        cached = min(_count(usage.cached_tokens), prompt)
        rates = entry.rates_for(prompt)
        factor = entry.tier_factor(tier)
        prompt_by_modality = _counts(usage.input_by_modality)
        cached_by_modality = _counts(usage.cached_by_modality) or _cached_modalities(
            cached, prompt, prompt_by_modality, rates
        )
        # A modality's uncached input is its prompt tokens less its cached ones.
        uncached_by_modality = {
            modality: max(tokens - cached_by_modality.get(modality, 0), 0)
            for modality, tokens in prompt_by_modality.items()
        }
        input_cost = _charge(
            prompt - cached, uncached_by_modality, rates.input, rates.input_by_modality, factor
        )
        cached_cost = _charge(
            cached,
            cached_by_modality,
            rates.cached,
            rates.cached_by_modality,
            entry.cached_tier_factor(tier),
        )
        intermediate_cost = _charge(
            _count(usage.intermediate_tokens),
            _counts(usage.intermediate_by_modality),
            rates.input,
            rates.input_by_modality,
            factor,
        )
        output_cost = _charge(
            _count(usage.output_tokens),
            _counts(usage.output_by_modality),
            rates.output,
            rates.output_by_modality,
            factor,
        )
        thinking_cost = _charge(_count(usage.thinking_tokens), {}, rates.output, {}, factor)
        grounding_cost = _grounding(entry, usage.grounding)
        media_cost = _ZERO
        if usage.images > 0 or usage.video_seconds > 0:
            media_cost = _count(usage.images) * (entry.per_image or _ZERO) + _split(
                _count(usage.video_seconds),
                _counts(usage.video_seconds_by_resolution),
                entry.per_video_second or _ZERO,
                entry.per_video_second_by_resolution,
            )
        # Signed: a cache deleted before its expiry refunds the storage not used. The one
        # division that can round (by 3,600), at 80 digits, far below the stored 12.
        storage_cost = _ZERO
        if usage.storage_token_seconds:
            storage_cost = (
                usage.storage_token_seconds
                * (entry.cache_storage_per_hour or _ZERO)
                / _PER_MILLION
                / _SECONDS_PER_HOUR
            )
        total = (
            input_cost
            + cached_cost
            + intermediate_cost
            + output_cost
            + thinking_cost
            + grounding_cost
            + media_cost
            + storage_cost
        )
    return Cost(
        total=total,
        input=input_cost,
        cached=cached_cost,
        intermediate=intermediate_cost,
        output=output_cost,
        thinking=thinking_cost,
        grounding=grounding_cost,
        media=media_cost,
        storage=storage_cost,
        catalog_version=version,
    )


def _charge(
    tokens: int,
    by_modality: Mapping[str, int],
    text_rate: Decimal,
    modality_rates: Mapping[str, Decimal],
    factor: Decimal,
) -> Decimal:
    """``tokens`` at their modalities' rates; tokens no breakdown accounts for are text."""
    if tokens == 0:  # most of a record's categories (cached, intermediate, thinking)
        return _ZERO
    return _split(tokens, by_modality, text_rate, modality_rates) * factor / _PER_MILLION


def _split(
    units: int, by_kind: Mapping[str, int], base_rate: Decimal, kind_rates: Mapping[str, Decimal]
) -> Decimal:
    """``units`` at their kinds' rates (modalities, video resolutions), the rest at the base.

    A breakdown claiming more units than the total is clamped to the total, so the
    breakdown can only move units between rates, never add any.
    """
    if not kind_rates or not by_kind:  # most rates have no kinds, most units no breakdown
        return _ZERO + base_rate * units
    remaining = units
    amount = _ZERO
    for kind in sorted(kind_rates):
        counted = min(by_kind.get(kind, 0), remaining)
        if counted:
            amount += kind_rates[kind] * counted
            remaining -= counted
    return amount + base_rate * remaining


def _cached_modalities(
    cached: int, prompt: int, prompt_by_modality: Mapping[str, int], rates: Rates
) -> dict[str, int]:
    """The cached tokens' modalities when the response does not say (its breakdown is empty).

    generateContent omits ``cacheTokensDetails`` in some responses; without a breakdown the
    cached tokens would all bill at the text cache rate, so an all-audio cached prompt
    would be charged as text. The cached part is a part of the prompt, so:

    - a prompt of one modality (``promptTokensDetails``) has cached tokens of that
      modality: exact;
    - a prompt of several modalities leaves the split unknown. The cached tokens are
      then assigned to the modalities whose caching saves least first (the smallest input
      rate minus cached rate; text for prompt tokens no breakdown accounts for), each up
      to its prompt tokens. Caching an audio token saves more than caching a text token
      (2.5 Flash: 1.00 - 0.10 against 0.30 - 0.03), so this is the split that leaves the
      bill highest: the meter never prices a mixed cached prompt below what Google can
      charge for it, as with budgets everywhere in the meter. Ties keep the modality name
      order, so the result is deterministic.
    """
    if cached <= 0 or not prompt_by_modality:
        return {}
    pools = dict(prompt_by_modality)
    unaccounted = prompt - sum(pools.values())
    if unaccounted > 0:
        pools["text"] = pools.get("text", 0) + unaccounted

    def saving(modality: str) -> Decimal:
        return rates.input_by_modality.get(modality, rates.input) - rates.cached_by_modality.get(
            modality, rates.cached
        )

    assigned: dict[str, int] = {}
    remaining = cached
    for modality in sorted(pools, key=lambda m: (saving(m), m)):
        take = min(pools[modality], remaining)
        if take:
            assigned[modality] = take
            remaining -= take
    return assigned


def _grounding(entry: ModelPrices, uses: Mapping[str, int]) -> Decimal:
    amount = Decimal(0)
    for tool, count in uses.items():
        used = _count(count)
        if used == 0:
            continue
        fee = entry.grounding_fee(tool)
        if fee is None:
            # Not guessed: a tool the catalog has no fee for is not charged, and said so once.
            _warn_once(
                f"tool:{entry.model}:{_tool_key(tool)}",
                "model %s has no catalog fee for grounding tool %r: not charged",
                entry.model,
                tool,
            )
            continue
        amount += fee.charge(used)
    return amount


def _count(value: int) -> int:
    return value if value > 0 else 0


def _counts(by_modality: Mapping[str, int]) -> dict[str, int]:
    if not by_modality:
        return {}
    merged: dict[str, int] = {}
    for modality, tokens in by_modality.items():
        key = modality.strip().lower()
        merged[key] = merged.get(key, 0) + _count(tokens)
    return merged


def _tier_name(tier: str | None) -> str:
    """The catalog's name for a tier as either API spells it; unknown ones are standard."""
    if tier is None:
        return _STANDARD
    spelled = tier.strip().lower().removeprefix("service_tier_")
    name = _TIER_SPELLINGS.get(spelled)
    if name is None:
        _warn_once(f"tier:{spelled[:40]}", "unknown service tier %r: priced at standard", tier)
        return _STANDARD
    return name
