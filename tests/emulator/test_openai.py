"""The emulator's OpenAI-compatible endpoint, over raw HTTP, checked against the openai SDK's types.

Each body is validated by the SDK's own models (``openai`` 3.57.0), with no field they do
not know; counts are worked by hand: text ceil(characters / 4), an image 258 tokens, the
history cached, gemini-2.5-flash thinking 128 tokens, none for ``reasoning_effort: none``;
a generated Gemini image 1,290 output tokens.
"""

from __future__ import annotations

import array
import base64
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from openai.types import CreateEmbeddingResponse, ImagesResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from proxy.emulator import create_emulator_app
from proxy.emulator.openai import OpenAIServed, openai_ledger_key

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


# --- images -----------------------------------------------------------------------------

IMAGES = "/v1beta/openai/images/generations"
# Google's guide's example: 43 characters, ceil(43 / 4) = 11 tokens
SHEEPADOODLE = "a portrait of a sheepadoodle wearing a cape"


async def test_imagen_answers_n_images_and_no_usage(server: TestServer):
    body = {"model": "imagen-4.0-generate-001", "prompt": SHEEPADOODLE, "n": 3}
    status, _, answer = await post(server, IMAGES, {**body, "response_format": "b64_json"})
    assert status == 200
    response = strict(ImagesResponse, json.loads(answer))
    assert response.created > 0 and response.usage is None
    assert response.data is not None and len(response.data) == 3
    assert all(base64.b64decode(image.b64_json).startswith(b"\x89PNG") for image in response.data)
    # OpenAI's default n is 1; the filter leaves images out rather than marking them
    _, _, answer = await post(server, IMAGES, {**body, "n": 1})
    assert len(json.loads(answer)["data"]) == 1
    _, _, answer = await post(server, IMAGES, body, **{"x-emulator-filtered": "2"})
    assert len(json.loads(answer)["data"]) == 1
    assert [(s.images, s.filtered, s.image_tokens) for s in server.app[openai_ledger_key]] == [
        (3, 0, 0),
        (1, 0, 0),
        (1, 2, 0),
    ]


async def test_a_gemini_image_model_makes_one_image_and_reports_tokens(server: TestServer):
    body = {"model": "models/gemini-2.5-flash-image", "prompt": SHEEPADOODLE, "n": 2}
    asked = {**body, "stream": True, "size": "1024x1024"}
    status, _, answer = await post(server, IMAGES, asked, **{"x-emulator-usage": "present"})
    # stream is ignored (Google's guide: unlisted parameters are silently ignored)
    assert status == 200
    response = strict(ImagesResponse, json.loads(answer))
    assert response.data is not None and len(response.data) == 1
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (11, 1290)
    assert response.usage.total_tokens == 11 + 1290
    assert response.usage.input_tokens_details.text_tokens == 11
    assert response.usage.output_tokens_details is not None
    assert response.usage.output_tokens_details.image_tokens == 1290
    [served] = server.app[openai_ledger_key]
    assert served == OpenAIServed(
        route="images",
        id=served.id,
        model="gemini-2.5-flash-image",
        stream=False,
        include_usage=False,
        prompt_tokens=11,
        images=1,
        image_tokens=1290,
    )
    assert served.total_tokens == 1301


async def test_image_usage_triggers_and_a_filtered_gemini_image(server: TestServer):
    body = {"model": "gemini-3-pro-image-preview", "prompt": SHEEPADOODLE}
    _, _, default = await post(server, IMAGES, body)
    assert "usage" not in json.loads(default)  # none documented: none by default
    _, _, missing = await post(server, IMAGES, body, **{"x-emulator-usage": "missing"})
    assert "usage" not in json.loads(missing)
    _, _, malformed = await post(server, IMAGES, body, **{"x-emulator-usage": "malformed"})
    assert json.loads(malformed)["usage"]["output_tokens"] == -1290
    _, _, filtered = await post(
        server, IMAGES, body, **{"x-emulator-filtered": "1", "x-emulator-usage": "present"}
    )
    # no image, no image tokens; the prompt was still read
    assert json.loads(filtered)["data"] == []
    assert json.loads(filtered)["usage"]["output_tokens"] == 0
    assert [s.images for s in server.app[openai_ledger_key]] == [1, 1, 1, 0]


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({"prompt": SHEEPADOODLE}, {}),
        ({"model": "imagen-4.0-generate-001"}, {}),
        ({"model": "imagen-4.0-generate-001", "prompt": SHEEPADOODLE, "n": 5}, {}),
        ({"model": "imagen-4.0-generate-001", "prompt": SHEEPADOODLE, "n": "2"}, {}),
        (
            {"model": "imagen-4.0-generate-001", "prompt": SHEEPADOODLE},
            {"x-emulator-filtered": "2"},
        ),
    ],
)
async def test_image_refusals_are_googles_compat_error_shape(
    server: TestServer, body: object, headers: dict[str, str]
):
    status, _, answer = await post(server, IMAGES, body, **headers)
    assert status == 400
    [wrapped] = json.loads(answer)
    assert wrapped["error"]["status"] == "INVALID_ARGUMENT"
    assert server.app[openai_ledger_key] == []
