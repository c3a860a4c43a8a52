"""Grounding end to end: the real google-genai SDK, the proxy, the emulator, a real database.

The emulator answers a ``googleMaps`` tool in the shape of Google's own Maps example (a
``maps`` source, and the query the Maps tool ran in ``webSearchQueries``), which the meter
used to take for one Google Search query. Each figure is worked by hand from the catalog's
published fees (docs/pricing.md): Maps $25 per 1,000 grounded prompts on every model,
Search $35 per 1,000 grounded prompts on 2.5 models and $14 per 1,000 queries on Gemini 3.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from google.genai import types

from tests.factories import Stack

MAPS = types.Tool(google_maps=types.GoogleMaps())
SEARCH = types.Tool(google_search=types.GoogleSearch())


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "gemini-3.5-flash"])
async def test_maps_grounding_is_one_maps_prompt(stack: Stack, model: str):
    response = await stack.sdk("alice").aio.models.generate_content(
        model=model,
        contents="What are the best Italian restaurants within a 15-minute walk from here?",
        config=types.GenerateContentConfig(tools=[MAPS]),
    )
    # what the SDK parsed: a Maps source, and the Maps tool's query among webSearchQueries
    [candidate] = response.candidates or []
    grounding = candidate.grounding_metadata
    assert grounding is not None and grounding.grounding_chunks
    assert grounding.grounding_chunks[0].maps is not None
    assert grounding.web_search_queries
    [record] = await stack.records()
    assert record["grounding"] == {"google_maps": 1}
    # one Maps-grounded prompt: 25 / 1,000 = 0.025, on 2.5 and Gemini 3 alike (counted as
    # a Search query it was 35 / 1,000 = 0.035 on 2.5 Flash, 14 / 1,000 on 3.5 Flash)
    assert record["cost_grounding_usd"] == Decimal("0.025")


async def test_maps_widget_and_search_together_on_gemini_3(stack: Stack):
    response = await stack.sdk("alice").aio.models.generate_content_stream(
        model="gemini-3.5-flash",
        contents="Cafes near the Ferry Building with outdoor seating",
        config=types.GenerateContentConfig(
            tools=[SEARCH, types.Tool(google_maps=types.GoogleMaps(enable_widget=True))]
        ),
    )
    chunks = [chunk async for chunk in response]
    grounding = chunks[-1].candidates[0].grounding_metadata  # type: ignore[index]
    assert grounding is not None and grounding.google_maps_widget_context_token
    # both tools ran the same query text: one distinct search query, and one Maps prompt
    assert len(set(grounding.web_search_queries or [])) == 1
    [record] = await stack.records()
    assert record["streamed"] is True
    assert record["grounding"] == {"google_search": 1, "google_maps": 1}
    # 1 query x 14 / 1,000 = 0.014, plus one Maps prompt 25 / 1,000 = 0.025
    assert record["cost_grounding_usd"] == Decimal("0.039")
