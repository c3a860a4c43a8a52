"""Costs and the catalog for people and for JSON: the only place money is rounded.

``format_usd`` rounds for display, ``cost_to_json`` writes a ``Cost`` as exact decimal
strings, ``catalog_rows`` flattens a ``Catalog`` into the rows ``gemini-meter prices``
prints. The CLI's ``price`` and ``prices`` commands use them; nothing on the request path
does.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any, Final

from ..metering.records import Cost
from .catalog import Catalog, LongContext, ModelPrices
from .cost import _EXACT

__all__ = ["catalog_rows", "cost_to_json", "format_usd"]

_PLURAL: Final = {"prompt": "prompts", "query": "queries"}


def format_usd(d: Decimal | None, places: int = 6) -> str:
    """Money for people: ``$0.001250``; rounds half up to ``places`` decimals, here only."""
    if d is None:
        return "unpriced"
    if places < 0:
        raise ValueError("places must be >= 0")
    with localcontext(_EXACT):
        rounded = abs(d).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    sign = "-" if d < 0 and rounded else ""
    return f"{sign}${rounded:f}"


def cost_to_json(cost: Cost) -> dict[str, Any]:
    """The JSON form of a cost: exact decimal strings, null throughout when unpriced."""
    return {
        "cost_usd": _exact(cost.total),
        "cost_breakdown_usd": {
            "input": _exact(cost.input),
            "cached": _exact(cost.cached),
            "intermediate": _exact(cost.intermediate),
            "output": _exact(cost.output),
            "thinking": _exact(cost.thinking),
            "grounding": _exact(cost.grounding),
            "media": _exact(cost.media),
            "storage": _exact(cost.storage),
        },
    }


def catalog_rows(catalog: Catalog, model: str | None) -> list[dict[str, str]]:
    """One row per dated entry for ``gemini-meter prices``: every model, or one model.

    ``model`` may be an alias; an unknown name gives no rows. Rates are USD per 1M tokens
    exactly as the catalog writes them.
    """
    if model is None:
        names = catalog.models()
    else:
        resolved = catalog.resolve(model)
        names = [resolved] if resolved is not None else []
    aliases_of: dict[str, list[str]] = {}
    for alias, target in sorted(catalog.aliases.items()):
        aliases_of.setdefault(target, []).append(alias)
    rows: list[dict[str, str]] = []
    for name in names:
        for e in catalog.entries(name):
            rows.append(
                {
                    "model": name,
                    "aliases": ", ".join(aliases_of.get(name, [])),
                    "effective_from": e.effective_from.isoformat(),
                    "input": _rate_text(e.rates.input, e.rates.input_by_modality),
                    "cached": _rate_text(e.rates.cached, e.rates.cached_by_modality),
                    "output": _rate_text(e.rates.output, e.rates.output_by_modality),
                    "long_context": _long_context_text(e.long_context),
                    "tiers": _tiers_text(e),
                    "grounding": "; ".join(
                        f"{tool} ${fee.per_1000}/1000 {_PLURAL.get(fee.unit, fee.unit)}"
                        for tool, fee in e.grounding.items()
                    ),
                    "cache_storage_per_hour": (
                        "" if e.cache_storage_per_hour is None else str(e.cache_storage_per_hour)
                    ),
                    "media": _media_text(e),
                    "source": e.source,
                    "read_on": e.read_on.isoformat(),
                    "confirmed": (
                        "yes"
                        if e.confirmed
                        else f"no ({', '.join(e.unconfirmed)})"
                        if e.unconfirmed
                        else "no"
                    ),
                }
            )
    return rows


def _tiers_text(entry: ModelPrices) -> str:
    text = ", ".join(f"{tier} x{factor}" for tier, factor in entry.tiers.items())
    cached = entry.cached_tiers
    if all(factor == 1 for factor in cached.values()):
        return f"{text}; cached x1 in every tier"
    return f"{text}; cached " + ", ".join(f"{tier} x{factor}" for tier, factor in cached.items())


def _long_context_text(long: LongContext | None) -> str:
    if long is None:
        return ""
    rates = long.rates
    return (
        f"prompt > {long.threshold}: "
        f"input {_rate_text(rates.input, rates.input_by_modality)}, "
        f"cached {_rate_text(rates.cached, rates.cached_by_modality)}, "
        f"output {_rate_text(rates.output, rates.output_by_modality)}"
    )


def _media_text(entry: ModelPrices) -> str:
    """USD per image and per second of video (with the resolutions priced apart)."""
    parts = []
    if entry.per_image is not None:
        parts.append(f"{entry.per_image}/image")
    if entry.per_video_second is not None:
        rate = _rate_text(entry.per_video_second, entry.per_video_second_by_resolution)
        parts.append(f"{rate}/second")
    return "; ".join(parts)


def _rate_text(rate: Decimal, by_modality: Mapping[str, Decimal]) -> str:
    if not by_modality:
        return str(rate)
    others = ", ".join(f"{m} {r}" for m, r in sorted(by_modality.items()))
    return f"{rate} ({others})"


def _exact(value: Decimal | None) -> str | None:
    """An exact plain-notation string without trailing zeros: ``0.00125``, ``0``."""
    if value is None:
        return None
    with localcontext(_EXACT):
        return format(value.normalize(), "f")
