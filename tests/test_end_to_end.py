"""End to end with the real google-genai SDK: every metered endpoint, plain and streamed.

The SDK talks to the proxy over loopback, the proxy to the emulator, and the
records land in a real SQLite file or PostgreSQL database (each test runs on
both). What the SDK parsed from the response is what the record must hold.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, Final

from google.genai import interactions as gi
from google.genai import types

from proxy.cli.demo import tiny_png
from proxy.metering.parsers import usage_from_generate, usage_from_interaction
from proxy.pricing import load_catalog, price
from tests.factories import UPSTREAM_KEY, Stack, interaction_usage, raw, usage_metadata

# Typed as the SDK's parameters are (MODEL as its literal, one of the SDK's Model names), so
# that create()'s overloads return an Interaction, or a stream with stream=True, not "either".
MODEL: Final = "gemini-3.5-flash"
CODE_EXECUTION: Final[gi.CodeExecutionParam] = {"type": "code_execution"}
PRIMES = (
    "What is the sum of the first 50 prime numbers? "
    "Generate and run code for the calculation, and make sure you get all 50."
)


def assert_tokens(record: dict[str, Any], usage: Any) -> None:
    """The record's breakdown equals the Interactions usage the SDK parsed."""
    assert record["input_tokens"] == (usage.total_input_tokens or 0)
    assert record["cached_tokens"] == (usage.total_cached_tokens or 0)
    assert record["intermediate_tokens"] == (usage.total_tool_use_tokens or 0)
    assert record["output_tokens"] == (usage.total_output_tokens or 0)
    assert record["thinking_tokens"] == (usage.total_thought_tokens or 0)
    assert record["total_tokens"] == usage.total_tokens


async def wait_until_done(stack: Stack, interaction_id: str, user: str = "alice") -> gi.Interaction:
    client = stack.sdk(user)
    for _ in range(100):
        got = await client.aio.interactions.get(interaction_id)
        if got.status == "completed":
            return got
        await asyncio.sleep(0.05)
    raise AssertionError("background interaction never completed")


async def test_interaction_with_code_execution(stack: Stack):
    client = stack.sdk("alice")
    interaction = await client.aio.interactions.create(
        model=MODEL,
        input=PRIMES,
        tools=[CODE_EXECUTION],
        labels={"project": "primes"},
        service_tier="flex",
    )
    assert interaction.steps is not None
    calls = [s for s in interaction.steps if s.type == "code_execution_call"]
    results = [s for s in interaction.steps if s.type == "code_execution_result"]
    assert calls and results and "5117" in json.dumps(interaction.model_dump(mode="json"))

    [record] = await stack.records()
    assert record["interaction_id"] == interaction.id
    assert record["user_id"] == await stack.user_id("alice")
    assert record["endpoint"] == "interaction.create"
    assert record["streamed"] is False
    assert record["upstream_status"] == 200
    assert record["model"] == MODEL
    assert_tokens(record, interaction.usage)
    assert record["intermediate_tokens"] > 0 and record["thinking_tokens"] > 0
    assert record["code_execution_calls"] == len(calls)
    assert record["code_execution_errors"] == 0
    assert record["labels"] == {"project": "primes"}
    assert record["requested_service_tier"] == "flex"
    assert record["effective_service_tier"] == "flex"
    assert record["total_mismatch"] is False
    assert record["parse_error"] is False
    assert record["latency_seconds"] >= record["ttfb_seconds"] > 0
    # priced through the same code path as `gemini-meter price`
    assert record["cost_usd"] is not None
    assert record["catalog_version"] == load_catalog().version


async def test_streamed_interaction_bills_the_final_usage(stack: Stack):
    client = stack.sdk("bob")
    stream = await client.aio.interactions.create(
        model=MODEL, input=PRIMES, tools=[CODE_EXECUTION], stream=True
    )
    events = [event async for event in stream]
    [completed] = [e for e in events if e.event_type == "interaction.completed"]
    [record] = await stack.records()
    assert record["streamed"] is True
    assert record["interaction_id"] == completed.interaction.id
    assert record["user_id"] == await stack.user_id("bob")
    assert_tokens(record, completed.interaction.usage)
    assert record["code_execution_calls"] >= 1


async def test_image_input_is_counted_as_image_tokens(stack: Stack):
    client = stack.sdk("alice")
    image = base64.b64encode(tiny_png()).decode()
    interaction = await client.aio.interactions.create(
        model=MODEL,
        input=[
            {"type": "image", "data": image, "mime_type": "image/png"},
            {"type": "text", "text": "How many pedals are there?"},
        ],
        tools=[CODE_EXECUTION],
    )
    # mypy cannot match a list literal to the SDK's input union, so create()'s overloads
    # leave "Interaction or stream": without stream=True it is an Interaction.
    assert isinstance(interaction, gi.Interaction)
    [record] = await stack.records()
    usage = interaction_usage(interaction)
    assert_tokens(record, usage)
    assert usage.input_tokens_by_modality is not None
    by_modality = {m.modality: m.tokens for m in usage.input_tokens_by_modality}
    image_tokens = by_modality["image"]
    assert image_tokens is not None
    assert record["modalities"]["input"]["image"] == image_tokens > 0


async def test_multi_turn_records_the_previous_interaction_and_cached_tokens(stack: Stack):
    client = stack.sdk("alice")
    first = await client.aio.interactions.create(
        model=MODEL, input="I have a math question for you.", tools=[CODE_EXECUTION]
    )
    assert first.id is not None
    second = await client.aio.interactions.create(
        model=MODEL, previous_interaction_id=first.id, input=PRIMES, tools=[CODE_EXECUTION]
    )
    records = await stack.records()
    assert [r["interaction_id"] for r in records] == [first.id, second.id]
    assert records[1]["previous_interaction_id"] == first.id
    cached = interaction_usage(second).total_cached_tokens
    assert cached is not None
    assert records[1]["cached_tokens"] == cached > 0
    assert_tokens(records[1], second.usage)


async def test_background_interaction_is_billed_once_when_a_poll_shows_it_done(stack: Stack):
    client = stack.sdk("alice")
    created = await client.aio.interactions.create(
        model=MODEL, input=PRIMES, tools=[CODE_EXECUTION], background=True
    )
    assert created.status == "in_progress" and created.id is not None
    assert await stack.records() == []
    done = await wait_until_done(stack, created.id)
    # polled again, fetched again, and its stream replayed: still one record
    await client.aio.interactions.get(created.id)
    replay = await client.aio.interactions.get(created.id, stream=True)
    replayed = [event async for event in replay]
    assert any(e.event_type == "interaction.completed" for e in replayed)
    [record] = await stack.records()
    assert record["interaction_id"] == created.id
    assert record["endpoint"] == "interaction.get"
    assert_tokens(record, done.usage)


async def test_resumed_stream_of_a_running_background_interaction_bills_it(stack: Stack):
    client = stack.sdk("carol")
    created = await client.aio.interactions.create(
        model=MODEL, input=PRIMES, tools=[CODE_EXECUTION], background=True
    )
    assert created.id is not None
    stream = await client.aio.interactions.get(created.id, stream=True)
    events = [event async for event in stream]
    [completed] = [e for e in events if e.event_type == "interaction.completed"]
    await client.aio.interactions.get(created.id)
    [record] = await stack.records()
    assert record["interaction_id"] == created.id
    assert record["streamed"] is True  # billed from the resumed stream
    assert_tokens(record, completed.interaction.usage)


async def test_refetching_a_finished_interaction_never_bills_it_again(stack: Stack):
    client = stack.sdk("alice")
    created = await client.aio.interactions.create(
        model=MODEL, input=PRIMES, tools=[CODE_EXECUTION]
    )
    assert created.id is not None
    for _ in range(3):
        await client.aio.interactions.get(created.id)
    replay = await client.aio.interactions.get(created.id, stream=True)
    [_ async for _ in replay]
    records = await stack.records()
    assert [r["interaction_id"] for r in records] == [created.id]


async def test_generate_content(stack: Stack):
    client = stack.sdk("bob")
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash",
        contents="Compute 2**10 with code.",
        config=types.GenerateContentConfig(
            tools=[types.Tool(code_execution=types.ToolCodeExecution())]
        ),
    )
    meta = usage_metadata(response)
    [record] = await stack.records()
    assert record["endpoint"] == "generate_content"
    assert record["model"] == "gemini-2.5-flash"
    assert record["response_id"] == response.response_id
    assert record["input_tokens"] == meta.prompt_token_count
    assert record["intermediate_tokens"] == (meta.tool_use_prompt_token_count or 0) > 0
    assert record["output_tokens"] == meta.candidates_token_count
    assert record["thinking_tokens"] == (meta.thoughts_token_count or 0)
    assert record["total_tokens"] == meta.total_token_count
    assert record["code_execution_calls"] >= 1


async def test_stream_generate_content_sse_bills_the_last_chunk(stack: Stack):
    client = stack.sdk("bob")
    chunks = [
        chunk
        async for chunk in await client.aio.models.generate_content_stream(
            model="gemini-2.5-pro", contents="Tell me a long story about primes."
        )
    ]
    assert len(chunks) > 1
    final = usage_metadata(chunks[-1])
    [record] = await stack.records()
    assert record["endpoint"] == "stream_generate_content"
    assert record["streamed"] is True
    assert record["input_tokens"] == final.prompt_token_count
    assert record["output_tokens"] == final.candidates_token_count
    assert record["total_tokens"] == final.total_token_count
    # cumulative chunks: a sum would have counted the prompt once per chunk
    summed = 0
    for chunk in chunks:
        prompt = usage_metadata(chunk).prompt_token_count
        assert prompt is not None
        summed += prompt
    assert record["input_tokens"] < summed


async def test_stream_generate_content_json_array(stack: Stack):
    status, headers, body = await raw(
        "POST",
        stack.url("/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
        headers=stack.headers("alice"),
        json={"contents": [{"role": "user", "parts": [{"text": "Count to ten slowly."}]}]},
    )
    assert status == 200
    chunks = json.loads(body)
    assert isinstance(chunks, list) and len(chunks) > 1
    expected = usage_from_generate(chunks[-1]["usageMetadata"])
    [record] = await stack.records()
    assert record["streamed"] is True
    assert record["input_tokens"] == expected.input_tokens
    assert record["output_tokens"] == expected.output_tokens
    assert record["total_tokens"] == expected.total_tokens


async def test_recorded_cost_equals_the_price_command(stack: Stack):
    client = stack.sdk("alice")
    interaction = await client.aio.interactions.create(
        model=MODEL, input=PRIMES, tools=[CODE_EXECUTION]
    )
    [record] = await stack.records()
    usage_json = interaction_usage(interaction).model_dump(mode="json", exclude_none=True)
    expected = price(load_catalog(), MODEL, usage_from_interaction(usage_json))
    assert expected.total is not None and expected.total > 0
    assert record["cost_usd"] == expected.total
    assert record["cost_input_usd"] == expected.input
    assert record["cost_intermediate_usd"] == expected.intermediate
    assert record["cost_thinking_usd"] == expected.thinking


async def test_file_upload_through_the_proxy(stack: Stack, tmp_path):
    # The SDK's resumable upload: an authenticated start, then keyless byte legs
    # addressed by upload id, which the proxy must let through to the upstream.
    path = tmp_path / "primes.csv"
    path.write_text("n,prime\n" + "\n".join(f"{i},{p}" for i, p in enumerate([2, 3, 5, 7, 11])))
    uploaded = await stack.sdk("alice").aio.files.upload(file=str(path))
    assert uploaded.size_bytes is not None
    assert int(uploaded.size_bytes) == path.stat().st_size
    legs = [r for r in stack.upstream.requests if r.path.startswith("/upload/")]
    # the start leg carries the upstream key; the byte legs carry none at all
    assert legs[0].api_key == UPSTREAM_KEY
    assert len(legs) >= 2 and all(r.api_key is None for r in legs[1:])
    assert await stack.records() == []  # uploads are forwarded, not billed


async def test_grounding_is_counted_and_charged(stack: Stack):
    interaction = await stack.sdk("alice").aio.interactions.create(
        model=MODEL, input="Who won the chess olympiad?", tools=[{"type": "google_search"}]
    )
    usage = interaction_usage(interaction)
    assert usage.grounding_tool_count is not None
    counts = {g.type: g.count for g in usage.grounding_tool_count}
    searches = counts["google_search"]
    assert searches is not None and searches >= 1
    [record] = await stack.records()
    assert record["grounding"] == counts
    # gemini-3.5-flash bills Google Search per query
    catalog = load_catalog()
    expected = price(
        catalog,
        MODEL,
        usage_from_interaction(usage.model_dump(mode="json", exclude_none=True)),
    )
    assert expected.grounding is not None
    assert record["cost_grounding_usd"] == expected.grounding > 0


async def test_bad_request_bodies_are_forwarded_and_recorded(stack: Stack):
    # JSON the upstream will refuse is its to judge; a body that is not JSON at all
    # the proxy cannot check, so it refuses it itself (tests/server/test_isolation.py)
    for body in (b"[]", b'{"model": 7, "input": null}'):
        status, _, answer = await raw(
            "POST",
            stack.url("/v1beta/interactions"),
            headers={**stack.headers(), "Content-Type": "application/json"},
            data=body,
        )
        # the upstream is the judge; its Gemini error comes back as it was
        assert status == 400
        assert json.loads(answer)["error"]["status"] == "INVALID_ARGUMENT"
    records = await stack.records()
    assert [(r["upstream_status"], r["total_tokens"]) for r in records] == [(400, 0)] * 2


async def test_tool_search_steps_are_metered(stack: Stack):
    # tool_search and its steps are new in google-genai 3.6: the SDK parses
    # them, and the tokens of the definitions it loads are billed as tool use.
    weather: gi.FunctionParam = {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "defer_loading": True,
    }
    client = stack.sdk("alice")
    events = [
        event
        async for event in await client.aio.interactions.create(
            model=MODEL,
            input="Weather in Paris?",
            tools=[{"type": "tool_search"}, weather],
            stream=True,
        )
    ]
    steps = [e.step.type for e in events if e.event_type == "step.start"]
    assert "tool_search_call" in steps and "tool_search_result" in steps
    final = events[-1].interaction
    [record] = await stack.records()
    assert record["interaction_id"] == final.id and record["streamed"] is True
    assert_tokens(record, final.usage)
    assert record["intermediate_tokens"] == final.usage.total_tool_use_tokens > 0
