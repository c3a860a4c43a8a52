"""Display helpers (``proxy.pricing.display``): the only place money is rounded."""

from __future__ import annotations

import pytest

from proxy.metering.records import UNPRICED
from proxy.pricing import catalog_rows, cost_to_json, format_usd, price
from tests.factories import AT, CATALOG, COST_PARTS, D, usage


def test_format_usd():
    assert format_usd(D("0.0000125")) == "$0.000013"  # half up, at display only
    assert format_usd(D("0.0000124")) == "$0.000012"
    assert format_usd(D("1.5"), places=2) == "$1.50"
    assert format_usd(D("0")) == "$0.000000"
    assert format_usd(D("-0.25"), places=2) == "-$0.25"
    assert format_usd(None) == "unpriced"
    with pytest.raises(ValueError):
        format_usd(D("1"), places=-1)


def test_cost_to_json():
    cost = price(
        CATALOG, "gemini-2.5-pro", usage(input_tokens=1_000, grounding={"google_search": 1}), at=AT
    )
    # 1,000 x 1.25 = 0.00125; 0.035 per grounded prompt
    assert cost_to_json(cost) == {
        "cost_usd": "0.03625",
        "cost_breakdown_usd": {
            "input": "0.00125",
            "cached": "0",
            "intermediate": "0",
            "output": "0",
            "thinking": "0",
            "grounding": "0.035",
            "media": "0",
            "storage": "0",
        },
    }
    # no exponent notation, however small
    tiny = price(CATALOG, "gemini-2.5-flash-lite", usage(cached_tokens=1, input_tokens=1), at=AT)
    assert cost_to_json(tiny)["cost_usd"] == "0.00000001"
    unpriced = cost_to_json(UNPRICED)
    assert unpriced["cost_usd"] is None
    assert set(unpriced["cost_breakdown_usd"]) == set(COST_PARTS)
    assert all(v is None for v in unpriced["cost_breakdown_usd"].values())


def test_catalog_rows():
    rows = catalog_rows(CATALOG, None)
    # one row per dated entry: gemini-2.5-flash-lite, gemini-3.8-flash and
    # veo-3.1-fast-generate-preview have two
    assert [r["model"] for r in rows] == sorted(
        m for m in CATALOG.models() for _ in CATALOG.entries(m)
    )
    assert len(rows) == len(CATALOG.models()) + 3
    assert all(isinstance(v, str) for r in rows for v in r.values())
    (pro,) = catalog_rows(CATALOG, "models/gemini-2.5-pro-preview-06-05")
    assert pro["model"] == "gemini-2.5-pro"
    assert pro["input"] == "1.25" and pro["cached"] == "0.125" and pro["output"] == "10.00"
    assert pro["long_context"] == "prompt > 200000: input 2.50, cached 0.25, output 15.00"
    assert pro["tiers"] == (
        "flex x0.5, batch x0.5, priority x1.8; cached flex x0.5, batch x1, priority x1.8"
    )
    assert pro["grounding"] == "google_search $35/1000 prompts; google_maps $25/1000 prompts"
    assert pro["confirmed"] == "no (tiers.priority, cached_tiers.flex, cached_tiers.priority)"
    assert pro["effective_from"] == "2025-10-08"
    assert "gemini-2.5-pro-preview-06-05" in pro["aliases"]
    (flash,) = catalog_rows(CATALOG, "gemini-2.5-flash")
    assert flash["input"] == "0.30 (audio 1.00)" and flash["cached"] == "0.03 (audio 0.10)"
    (image,) = catalog_rows(CATALOG, "gemini-2.5-flash-image-preview")
    assert image["output"] == "2.50 (image 30.00)"
    (tts,) = catalog_rows(CATALOG, "gemini-2.5-flash-preview-tts")
    assert tts["tiers"] == "flex x1, batch x0.5, priority x1; cached x1 in every tier"
    assert catalog_rows(CATALOG, "no-such-model") == []
    assert flash["media"] == ""
    (imagen,) = catalog_rows(CATALOG, "imagen-4.0-generate-001")
    assert imagen["media"] == "0.04/image"
    (veo,) = catalog_rows(CATALOG, "veo-3.1-generate-preview")
    assert veo["media"] == "0.40 (1080p 0.40, 4k 0.60)/second"
