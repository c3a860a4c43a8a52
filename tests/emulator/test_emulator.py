"""The Gemini emulator, driven by the real google-genai SDK and by raw HTTP.

The SDK parses responses leniently (unknown fields kept, invalid variants
constructed anyway), so besides driving it, these tests validate the raw JSON
strictly against the SDK's own types: no unknown field, no unknown or invalid
union variant, no invalid enum value. That is what "speaks the wire format
exactly as the SDK parses it" means here.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pydantic
import pytest
from aiohttp.test_utils import TestServer
from google import genai
from google.genai import types
from google.genai._gaos.lib.compat_errors import BadRequestError, NotFoundError
from google.genai._gaos.types import interactions as itypes
from google.genai._gaos.utils.serializers import unmarshal

import proxy.emulator.state as emulator_state
from proxy.emulator import (
    AUDIO_TOKENS,
    IMAGE_TOKENS,
    MAX_SEEN_REQUESTS,
    THOUGHT_TOKENS,
    EmulatorConfig,
    SeenRequest,
    create_emulator_app,
    emulator_state_key,
    run_emulator,
)
from tests.emulator.conftest import BACKGROUND_SECONDS
from tests.factories import interaction_usage, usage_metadata

PRIMES_PROMPT = "What is the sum of the first 50 primes? Generate and run code for the calculation."
THINKING_MODEL = "gemini-3-flash-preview"
PLAIN_MODEL = "gemini-2.0-flash"  # does not think unless asked
KEY = {"x-goog-api-key": "test-key"}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake image bytes").decode()


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


# --------------------------------------------------------------------------- fixtures, helpers


def url(server: TestServer, path: str) -> str:
    return str(server.make_url(path))


def assert_fully_known(value: object, path: str = "$") -> None:
    """No unknown union variant and no field the SDK does not declare, anywhere."""
    if isinstance(value, pydantic.BaseModel):
        assert not getattr(value, "is_unknown", False), f"{path}: unknown variant {value!r}"
        assert not value.model_extra, f"{path}: undeclared fields {value.model_extra}"
        # vars(), not getattr(): reading deprecated fields would warn.
        for name, item in vars(value).items():
            assert_fully_known(item, f"{path}.{name}")
    elif isinstance(value, list):
        for number, item in enumerate(value):
            assert_fully_known(item, f"{path}[{number}]")


def strict_interaction(payload: object) -> itypes.Interaction:
    parsed = unmarshal(payload, itypes.Interaction, coerce_iterables=False)
    assert isinstance(parsed, itypes.Interaction)
    assert_fully_known(parsed)
    return parsed


def strict_event(payload: object) -> Any:
    parsed = unmarshal(payload, itypes.InteractionSSEEvent, coerce_iterables=False)
    assert_fully_known(parsed)
    return parsed


def strict_generate(payload: dict[str, Any]) -> types.GenerateContentResponse:
    # The SDK's generateContent types forbid extra fields and warn on unknown
    # enum values (an error under this suite's filterwarnings), so this fails
    # on any field or value the SDK does not know.
    return types.GenerateContentResponse.model_validate(payload)


def parse_sse(body: bytes, separator: bytes = b"\n\n") -> list[Any]:
    """The events of a stream, checked against the framing Google's transcripts show.

    Interactions events come as ``event: TYPE`` then ``data: {...}`` (TYPE is
    the data's ``event_type``) and end with ``event: done`` / ``data: [DONE]``,
    given here as the string ``"[DONE]"``; generateContent chunks are bare
    ``data:`` lines.
    """
    assert body.endswith(separator)
    events = []
    for block in body[: -len(separator)].split(separator):
        name = None
        if block.startswith(b"event: "):
            line, block = block.split(b"\n", 1)
            name = line[len(b"event: ") :].decode()
        assert block.startswith(b"data: "), block
        data = block[len(b"data: ") :]
        if data == b"[DONE]":
            assert name == "done"
            events.append("[DONE]")
        else:
            event = json.loads(data)
            assert name == event.get("event_type")
            events.append(event)
    return events


async def post(
    http: aiohttp.ClientSession,
    server: TestServer,
    path: str,
    body: object,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    async with http.post(url(server, path), json=body, headers={**KEY, **(headers or {})}) as r:
        return r.status, dict(r.headers), await r.read()


def usage_totals(usage: Any) -> dict[str, int]:
    return {
        "input": usage.total_input_tokens,
        "cached": usage.total_cached_tokens,
        "tool_use": usage.total_tool_use_tokens,
        "output": usage.total_output_tokens,
        "thought": usage.total_thought_tokens,
        "total": usage.total_tokens,
    }


def by_modality(items: list[Any] | None) -> dict[str, int]:
    return {item.modality: item.tokens for item in items or []}


async def run_python(code: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await process.communicate()
    assert process.returncode == 0
    return stdout.decode()


# --------------------------------------------------------------------------- Interactions API


async def test_interaction_with_code_execution(aio: Any, http: Any, server: TestServer) -> None:
    request = {
        "model": THINKING_MODEL,
        "input": PRIMES_PROMPT,
        "tools": [{"type": "code_execution"}],
    }
    interaction = await aio.interactions.create(**request)

    assert interaction.status == "completed"
    assert interaction.id.startswith("v1_")
    assert interaction.model == THINKING_MODEL
    assert [type(step).__name__ for step in interaction.steps] == [
        "UserInputStep",
        "ThoughtStep",
        "CodeExecutionCallStep",
        "CodeExecutionResultStep",
        "ModelOutputStep",
    ]
    _, thought, call, result, _ = interaction.steps
    assert thought.signature
    assert call.arguments.language == "python"
    assert result.call_id == call.id
    assert result.is_error is False
    assert result.result == "5117\n"
    # The generated code really computes what the result says.
    assert await run_python(call.arguments.code) == result.result
    assert "5117" in interaction.output_text

    # Every category, by the documented rules.
    code, output = call.arguments.code, result.result
    input_tokens = tokens(PRIMES_PROMPT)
    tool_use = input_tokens + tokens(code) + tokens(output)
    out = tokens(code) + tokens(output) + tokens(interaction.output_text)
    thought_tokens = THOUGHT_TOKENS["medium"]
    usage = interaction.usage
    assert usage_totals(usage) == {
        "input": input_tokens,
        "cached": 0,
        "tool_use": tool_use,
        "output": out,
        "thought": thought_tokens,
        "total": input_tokens + tool_use + out + thought_tokens,
    }
    assert usage.initial_input_tokens == input_tokens
    assert by_modality(usage.input_tokens_by_modality) == {"text": input_tokens}
    assert by_modality(usage.tool_use_tokens_by_modality) == {"text": tool_use}
    assert by_modality(usage.output_tokens_by_modality) == {"text": out}
    assert usage.cached_tokens_by_modality == []

    status, headers, body = await post(http, server, "/v1beta/interactions", request)
    assert status == 200
    assert headers["x-gemini-service-tier"] == "standard"
    raw = strict_interaction(json.loads(body))
    assert raw.service_tier == "standard"
    assert usage_totals(raw.usage) == usage_totals(usage)


async def test_interaction_stream(aio: Any, http: Any, server: TestServer) -> None:
    request = {
        "model": THINKING_MODEL,
        "input": PRIMES_PROMPT,
        "tools": [{"type": "code_execution"}],
        "generation_config": {"thinking_summaries": "auto"},
    }
    events = [event async for event in await aio.interactions.create(**request, stream=True)]

    kinds = [event.event_type for event in events]
    # The shape of Google's streaming transcripts: created, in_progress, the
    # generated steps indexed from 0, completed.
    assert kinds[:2] == ["interaction.created", "interaction.status_update"]
    assert kinds[-2:] == ["step.stop", "interaction.completed"]
    assert kinds.count("step.start") == kinds.count("step.stop") == 4
    starts = [event for event in events if event.event_type == "step.start"]
    assert [(event.index, event.step.type) for event in starts] == [
        (0, "thought"),
        (1, "code_execution_call"),
        (2, "code_execution_result"),
        (3, "model_output"),
    ]
    ids = [event.event_id for event in events]
    assert all(ids) and len(set(ids)) == len(ids)

    created, final = events[0], events[-1]
    assert created.interaction.status == "in_progress"
    assert created.interaction.usage is None
    assert final.interaction.status == "completed"
    assert final.interaction.id == created.interaction.id
    assert final.interaction.steps is None  # the steps came as events

    text = "".join(
        event.delta.text
        for event in events
        if event.event_type == "step.delta" and event.delta.type == "text"
    )
    assert "5117" in text
    summaries = [
        e for e in events if e.event_type == "step.delta" and e.delta.type == "thought_summary"
    ]
    assert summaries and summaries[0].delta.content.text

    # Usage comes once, on interaction.completed: never on a step or a status.
    for event in events[:-1]:
        assert getattr(event, "usage", None) is None
        assert getattr(event, "step_usage", None) is None
    final_usage = usage_totals(final.interaction.usage)

    # Streaming or not, the same request costs the same.
    whole = await aio.interactions.create(**request)
    assert usage_totals(whole.usage) == final_usage

    status, headers, body = await post(
        http, server, "/v1/interactions", {**request, "stream": True}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    raw = parse_sse(body)
    assert raw[-1] == "[DONE]"
    for event in raw[:-1]:
        strict_event(event)
    assert [event["event_type"] for event in raw[:-1]] == kinds


async def test_interaction_image_input(aio: Any) -> None:
    question = "What is in this picture?"
    interaction = await aio.interactions.create(
        model=PLAIN_MODEL,
        input=[
            {"type": "text", "text": question},
            {"type": "image", "data": PNG, "mime_type": "image/png"},
        ],
    )
    usage = interaction.usage
    assert by_modality(usage.input_tokens_by_modality) == {
        "text": tokens(question),
        "image": IMAGE_TOKENS,
    }
    assert usage.total_input_tokens == tokens(question) + IMAGE_TOKENS
    assert usage.total_thought_tokens == 0  # a non-thinking model, not asked to think
    user_input = interaction.steps[0]
    assert user_input.type == "user_input"
    assert [block.type for block in user_input.content] == ["text", "image"]
    assert "1 image" in interaction.output_text


async def test_interaction_audio_and_raw_content_list(http: Any, server: TestServer) -> None:
    body = {
        "model": PLAIN_MODEL,
        "input": [{"type": "audio", "data": PNG, "mime_type": "audio/wav"}],
        "system_instruction": "Transcribe.",
    }
    status, _, raw = await post(http, server, "/v1/interactions", body)
    assert status == 200
    usage = strict_interaction(json.loads(raw)).usage
    assert usage is not None
    assert by_modality(usage.input_tokens_by_modality) == {
        "text": tokens("Transcribe."),
        "audio": AUDIO_TOKENS,
    }


async def test_multi_turn_reports_cached_tokens(aio: Any) -> None:
    first = await aio.interactions.create(model=PLAIN_MODEL, input="Name a prime number.")
    second = await aio.interactions.create(
        model=PLAIN_MODEL, input="And another one?", previous_interaction_id=first.id
    )
    third = await aio.interactions.create(
        model=PLAIN_MODEL, input="One more.", previous_interaction_id=second.id
    )

    assert first.usage.total_cached_tokens == 0
    context = first.usage.total_input_tokens + first.usage.total_output_tokens
    assert second.usage.total_input_tokens == tokens("And another one?") + context
    assert second.usage.total_cached_tokens == first.usage.total_input_tokens > 0
    assert by_modality(second.usage.cached_tokens_by_modality) == {
        "text": first.usage.total_input_tokens
    }
    assert second.previous_interaction_id == first.id
    assert third.usage.total_cached_tokens == second.usage.total_input_tokens
    assert third.usage.total_input_tokens > second.usage.total_input_tokens

    with pytest.raises(NotFoundError) as caught:
        await aio.interactions.create(
            model=PLAIN_MODEL, input="Hi", previous_interaction_id="v1_nonexistent"
        )
    assert caught.value.status_code == 404


async def test_stateless_history_input(aio: Any) -> None:
    first = await aio.interactions.create(model=PLAIN_MODEL, input="Hi", store=False)
    history = [step.to_dict() for step in first.steps]
    follow_up = await aio.interactions.create(
        model=PLAIN_MODEL,
        input=[*history, {"type": "user_input", "content": [{"type": "text", "text": "More"}]}],
        store=False,
    )
    expected = tokens("Hi" + first.output_text + "More")
    assert follow_up.usage.total_input_tokens == expected
    assert 'You said: "More"' in follow_up.output_text
    with pytest.raises(NotFoundError):
        await aio.interactions.get(first.id)


async def test_background_interaction_polling(aio: Any, server: TestServer) -> None:
    started = time.monotonic()
    created = await aio.interactions.create(
        model=THINKING_MODEL,
        input="Think in the background.",
        background=True,
        service_tier="flex",
        labels={"team": "search"},
    )
    assert created.status == "in_progress"
    assert created.usage is None
    assert created.service_tier == "flex"
    assert created.labels == {"team": "search"}

    polled = await aio.interactions.get(created.id)
    while polled.status == "in_progress":
        await asyncio.sleep(0.05)
        polled = await aio.interactions.get(created.id)
    assert time.monotonic() - started >= BACKGROUND_SECONDS
    assert polled.status == "completed"
    assert polled.usage.total_tokens > 0
    assert polled.usage.total_thought_tokens == THOUGHT_TOKENS["medium"]
    assert [step.type for step in polled.steps] == ["user_input", "thought", "model_output"]
    assert polled.output_text

    state = server.app[emulator_state_key]
    assert state.interactions[created.id].status() == "completed"
    assert state.requests[-1].path == f"/v1/interactions/{created.id}"


async def test_get_with_stream_replays_and_resumes(aio: Any) -> None:
    original = [
        event
        async for event in await aio.interactions.create(
            model=THINKING_MODEL, input="Replay me.", stream=True
        )
    ]
    interaction_id = original[0].interaction.id

    replay = [event async for event in await aio.interactions.get(interaction_id, stream=True)]
    assert [event.event_id for event in replay] == [event.event_id for event in original]
    assert usage_totals(replay[-1].interaction.usage) == usage_totals(
        original[-1].interaction.usage
    )

    resume_after = original[4].event_id
    resumed = [
        event
        async for event in await aio.interactions.get(
            interaction_id, stream=True, last_event_id=resume_after
        )
    ]
    assert [event.event_id for event in resumed] == [event.event_id for event in original[5:]]


async def test_get_with_stream_follows_a_running_background_interaction(aio: Any) -> None:
    created = await aio.interactions.create(model=PLAIN_MODEL, input="Follow me.", background=True)
    started = time.monotonic()
    events = [event async for event in await aio.interactions.get(created.id, stream=True)]
    assert time.monotonic() - started >= BACKGROUND_SECONDS * 0.8
    assert events[0].event_type == "interaction.created"
    assert events[-1].event_type == "interaction.completed"
    assert events[-1].interaction.status == "completed"
    assert events[-1].interaction.usage.total_tokens > 0


async def test_cancel(aio: Any, http: Any, server: TestServer) -> None:
    created = await aio.interactions.create(model=PLAIN_MODEL, input="Cancel me.", background=True)
    cancelled = await aio.interactions.cancel(created.id)
    assert cancelled.status == "cancelled"
    # The prompt was read, nothing was generated: input is all it bills.
    assert usage_totals(cancelled.usage) == {
        "input": tokens("Cancel me."),
        "cached": 0,
        "tool_use": 0,
        "output": 0,
        "thought": 0,
        "total": tokens("Cancel me."),
    }
    await asyncio.sleep(BACKGROUND_SECONDS)
    assert (await aio.interactions.get(created.id)).status == "cancelled"

    async with http.post(url(server, f"/v1/interactions/{created.id}/cancel"), headers=KEY) as r:
        assert r.status == 400
        assert (await r.json())["error"]["status"] == "FAILED_PRECONDITION"
    with pytest.raises(BadRequestError):
        await aio.interactions.cancel(created.id)
    with pytest.raises(NotFoundError):
        await aio.interactions.cancel("v1_nonexistent")


async def test_delete(aio: Any, http: Any, server: TestServer) -> None:
    created = await aio.interactions.create(model=PLAIN_MODEL, input="Forget me.")
    assert await aio.interactions.delete(created.id) is None
    with pytest.raises(NotFoundError):
        await aio.interactions.get(created.id)
    with pytest.raises(NotFoundError):
        await aio.interactions.delete(created.id)

    created = await aio.interactions.create(model=PLAIN_MODEL, input="Forget me too.")
    async with http.delete(url(server, f"/v1/interactions/{created.id}"), headers=KEY) as r:
        assert r.status == 200
        assert await r.json() == {}


async def test_include_input(http: Any, server: TestServer) -> None:
    _, _, body = await post(http, server, "/v1/interactions", {"model": PLAIN_MODEL, "input": "Hi"})
    interaction_id = json.loads(body)["id"]
    async with http.get(
        url(server, f"/v1/interactions/{interaction_id}?include_input=true"), headers=KEY
    ) as r:
        assert strict_interaction(await r.json()).input == "Hi"
    async with http.get(url(server, f"/v1/interactions/{interaction_id}"), headers=KEY) as r:
        assert "input" not in await r.json()


async def test_google_search_counts_grounding(aio: Any) -> None:
    interaction = await aio.interactions.create(
        model=PLAIN_MODEL, input="Who won?", tools=[{"type": "google_search"}]
    )
    assert [step.type for step in interaction.steps][1:3] == [
        "google_search_call",
        "google_search_result",
    ]
    assert [(g.type, g.count) for g in interaction.usage.grounding_tool_count] == [
        ("google_search", 1)
    ]


async def test_grounding_and_agents(aio: Any, http: Any, server: TestServer) -> None:
    response = await aio.models.generate_content(
        model=PLAIN_MODEL,
        contents="Who won the match?",
        config=types.GenerateContentConfig(tools=[types.Tool(google_search=types.GoogleSearch())]),
    )
    grounding = response.candidates[0].grounding_metadata
    assert grounding.web_search_queries == ["Who won the match?"]
    assert grounding.search_entry_point.rendered_content

    status, _, raw = await post(
        http, server, "/v1beta/interactions", {"agent": "deep-research-preview", "input": "Dig."}
    )
    assert status == 200
    agent = strict_interaction(json.loads(raw))
    assert agent.agent == "deep-research-preview" and agent.model is None
    assert agent.usage is not None
    assert agent.usage.total_thought_tokens == THOUGHT_TOKENS["medium"]


async def test_interactions_accept_every_api_version(server: TestServer, http: Any) -> None:
    client = genai.Client(
        api_key="test-key",
        http_options=types.HttpOptions(base_url=str(server.make_url("")), api_version="v1alpha"),
    ).aio
    try:
        interaction = await client.interactions.create(model=PLAIN_MODEL, input="Hi")
    finally:
        await client.aclose()
    assert isinstance(interaction, itypes.Interaction)
    assert interaction.status == "completed"
    state = server.app[emulator_state_key]
    assert state.requests[-1].path == "/v1alpha/interactions"
    for version in ("v1", "v1beta"):
        status, _, _ = await post(http, server, f"/{version}/interactions", {"model": "m"})
        assert status == 200


async def test_interaction_request_errors(http: Any, server: TestServer) -> None:
    async def error_of(body: object) -> tuple[int, str]:
        status, _, raw = await post(http, server, "/v1/interactions", body)
        return status, json.loads(raw)["error"]["status"]

    assert await error_of({"input": "no model"}) == (400, "INVALID_ARGUMENT")
    assert await error_of({"model": "m", "service_tier": "gold"}) == (400, "INVALID_ARGUMENT")
    assert await error_of([1, 2]) == (400, "INVALID_ARGUMENT")
    async with http.post(url(server, "/v1/interactions"), data=b"{not json", headers=KEY) as r:
        assert r.status == 400
    async with http.get(url(server, "/v1/interactions/x?stream=true&last_event_id=nope")) as r:
        assert r.status == 401
    _, _, raw = await post(http, server, "/v1/interactions", {"model": "m"})
    interaction_id = json.loads(raw)["id"]
    async with http.get(
        url(server, f"/v1/interactions/{interaction_id}?stream=true&last_event_id=nope"),
        headers=KEY,
    ) as r:
        assert r.status == 400


# --------------------------------------------------------------------------- generateContent


async def test_generate_content_with_code_execution(
    aio: Any, http: Any, server: TestServer
) -> None:
    config = types.GenerateContentConfig(
        tools=[types.Tool(code_execution=types.ToolCodeExecution())]
    )
    response = await aio.models.generate_content(
        model="gemini-2.5-flash", contents=PRIMES_PROMPT, config=config
    )

    parts = response.candidates[0].content.parts
    assert parts[0].executable_code.language == types.Language.PYTHON
    assert parts[1].code_execution_result.outcome == types.Outcome.OUTCOME_OK
    assert parts[1].code_execution_result.output == "5117\n"
    assert await run_python(parts[0].executable_code.code) == "5117\n"
    assert "5117" in response.text
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    assert response.model_version == "gemini-2.5-flash"
    assert response.response_id

    code, output = parts[0].executable_code.code, "5117\n"
    prompt = tokens(PRIMES_PROMPT)
    tool_use = prompt + tokens(code) + tokens(output)
    candidates = tokens(code) + tokens(output) + tokens(response.text)
    meta = response.usage_metadata
    assert meta.prompt_token_count == prompt
    assert meta.cached_content_token_count is None  # absent when zero
    assert meta.tool_use_prompt_token_count == tool_use
    assert meta.candidates_token_count == candidates
    assert meta.thoughts_token_count == THOUGHT_TOKENS["medium"]
    assert meta.total_token_count == prompt + tool_use + candidates + THOUGHT_TOKENS["medium"]
    text = types.MediaModality.TEXT
    assert [(d.modality, d.token_count) for d in meta.prompt_tokens_details] == [(text, prompt)]
    assert [(d.modality, d.token_count) for d in meta.tool_use_prompt_tokens_details] == [
        (text, tool_use)
    ]
    assert [(d.modality, d.token_count) for d in meta.candidates_tokens_details] == [
        (text, candidates)
    ]
    assert response.sdk_http_response.headers["x-gemini-service-tier"] == "standard"

    body = {
        "contents": [{"role": "user", "parts": [{"text": PRIMES_PROMPT}]}],
        "tools": [{"codeExecution": {}}],
    }
    status, _, raw = await post(
        http, server, "/v1beta/models/gemini-2.5-flash:generateContent", body
    )
    assert status == 200
    strict = strict_generate(json.loads(raw))
    assert strict.usage_metadata == meta


async def test_generate_content_thinking_and_history(aio: Any) -> None:
    history = [
        types.Content(role="user", parts=[types.Part(text="Hello there, model.")]),
        types.Content(role="model", parts=[types.Part(text="Hello, human.")]),
        types.Content(role="user", parts=[types.Part(text="How are you?")]),
    ]
    thoughts = types.ThinkingConfig(include_thoughts=True, thinking_level=types.ThinkingLevel.LOW)
    response = await aio.models.generate_content(
        model=PLAIN_MODEL,
        contents=history,
        config=types.GenerateContentConfig(
            thinking_config=thoughts,
            system_instruction="Be brief.",
            service_tier=types.ServiceTier.PRIORITY,
        ),
    )
    meta = response.usage_metadata
    cached = tokens("Hello there, model." + "Hello, human.")
    assert meta.cached_content_token_count == cached
    assert [(d.modality, d.token_count) for d in meta.cache_tokens_details] == [
        (types.MediaModality.TEXT, cached)
    ]
    all_text = "Hello there, model." + "Hello, human." + "How are you?" + "Be brief."
    assert meta.prompt_token_count == tokens(all_text)
    assert meta.thoughts_token_count == THOUGHT_TOKENS["low"]
    assert meta.tool_use_prompt_token_count is None
    first = response.candidates[0].content.parts[0]
    assert first.thought is True and first.text
    assert response.sdk_http_response.headers["x-gemini-service-tier"] == "priority"

    off = await aio.models.generate_content(
        model="gemini-2.5-flash",
        contents="Quick.",
        config=types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=0)),
    )
    assert off.usage_metadata.thoughts_token_count is None


async def test_generate_content_image_input(aio: Any) -> None:
    response = await aio.models.generate_content(
        model=PLAIN_MODEL,
        contents=[
            "Describe it.",
            types.Part.from_bytes(data=b"fake image", mime_type="image/jpeg"),
        ],
    )
    details = response.usage_metadata.prompt_tokens_details
    assert [(d.modality, d.token_count) for d in details] == [
        (types.MediaModality.TEXT, tokens("Describe it.")),
        (types.MediaModality.IMAGE, IMAGE_TOKENS),
    ]


async def test_generate_content_stream(aio: Any, http: Any, server: TestServer) -> None:
    config = types.GenerateContentConfig(
        tools=[types.Tool(code_execution=types.ToolCodeExecution())]
    )
    chunks = [
        chunk
        async for chunk in await aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents=PRIMES_PROMPT, config=config
        )
    ]
    assert len(chunks) >= 4
    totals = [chunk.usage_metadata.total_token_count for chunk in chunks]
    assert totals == sorted(totals) and totals[0] < totals[-1]
    assert [chunk.candidates[0].finish_reason for chunk in chunks[:-1]] == [None] * (
        len(chunks) - 1
    )
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert len({chunk.response_id for chunk in chunks}) == 1

    whole = await aio.models.generate_content(
        model="gemini-2.5-flash", contents=PRIMES_PROMPT, config=config
    )
    assert chunks[-1].usage_metadata == whole.usage_metadata
    assert "".join(chunk.text or "" for chunk in chunks) == whole.text

    body = {"contents": [{"parts": [{"text": "Stream, please."}]}]}
    async with http.post(
        url(server, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
        json=body,
        headers=KEY,
    ) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = await r.read()
    events = parse_sse(raw, b"\r\n\r\n")  # Google frames these with CRLF
    assert len(events) > 1
    for event in events:
        strict_generate(event)


async def test_stream_generate_json_array(http: Any, server: TestServer) -> None:
    body = {"contents": [{"parts": [{"text": "Stream as an array."}]}]}
    pieces = []
    async with http.post(
        url(server, "/v1/models/gemini-2.5-flash:streamGenerateContent"),
        json=body,
        headers={**KEY, "x-emulator-chunk-delay-ms": "20"},
    ) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/json")
        async for piece in r.content.iter_any():
            pieces.append(piece)
    raw = b"".join(pieces)
    assert len(pieces) > 1  # written element by element, not at once
    assert raw.startswith(b"[{") and raw.endswith(b"\n]")
    assert b"\n,\r\n" in raw
    elements = json.loads(raw)
    assert len(elements) == raw.count(b"\n,\r\n") + 1 > 1
    for element in elements:
        strict_generate(element)
    usage = [element["usageMetadata"]["totalTokenCount"] for element in elements]
    assert usage == sorted(usage)


async def test_count_tokens(aio: Any, http: Any, server: TestServer) -> None:
    counted = await aio.models.count_tokens(model=PLAIN_MODEL, contents="Count these words.")
    assert counted.total_tokens == tokens("Count these words.")
    body = {
        "generateContentRequest": {
            "model": f"models/{PLAIN_MODEL}",
            "contents": [
                {
                    "parts": [
                        {"text": "abcd"},
                        {"inlineData": {"mimeType": "image/png", "data": PNG}},
                    ]
                }
            ],
        }
    }
    status, _, raw = await post(http, server, f"/v1beta/models/{PLAIN_MODEL}:countTokens", body)
    assert status == 200
    assert json.loads(raw) == {"totalTokens": 1 + IMAGE_TOKENS}


# --------------------------------------------------------------------------- files


async def test_upload_streams_and_counts(aio: Any, http: Any, server: TestServer) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 100_000

    async with http.post(
        url(server, "/upload/v1beta/files"),
        data=body(),
        headers={**KEY, "Content-Type": "application/pdf"},
    ) as r:
        assert r.status == 200
        uploaded = await r.json()
    assert uploaded["file"]["sizeBytes"] == "1000000"
    assert uploaded["file"]["name"].startswith("files/")
    assert uploaded["file"]["mimeType"] == "application/pdf"

    # The SDK's resumable protocol: start, then the bytes to the upload URL
    # (which it sends without the API key, as Google's URL is the credential).
    file = await aio.files.upload(
        file=io.BytesIO(b"y" * 1234), config=types.UploadFileConfig(mime_type="text/plain")
    )
    assert file.size_bytes == 1234
    assert file.mime_type == "text/plain"
    assert file.state == types.FileState.ACTIVE
    seen = server.app[emulator_state_key].requests
    assert seen[-1].api_key is None and "upload_id" in seen[-1].query

    async with http.post(url(server, "/upload/v1beta/files?upload_id=forged"), data=b"x") as r:
        assert r.status == 401


# --------------------------------------------------------------------------- triggers, errors


async def test_missing_key_is_unauthenticated(http: Any, server: TestServer) -> None:
    async with http.post(url(server, "/v1/interactions"), json={"model": "m"}) as r:
        assert r.status == 401
        assert r.headers["x-gemini-service-tier"] == "standard"
        error = (await r.json())["error"]
    assert error["code"] == 401 and error["status"] == "UNAUTHENTICATED" and error["message"]

    async with http.post(url(server, "/v1/interactions?key=query-key"), json={"model": "m"}) as r:
        assert r.status == 200
    seen = server.app[emulator_state_key].requests[-1]
    assert seen == SeenRequest(
        method="POST",
        path="/v1/interactions",
        query={"key": "query-key"},
        headers=seen.headers,
        api_key="query-key",
    )
    assert all(name == name.lower() for name in seen.headers)


async def test_unknown_paths_are_not_found(http: Any, server: TestServer) -> None:
    for method, path in [
        ("GET", "/v1/nothing-here"),
        ("GET", "/v1/models/gemini-2.5-flash:generateContent"),
        ("POST", "/v1/models/gemini-2.5-flash:embedTheWorld"),
        ("PATCH", "/v1/interactions/x"),
    ]:
        async with http.request(method, url(server, path), headers=KEY) as r:
            assert r.status == 404, path
            assert (await r.json())["error"]["status"] == "NOT_FOUND"
            assert r.headers["x-gemini-service-tier"] == "standard"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (400, "INVALID_ARGUMENT"),
        (429, "RESOURCE_EXHAUSTED"),
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
    ],
)
async def test_fail_trigger(http: Any, server: TestServer, code: int, status: str) -> None:
    for path, body in [
        ("/v1/interactions", {"model": "m", "service_tier": "flex"}),
        ("/v1beta/models/gemini-2.5-flash:generateContent", {"contents": []}),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", {"contents": []}),
    ]:
        got, headers, raw = await post(http, server, path, body, {"x-emulator-fail": str(code)})
        assert got == code
        assert json.loads(raw)["error"] == {
            "code": code,
            "message": f"Failure requested by x-emulator-fail: {code}.",
            "status": status,
        }
        assert headers["Content-Type"].startswith("application/json")
    assert headers["x-gemini-service-tier"] == "standard"
    got, headers, _ = await post(
        http,
        server,
        "/v1/interactions",
        {"model": "m", "service_tier": "flex"},
        {"x-emulator-fail": str(code)},
    )
    assert headers["x-gemini-service-tier"] == "flex"


async def test_delay_triggers(http: Any, server: TestServer) -> None:
    started = time.monotonic()
    status, _, _ = await post(
        http, server, "/v1/interactions", {"model": "m"}, {"x-emulator-delay-ms": "300"}
    )
    assert status == 200
    assert time.monotonic() - started >= 0.3

    started = time.monotonic()
    status, _, raw = await post(
        http,
        server,
        "/v1/interactions",
        {"model": "m", "input": "paced", "stream": True},
        {"x-emulator-chunk-delay-ms": "30"},
    )
    events = parse_sse(raw)
    assert time.monotonic() - started >= 0.03 * (len(events) - 2)

    for header in ("x-emulator-delay-ms", "x-emulator-chunk-delay-ms", "x-emulator-fail"):
        status, _, raw = await post(http, server, "/v1/interactions", {"model": "m"}, {header: "x"})
        assert status == 400
        assert header in json.loads(raw)["error"]["message"]


async def test_usage_triggers_interactions(http: Any, server: TestServer) -> None:
    request = {"model": THINKING_MODEL, "input": "Usage?"}
    _, _, raw = await post(
        http, server, "/v1/interactions", request, {"x-emulator-usage": "missing"}
    )
    assert "usage" not in json.loads(raw)
    _, _, raw = await post(
        http, server, "/v1/interactions", request, {"x-emulator-usage": "malformed"}
    )
    usage = json.loads(raw)["usage"]
    assert isinstance(usage["total_input_tokens"], str)
    assert usage["total_output_tokens"] < 0

    _, _, raw = await post(
        http,
        server,
        "/v1/interactions",
        {**request, "stream": True},
        {"x-emulator-usage": "missing"},
    )
    assert all("usage" not in json.dumps(event) for event in parse_sse(raw)[:-1])
    _, _, raw = await post(
        http,
        server,
        "/v1/interactions",
        {**request, "stream": True},
        {"x-emulator-usage": "malformed"},
    )
    final = parse_sse(raw)[-2]["interaction"]["usage"]
    assert isinstance(final["total_tokens"], str)

    # A background interaction remembers the trigger for the polls that follow.
    _, _, raw = await post(
        http,
        server,
        "/v1/interactions",
        {**request, "background": True},
        {"x-emulator-usage": "missing"},
    )
    interaction_id = json.loads(raw)["id"]
    await asyncio.sleep(BACKGROUND_SECONDS)
    async with http.get(url(server, f"/v1/interactions/{interaction_id}"), headers=KEY) as r:
        polled = await r.json()
    assert polled["status"] == "completed" and "usage" not in polled

    status, _, _ = await post(http, server, "/v1/interactions", request, {"x-emulator-usage": "?"})
    assert status == 400


async def test_usage_triggers_generate_content(http: Any, server: TestServer) -> None:
    body = {"contents": [{"parts": [{"text": "Usage?"}]}]}
    path = "/v1beta/models/gemini-2.5-flash"
    _, _, raw = await post(
        http, server, f"{path}:generateContent", body, {"x-emulator-usage": "missing"}
    )
    assert "usageMetadata" not in json.loads(raw)
    _, _, raw = await post(
        http, server, f"{path}:generateContent", body, {"x-emulator-usage": "malformed"}
    )
    meta = json.loads(raw)["usageMetadata"]
    assert isinstance(meta["promptTokenCount"], str) and meta["candidatesTokenCount"] < 0

    _, _, raw = await post(
        http,
        server,
        f"{path}:streamGenerateContent?alt=sse",
        body,
        {"x-emulator-usage": "missing"},
    )
    assert all("usageMetadata" not in chunk for chunk in parse_sse(raw, b"\r\n\r\n"))
    _, _, raw = await post(
        http, server, f"{path}:streamGenerateContent", body, {"x-emulator-usage": "malformed"}
    )
    assert all(
        isinstance(chunk["usageMetadata"]["totalTokenCount"], str) for chunk in json.loads(raw)
    )


# --------------------------------------------------------------------------- determinism, state


async def test_same_request_same_numbers(http: Any, server: TestServer) -> None:
    interaction = {
        "model": THINKING_MODEL,
        "input": [
            {
                "type": "user_input",
                "content": [
                    {"type": "text", "text": PRIMES_PROMPT},
                    {"type": "image", "data": PNG, "mime_type": "image/png"},
                ],
            },
        ],
        "tools": [{"type": "code_execution"}],
        "system_instruction": "Answer precisely.",
    }
    generate = {
        "contents": [{"role": "user", "parts": [{"text": PRIMES_PROMPT}]}],
        "tools": [{"codeExecution": {}}],
    }
    gc_path = "/v1beta/models/gemini-2.5-pro:generateContent"
    first_pair = [
        json.loads((await post(http, server, "/v1/interactions", interaction))[2]),
        json.loads((await post(http, server, gc_path, generate))[2]),
    ]
    second_pair = [
        json.loads((await post(http, server, "/v1/interactions", interaction))[2]),
        json.loads((await post(http, server, gc_path, generate))[2]),
    ]
    assert first_pair[0]["id"] != second_pair[0]["id"]
    assert first_pair[0]["usage"] == second_pair[0]["usage"]
    assert first_pair[1]["usageMetadata"] == second_pair[1]["usageMetadata"]
    assert first_pair[0]["steps"][-1] == second_pair[0]["steps"][-1]


async def test_seen_requests_are_bounded(http: Any, server: TestServer) -> None:
    state = server.app[emulator_state_key]
    assert state.requests.maxlen == MAX_SEEN_REQUESTS
    async with http.get(url(server, "/v1/interactions/x"), headers={"X-Trace": "1"}) as r:
        assert r.status == 401
    seen = state.requests[-1]
    assert seen.method == "GET" and seen.headers["x-trace"] == "1" and seen.api_key is None


async def test_stream_following_a_cancel_or_delete(http: Any, server: TestServer) -> None:
    async def follow(interaction_id: str) -> list[Any]:
        async with http.get(
            url(server, f"/v1/interactions/{interaction_id}?stream=true"), headers=KEY
        ) as r:
            return parse_sse(await r.read())

    for action in ("cancel", "delete"):
        _, _, raw = await post(
            http, server, "/v1/interactions", {"model": "m", "input": "x", "background": True}
        )
        interaction_id = json.loads(raw)["id"]
        following = asyncio.create_task(follow(interaction_id))
        await asyncio.sleep(0.05)
        if action == "cancel":
            status, _, _ = await post(http, server, f"/v1/interactions/{interaction_id}/cancel", {})
        else:
            async with http.delete(
                url(server, f"/v1/interactions/{interaction_id}"), headers=KEY
            ) as r:
                status = r.status
        assert status == 200
        events = await asyncio.wait_for(following, BACKGROUND_SECONDS / 2)
        assert events[-1] == "[DONE]"
        last = strict_event(events[-2])
        if action == "cancel":
            assert last.event_type == "interaction.completed"
            assert last.interaction.status == "cancelled"
        else:
            assert last.event_type == "error"


async def test_client_leaving_a_stream_does_not_hurt(http: Any, server: TestServer) -> None:
    async with http.post(
        url(server, "/v1/interactions"),
        json={"model": "m", "input": "slow", "stream": True},
        headers={**KEY, "x-emulator-chunk-delay-ms": "50"},
    ) as r:
        assert (await r.content.readuntil(b"\n\n")).startswith(b"event: interaction.created\n")
    await asyncio.sleep(0.2)
    status, _, _ = await post(http, server, "/v1/interactions", {"model": "m"})
    assert status == 200


async def test_request_validation(http: Any, server: TestServer) -> None:
    status, _, raw = await post(http, server, "/v1/models/m:generateContent", {"contents": []})
    assert status == 400 and "contents" in json.loads(raw)["error"]["message"]
    status, _, _ = await post(http, server, "/v1/models/m:countTokens", {})
    assert status == 400
    status, _, _ = await post(
        http, server, "/v1/interactions", {"model": "m", "background": True, "store": False}
    )
    assert status == 400
    status, _, _ = await post(
        http,
        server,
        "/v1/models/m:generateContent",
        {"contents": [{"parts": [{"text": "x"}]}], "serviceTier": "gold"},
    )
    assert status == 400


async def test_config_pacing(aiohttp_server: Any, http: Any) -> None:
    config = EmulatorConfig(latency_seconds=0.1, chunk_delay_seconds=0.02)
    server = await aiohttp_server(create_emulator_app(config))
    started = time.monotonic()
    status, _, raw = await post(
        http,
        server,
        "/v1beta/models/m:streamGenerateContent?alt=sse",
        {"contents": [{"parts": [{"text": "pace me"}]}]},
    )
    chunks = parse_sse(raw, b"\r\n\r\n")
    assert status == 200
    assert time.monotonic() - started >= 0.1 + 0.02 * (len(chunks) - 1)
    # The header replaces the configured latency for one request.
    started = time.monotonic()
    await post(http, server, "/v1/interactions", {"model": "m"}, {"x-emulator-delay-ms": "0"})
    assert time.monotonic() - started < 0.1


async def test_stored_interactions_are_bounded(
    http: Any, server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(emulator_state, "MAX_STORED_INTERACTIONS", 2)
    ids = []
    for _ in range(3):
        _, _, raw = await post(http, server, "/v1/interactions", {"model": "m"})
        ids.append(json.loads(raw)["id"])
    assert list(server.app[emulator_state_key].interactions) == ids[1:]
    async with http.get(url(server, f"/v1/interactions/{ids[0]}"), headers=KEY) as r:
        assert r.status == 404


async def test_run_emulator_serves_until_cancelled(http: Any, unused_tcp_port_factory: Any) -> None:
    port = unused_tcp_port_factory()
    serving = asyncio.create_task(run_emulator("127.0.0.1", port, EmulatorConfig()))
    try:
        for _ in range(100):
            try:
                async with http.post(
                    f"http://127.0.0.1:{port}/v1/models/m:countTokens",
                    json={"contents": [{"parts": [{"text": "12345678"}]}]},
                    headers=KEY,
                ) as r:
                    assert await r.json() == {"totalTokens": 2}
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("the emulator never started")
    finally:
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"http://127.0.0.1:{port}/v1/interactions/x", headers=KEY):
            pass


async def test_sync_client_from_a_thread(server: TestServer) -> None:
    """The blocking SDK client (sync httpx) works too; it runs in a worker thread
    so the emulator keeps serving on this test's event loop."""

    def drive() -> tuple[Any, list[Any], Any]:
        with genai.Client(
            api_key="test-key", http_options=types.HttpOptions(base_url=str(server.make_url("")))
        ) as client:
            created = client.interactions.create(model=PLAIN_MODEL, input="Sync hello.")
            events = list(
                client.interactions.create(model=PLAIN_MODEL, input="Sync hello.", stream=True)
            )
            chunks = list(
                client.models.generate_content_stream(model=PLAIN_MODEL, contents="Sync hello.")
            )
            return created, events, chunks

    created, events, chunks = await asyncio.to_thread(drive)
    assert created.status == "completed"
    assert usage_totals(events[-1].interaction.usage) == usage_totals(created.usage)
    assert chunks[-1].usage_metadata.total_token_count == created.usage.total_tokens


# ----------------------------------------------------------------- cut streams, continuations

CONTINUED = {"model": PLAIN_MODEL, "input": "Hello there friend"}
# The answer 'Emulated reply from gemini-2.0-flash. You said: "Hello there
# friend".' is 69 characters; two continuations cut it into three hops of 23
# characters, 6 tokens each. The prompt is 18 characters, 5 tokens. Each hop
# re-prefills the context so far and reports the earlier prompt as cached:
# (input, cached, output, total) per hop.
CONTINUED_HOPS = [(5, 0, 6, 11), (11, 5, 6, 17), (17, 11, 6, 23)]


def hop_figures(usage: Any) -> tuple[int, int, int, int]:
    return (
        usage.total_input_tokens,
        usage.total_cached_tokens,
        usage.total_output_tokens,
        usage.total_tokens,
    )


async def test_continuations_by_hand(http: Any, server: TestServer) -> None:
    trigger = {"x-emulator-continuations": "2"}
    _, _, raw = await post(http, server, "/v1/interactions", CONTINUED, trigger)
    first = strict_interaction(json.loads(raw))
    assert first.status == "requires_continuation" and first.continuation_token
    assert hop_figures(first.usage) == CONTINUED_HOPS[0]

    hops, text = [first], first.output_text or ""
    while hops[-1].status == "requires_continuation":
        body = {
            "model": PLAIN_MODEL,
            "continuation_token": hops[-1].continuation_token,
            "previous_interaction_id": hops[-1].id,
        }
        status, _, raw = await post(http, server, "/v1/interactions", body)
        assert status == 200
        hop = strict_interaction(json.loads(raw))
        assert hop.id not in {h.id for h in hops}  # every hop is its own interaction
        assert hop.steps is not None
        assert [step.type for step in hop.steps] == ["model_output"]
        hops.append(hop)
        text += hop.output_text or ""
    assert [hop_figures(hop.usage) for hop in hops] == CONTINUED_HOPS
    assert [hop.status for hop in hops] == ["requires_continuation"] * 2 + ["completed"]
    assert text == 'Emulated reply from gemini-2.0-flash. You said: "Hello there friend".'

    # A token checked against its issuer, as the SDK's docs say the server does.
    for refused in (
        {"model": PLAIN_MODEL, "continuation_token": "ct_unknown"},
        {
            "model": PLAIN_MODEL,
            "continuation_token": first.continuation_token,
            "previous_interaction_id": hops[-1].id,
        },
    ):
        status, _, raw = await post(http, server, "/v1/interactions", refused)
        assert status == 400, raw
    for value in ("x", "-1", "9"):
        status, _, raw = await post(
            http, server, "/v1/interactions", CONTINUED, {"x-emulator-continuations": value}
        )
        assert status == 400 and "x-emulator-continuations" in json.loads(raw)["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_the_sdk_continues_automatically(aio: Any, stream: bool) -> None:
    if stream:
        events = [
            event
            async for event in await aio.interactions.create(
                **CONTINUED, stream=True, extra_headers={"x-emulator-continuations": "2"}
            )
        ]
        hops_seen = [e.interaction for e in events if e.event_type == "interaction.completed"]
        assert [hop.status for hop in hops_seen] == ["requires_continuation"] * 2 + ["completed"]
        assert [hop_figures(hop.usage) for hop in hops_seen] == CONTINUED_HOPS
        # every hop's stream indexes its own steps from 0
        starts = [e.index for e in events if e.event_type == "step.start"]
        assert starts == [0, 0, 0]
    else:
        merged = await aio.interactions.create(
            **CONTINUED, extra_headers={"x-emulator-continuations": "2"}
        )
        assert merged.status == "completed" and len(merged.continuation_ids) == 3
        # The SDK sums the hops' usage and keeps the first hop's input apart.
        assert hop_figures(merged.usage) == (33, 16, 18, 51)
        assert merged.usage.initial_input_tokens == 5
        assert merged.output_text.endswith('"Hello there friend".')


async def test_a_cut_stream_ends_mid_body(http: Any, server: TestServer) -> None:
    for path, body in (
        ("/v1/interactions", {**CONTINUED, "stream": True}),
        ("/v1/models/m:streamGenerateContent?alt=sse", {"contents": [{"parts": [{"text": "x"}]}]}),
    ):
        async with http.post(
            url(server, path), json=body, headers={**KEY, "x-emulator-cut-after": "2"}
        ) as r:
            assert r.status == 200
            received = b""
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in r.content.iter_any():
                    received += chunk
        # Two whole events and nothing after them: no completion, no "done".
        assert received.count(b"data: ") == 2
        assert b"interaction.completed" not in received and b"[DONE]" not in received
    status, _, raw = await post(
        http, server, "/v1/interactions", CONTINUED, {"x-emulator-cut-after": "?"}
    )
    assert status == 400 and "x-emulator-cut-after" in json.loads(raw)["error"]["message"]


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "defer_loading": True,
}
TOOL_SEARCH = [{"type": "tool_search"}, WEATHER, {"type": "function", "name": "always_loaded"}]


async def test_tool_search_loads_deferred_functions(http: Any, server: TestServer) -> None:
    request = {"model": PLAIN_MODEL, "input": "Weather in Paris?", "tools": TOOL_SEARCH}
    _, _, raw = await post(http, server, "/v1/interactions", request)
    interaction = strict_interaction(json.loads(raw))
    assert interaction.steps is not None
    assert [step.type for step in interaction.steps] == [
        "user_input",
        "tool_search_call",
        "tool_search_result",
        "model_output",
    ]
    call, result = interaction.steps[1], interaction.steps[2]
    assert isinstance(call, itypes.ToolSearchCallStep)
    assert isinstance(result, itypes.ToolSearchResultStep)
    assert call.arguments.function_names == ["get_weather"]  # only the deferred one
    assert result.call_id == call.id
    assert result.result is not None
    assert [function.name for function in result.result] == ["get_weather"]
    # The loaded definitions are fed to the model: tool-use input.
    usage = interaction_usage(interaction)
    assert usage.total_tool_use_tokens == tokens(json.dumps([WEATHER]))

    _, _, raw = await post(http, server, "/v1/interactions", {**request, "stream": True})
    events = parse_sse(raw)
    for event in events[:-1]:
        strict_event(event)
    starts = [
        (e["index"], e["step"]["type"]) for e in events[:-1] if e["event_type"] == "step.start"
    ]
    assert starts == [(0, "tool_search_call"), (1, "tool_search_result"), (2, "model_output")]
    final = events[-2]["interaction"]["usage"]
    assert final["total_tool_use_tokens"] == tokens(json.dumps([WEATHER]))


async def test_generate_content_continuations(http: Any, server: TestServer, aio: Any) -> None:
    path = f"/v1/models/{PLAIN_MODEL}:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "Hello there friend"}]}]}
    hops = []
    status, _, raw = await post(http, server, path, body, {"x-emulator-continuations": "2"})
    while True:
        assert status == 200
        hop = strict_generate(json.loads(raw))
        hops.append(hop)
        assert hop.candidates
        candidate = hop.candidates[0]
        if candidate.finish_reason != types.FinishReason.CONTINUATION:
            break
        # The token is proto bytes: base64 on the wire, sent back as it came.
        token = json.loads(raw)["candidates"][0]["continuationToken"]
        status, _, raw = await post(http, server, path, {**body, "continuationToken": token})
    usages = [
        (
            meta.prompt_token_count,
            meta.cached_content_token_count or 0,
            meta.candidates_token_count,
            meta.total_token_count,
        )
        for meta in map(usage_metadata, hops)
    ]
    assert usages == CONTINUED_HOPS  # the same hand-worked hops as the Interactions API
    assert "".join(h.text or "" for h in hops) == (
        'Emulated reply from gemini-2.0-flash. You said: "Hello there friend".'
    )
    status, _, _ = await post(http, server, path, {**body, "continuationToken": "bm9wZQ=="})
    assert status == 400

    # The SDK follows the tokens itself and adds the hops' usage up.
    merged = await aio.models.generate_content(
        model=PLAIN_MODEL,
        contents="Hello there friend",
        config=types.GenerateContentConfig(
            http_options=types.HttpOptions(headers={"x-emulator-continuations": "2"})
        ),
    )
    assert merged.usage_metadata.total_token_count == 11 + 17 + 23
    assert merged.text.endswith('"Hello there friend".')
