"""The emulator's embeddings endpoints, over raw HTTP and through the real SDK.

Expected shapes are Google's embeddings reference (``embedding`` /
``embeddings`` of ``{"values"}``, ``usageMetadata`` with ``promptTokenCount``
and ``promptTokenDetails``); expected counts are ``ceil(characters / 4)`` per
content and 258 tokens per image, worked by hand.
"""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from google import genai
from google.genai import types

from proxy.emulator import create_emulator_app

KEY = {"x-goog-api-key": "test-key"}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake image bytes").decode()


@pytest.fixture
async def server(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(create_emulator_app())  # type: ignore[no-any-return]


async def post(
    server: TestServer, path: str, body: object, **headers: str
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.make_url(path), json=body, headers={**KEY, **headers}) as response,
    ):
        return response.status, await response.json()


async def test_embed_content_shape_and_usage(server: TestServer):
    body = {
        "content": {
            "parts": [
                {"text": "abcde"},
                {"text": "fgh"},
                {"inlineData": {"mimeType": "image/png", "data": PNG}},
            ]
        },
        "outputDimensionality": 16,
    }
    status, answer = await post(server, "/v1beta/models/gemini-embedding-2:embedContent", body)
    assert status == 200
    assert set(answer) == {"embedding", "usageMetadata"}
    assert len(answer["embedding"]["values"]) == 16
    # text: ceil(8 / 4) = 2 (one rounding per content); image: 258
    assert answer["usageMetadata"] == {
        "promptTokenCount": 260,
        "promptTokenDetails": [
            {"modality": "TEXT", "tokenCount": 2},
            {"modality": "IMAGE", "tokenCount": 258},
        ],
    }
    # deterministic: the same content embeds the same
    _, again = await post(server, "/v1beta/models/gemini-embedding-2:embedContent", body)
    assert again == answer


async def test_batch_embed_contents_in_order_with_one_usage(server: TestServer):
    body = {
        "requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a" * 9}]}},
            {"content": {"parts": [{"text": "b" * 4}]}, "outputDimensionality": 2},
        ]
    }
    status, answer = await post(server, "/v1/models/gemini-embedding-001:batchEmbedContents", body)
    assert status == 200
    assert [len(e["values"]) for e in answer["embeddings"]] == [8, 2]
    assert answer["embeddings"][0] != answer["embeddings"][1]
    # ceil(9 / 4) = 3, ceil(4 / 4) = 1
    assert answer["usageMetadata"]["promptTokenCount"] == 4


@pytest.mark.parametrize(
    ("mode", "usage"), [("missing", None), ("malformed", {"promptTokenCount": "1"})]
)
async def test_the_usage_trigger(server: TestServer, mode: str, usage: object):
    body = {"content": {"parts": [{"text": "four"}]}}
    status, answer = await post(
        server,
        "/v1beta/models/gemini-embedding-001:embedContent",
        body,
        **{"x-emulator-usage": mode},
    )
    assert status == 200
    assert answer.get("usageMetadata") == usage
    assert "embedding" in answer


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/v1beta/models/m:embedContent", {}, "content"),
        ("/v1beta/models/m:embedContent", {"content": {}, "outputDimensionality": 0}, "outputDim"),
        ("/v1beta/models/m:batchEmbedContents", {"requests": []}, "requests"),
        (
            "/v1beta/models/m:batchEmbedContents",
            {"requests": [{"model": "models/other", "content": {}}]},
            "must match",
        ),
        ("/v1beta/models/m:batchEmbedContents", [1, 2], "object"),
    ],
)
async def test_invalid_requests_are_refused_in_geminis_shape(
    server: TestServer, path: str, body: object, fragment: str
):
    status, answer = await post(server, path, body)
    assert status == 400
    assert answer["error"]["code"] == 400
    assert answer["error"]["status"] == "INVALID_ARGUMENT"
    assert fragment in answer["error"]["message"]


async def test_the_sdk_reads_it(server: TestServer):
    async with aiohttp.ClientSession() as session:
        client = genai.Client(
            api_key="test-key",
            http_options=types.HttpOptions(
                base_url=str(server.make_url("")).rstrip("/"), aiohttp_client=session
            ),
        )
        try:
            response = await client.aio.models.embed_content(
                model="gemini-embedding-001",
                contents=["abcd", "abcdefgh"],
                config=types.EmbedContentConfig(output_dimensionality=3),
            )
        finally:
            await client.aio.aclose()
            client.close()
    assert response.embeddings is not None
    assert [len(e.values or []) for e in response.embeddings] == [3, 3]
    assert response.usage_metadata is not None
    # 1 + 2
    assert response.usage_metadata.prompt_token_count == 3
    # the Developer API's shape: no Vertex AI billable-character metadata
    assert response.metadata is None
