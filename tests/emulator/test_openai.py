"""The emulator's OpenAI-compatible endpoint, over raw HTTP, checked against the openai SDK's types.

Each body is validated by the SDK's own models (``openai`` 3.57.0), with no field they do
not know; counts are worked by hand: text ceil(characters / 4), an image 258 tokens, the
history cached, gemini-2.5-flash thinking 128 tokens, none for ``reasoning_effort: none``.
"""

from __future__ import annotations

import array
import base64
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from proxy.emulator import create_emulator_app
from proxy.emulator.openai import openai_ledger_key

BEARER = {"Authorization": "Bearer test-key"}
CHAT = "/v1beta/openai/chat/completions"
ANSWER = 'Emulated reply from gemini-2.5-flash. You said: "Hello there".'  # 62 chars: 16


@pytest.fixture
async def server(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(create_emulator_app())  # type: ignore[no-any-return]


async def post(
    server: TestServer, path: str, body: object, **headers: str
) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.make_url(path), json=body, headers={**BEARER, **headers}) as response,
    ):
        return response.status, response.headers.get("Content-Type", ""), await response.read()


def strict(model: type[BaseModel], value: object) -> Any:
    """``value`` as the SDK's model, refusing any field the model does not declare."""
    parsed = model.model_validate(value)
    assert not (parsed.model_extra or {}), sorted(parsed.model_extra or {})
    return parsed


def events(body: bytes) -> list[bytes]:
    out = [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e]
    assert out[-1] == b"[DONE]"
    return out[:-1]


MESSAGES = [
    {"role": "system", "content": "Be brief."},  # 9 characters: 3 tokens, cached
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Hello there"},  # 11 characters: 3 tokens
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},  # 258
        ],
    },
]


async def test_chat_completion_shape_and_usage(server: TestServer):
    status, _, body = await post(
        server, CHAT, {"model": "models/gemini-2.5-flash", "messages": MESSAGES}
    )
    assert status == 200
    completion = strict(ChatCompletion, json.loads(body))
    assert completion.object == "chat.completion"
    assert completion.model == "gemini-2.5-flash"
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    # prompt 3 + 3 + 258 = 264 (3 cached); completion 16; total 264 + 16 + 128 thoughts
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (264, 16, 408)
    assert usage.prompt_tokens_details.cached_tokens == 3
    assert usage.completion_tokens_details is None
    [served] = server.app[openai_ledger_key]
    assert (served.id, served.total_tokens, served.stream) == (completion.id, 408, False)


async def test_openais_convention_and_reasoning_effort(server: TestServer):
    body = {"model": "gemini-2.5-flash", "messages": MESSAGES, "reasoning_effort": "high"}
    _, _, answer = await post(server, CHAT, body, **{"x-emulator-openai-usage": "openai"})
    usage = strict(ChatCompletion, json.loads(answer)).usage
    # high: 256 thoughts, counted inside completion_tokens: 16 + 256
    assert (usage.completion_tokens, usage.total_tokens) == (272, 264 + 272)
    assert usage.completion_tokens_details.reasoning_tokens == 256
    _, _, answer = await post(server, CHAT, {**body, "reasoning_effort": "none"})
    assert json.loads(answer)["usage"]["total_tokens"] == 264 + 16


async def test_stream_framing_with_and_without_usage(server: TestServer):
    body = {"model": "gemini-2.5-flash", "messages": MESSAGES, "stream": True}
    status, content_type, answer = await post(server, CHAT, body)
    assert status == 200 and content_type.startswith("text/event-stream")
    chunks = [strict(ChatCompletionChunk, json.loads(e)) for e in events(answer)]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert len({c.id for c in chunks}) == 1

    asked = {**body, "stream_options": {"include_usage": True}}
    _, _, answer = await post(server, CHAT, asked)
    *content, last = [strict(ChatCompletionChunk, json.loads(e)) for e in events(answer)]
    assert len(content) == len(chunks)
    assert last.choices == [] and last.usage.total_tokens == 408
    ledger = server.app[openai_ledger_key]
    assert [(s.stream, s.include_usage) for s in ledger] == [(True, False), (True, True)]


async def test_running_usage_on_every_chunk(server: TestServer):
    body = {"model": "gemini-2.5-flash", "messages": MESSAGES, "stream": True}
    _, _, answer = await post(server, CHAT, body, **{"x-emulator-openai-usage": "every-chunk"})
    chunks = [strict(ChatCompletionChunk, json.loads(e)) for e in events(answer)]
    completions = [c.usage.completion_tokens for c in chunks]
    # running totals that end on the whole answer's 16; never a usage-only chunk
    assert completions == sorted(completions) and completions[-1] == 16
    assert all(c.choices for c in chunks)
    assert {c.usage.total_tokens - c.usage.completion_tokens for c in chunks} == {264 + 128}


async def test_usage_triggers(server: TestServer):
    body = {"model": "gemini-2.5-flash", "messages": MESSAGES}
    _, _, missing = await post(server, CHAT, body, **{"x-emulator-usage": "missing"})
    assert "usage" not in json.loads(missing)
    _, _, malformed = await post(server, CHAT, body, **{"x-emulator-usage": "malformed"})
    assert json.loads(malformed)["usage"]["prompt_tokens"] == "many"
    status, _, typo = await post(server, CHAT, body, **{"x-emulator-openai-usage": "al-chunk"})
    assert status == 400 and b"x-emulator-openai-usage" in typo


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"model": "gemini-2.5-flash", "messages": []},
        {"model": "gemini-2.5-flash", "messages": [{"content": "no role"}]},
        {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": [{"type": "x"}]}]},
        {
            "model": "gemini-2.5-flash",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 0,
        },
    ],
)
async def test_refusals_are_googles_compat_error_shape(server: TestServer, body: object):
    status, _, answer = await post(server, CHAT, body)
    assert status == 400
    [wrapped] = json.loads(answer)
    assert wrapped["error"]["code"] == 400
    assert wrapped["error"]["status"] == "INVALID_ARGUMENT"
    assert server.app[openai_ledger_key] == []


async def test_max_tokens_cuts_the_answer(server: TestServer):
    body = {"model": "gemini-2.5-flash", "messages": MESSAGES, "max_tokens": 5}
    _, _, answer = await post(server, CHAT, body)
    completion = strict(ChatCompletion, json.loads(answer))
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == ANSWER[:20]
    assert completion.usage.completion_tokens == 5


async def test_embeddings_float_and_base64(server: TestServer):
    body = {"model": "gemini-embedding-001", "input": ["abcde", "fgh"], "dimensions": 4}
    status, _, answer = await post(server, "/v1beta/openai/embeddings", body)
    assert status == 200
    floats = strict(CreateEmbeddingResponse, json.loads(answer))
    assert floats.object == "list" and floats.model == "gemini-embedding-001"
    assert [(d.index, len(d.embedding)) for d in floats.data] == [(0, 4), (1, 4)]
    # ceil(5 / 4) + ceil(3 / 4) = 2 + 1
    assert (floats.usage.prompt_tokens, floats.usage.total_tokens) == (3, 3)

    _, _, answer = await post(
        server, "/v1beta/openai/embeddings", {**body, "encoding_format": "base64"}
    )
    encoded = json.loads(answer)["data"]
    # the same vectors, as little-endian float32s
    decoded = [array.array("f", base64.b64decode(d["embedding"])).tolist() for d in encoded]
    for got, want in zip(decoded, [d.embedding for d in floats.data], strict=True):
        assert got == pytest.approx(want, rel=1e-6)
    status, _, _ = await post(server, "/v1beta/openai/embeddings", {**body, "input": []})
    assert status == 400


async def test_the_key_may_be_a_bearer_token_but_is_required(server: TestServer):
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.make_url(CHAT), json={"model": "m", "messages": []}) as response,
    ):
        assert response.status == 401
    assert server.app[openai_ledger_key] == []
