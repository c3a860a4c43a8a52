"""Embeddings end to end: the real google-genai SDK through the proxy, on both databases.

On the Developer API the SDK's ``models.embed_content`` always calls
``batchEmbedContents`` (one request per content); ``embedContent`` is called
here over raw HTTP. The emulator counts ``ceil(characters / 4)`` per content
(and 258 tokens per image); the proxy's estimate, used when a response has no
``usageMetadata``, counts ``ceil(characters / 4)`` per text part and no media.
Prices: gemini-embedding-001 $0.15 and gemini-embedding-2 $0.20 (text) /
$0.45 (image) per 1M input tokens. Every figure below is worked by hand.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal

from google.genai import types

from proxy.cli.demo import tiny_png
from proxy.server.typedefs import metrics_key
from tests.factories import Stack, metric_sum, raw

LIFE = "What is the meaning of life?"  # 28 characters
WOOD = "How much wood would a woodchuck chuck?"  # 38 characters
BRAIN = "How does the brain work?"  # 24 characters


def config(**headers: str) -> types.EmbedContentConfig:
    return types.EmbedContentConfig(
        output_dimensionality=4, http_options=types.HttpOptions(headers=headers)
    )


def metric(stack: Stack, name: str, **labels: str) -> float:
    return metric_sum(stack.app[metrics_key].registry, name, **labels)


async def test_sdk_one_content_with_reported_usage(stack: Stack):
    client = stack.sdk("alice")
    response = await client.aio.models.embed_content(
        model="gemini-embedding-001", contents=LIFE, config=config()
    )
    assert response.embeddings is not None and len(response.embeddings) == 1
    assert response.embeddings[0].values is not None and len(response.embeddings[0].values) == 4
    # the SDK parsed the same usage the record holds
    assert response.usage_metadata is not None
    assert response.usage_metadata.prompt_token_count == 7

    [record] = await stack.records()
    [seen] = list(stack.upstream.requests)
    # the API version is the SDK's choice; the method is what matters
    assert seen.path.endswith("/models/gemini-embedding-001:batchEmbedContents")
    assert record["endpoint"] == "batch_embed_contents"
    assert record["model"] == "gemini-embedding-001"
    assert record["user_id"] == await stack.user_id("alice")
    assert record["upstream_status"] == 200
    # 28 characters -> 7 tokens, input only
    assert record["input_tokens"] == record["total_tokens"] == 7
    assert record["output_tokens"] == record["thinking_tokens"] == record["cached_tokens"] == 0
    assert record["modalities"] == {"input": {"text": 7}}
    assert record["estimated"] is False
    assert record["parse_error"] is False
    assert record["unmetered_route"] is False
    # 7 x 0.15 / 1,000,000 = 0.00000105
    assert record["cost_usd"] == record["cost_input_usd"] == Decimal("0.00000105")
    assert record["cost_output_usd"] == 0
    assert metric(stack, "gemini_meter_tokens_total", type="input") == 7


async def test_sdk_several_contents_bill_the_upstreams_count_not_the_estimate(stack: Stack):
    client = stack.sdk("bob")
    two_parts = types.Content(parts=[types.Part(text="abcde"), types.Part(text="fgh")])
    response = await client.aio.models.embed_content(
        model="gemini-embedding-001", contents=[two_parts, LIFE, WOOD], config=config()
    )
    assert response.embeddings is not None and len(response.embeddings) == 3

    [record] = await stack.records()
    # the emulator: ceil(8 / 4) = 2, 7, ceil(38 / 4) = 10 -> 19
    # (the proxy's estimate would be 2 + 1 + 7 + 10 = 20: the record shows the upstream's)
    assert response.usage_metadata is not None
    assert response.usage_metadata.prompt_token_count == 19
    assert record["input_tokens"] == record["total_tokens"] == 19
    assert record["estimated"] is False
    assert record["user_id"] == await stack.user_id("bob")
    # 19 x 0.15 / 1,000,000 = 0.00000285
    assert record["cost_usd"] == Decimal("0.00000285")


async def test_sdk_without_usage_metadata_is_estimated(stack: Stack):
    client = stack.sdk("carol")
    response = await client.aio.models.embed_content(
        model="gemini-embedding-001",
        contents=[LIFE, WOOD, BRAIN],
        config=config(**{"x-emulator-usage": "missing"}),
    )
    assert response.embeddings is not None and len(response.embeddings) == 3
    assert response.usage_metadata is None

    [record] = await stack.records()
    # 28 -> 7, 38 -> ceil(9.5) = 10, 24 -> 6: 23 tokens, counted by the proxy
    assert record["input_tokens"] == record["total_tokens"] == 23
    assert record["estimated"] is True
    assert record["parse_error"] is False
    # 23 x 0.15 / 1,000,000 = 0.00000345
    assert record["cost_usd"] == Decimal("0.00000345")


async def test_embed_content_with_an_image(stack: Stack):
    body = {
        "model": "models/gemini-embedding-2",
        "content": {
            "parts": [
                {"text": "A red square"},  # 12 characters
                {
                    "inlineData": {
                        "mimeType": "image/png",
                        "data": base64.b64encode(tiny_png()).decode(),
                    }
                },
            ]
        },
    }
    url = stack.url("/v1beta/models/gemini-embedding-2:embedContent")
    status, _, answer = await raw("POST", url, headers=stack.headers(), json=body)
    assert status == 200
    assert json.loads(answer)["usageMetadata"]["promptTokenCount"] == 261
    status, _, answer = await raw(
        "POST", url, headers=stack.headers(**{"x-emulator-usage": "missing"}), json=body
    )
    assert status == 200 and "usageMetadata" not in json.loads(answer)

    reported, estimated = await stack.records()
    assert reported["endpoint"] == estimated["endpoint"] == "embed_content"
    assert reported["model"] == "gemini-embedding-2"
    # text ceil(12 / 4) = 3, image 258: 261 tokens
    assert reported["input_tokens"] == 261
    assert reported["modalities"] == {"input": {"text": 3, "image": 258}}
    # 3 x 0.20 + 258 x 0.45 = 0.6 + 116.1 = 116.7 per 1M -> 0.0001167
    assert reported["cost_usd"] == Decimal("0.0001167")
    assert reported["estimated"] is False
    # the estimate counts the text part only: 3 tokens, 3 x 0.20 / 1M = 0.0000006
    assert estimated["input_tokens"] == 3
    assert estimated["estimated"] is True
    assert estimated["cost_usd"] == Decimal("0.0000006")


async def test_malformed_usage_is_flagged_and_estimated(stack: Stack):
    status, _, _ = await raw(
        "POST",
        stack.url("/v1beta/models/gemini-embedding-001:batchEmbedContents"),
        headers=stack.headers(**{"x-emulator-usage": "malformed"}),
        json={"requests": [{"content": {"parts": [{"text": BRAIN}]}}]},
    )
    assert status == 200
    [record] = await stack.records()
    # 24 characters -> 6
    assert (record["input_tokens"], record["estimated"], record["parse_error"]) == (6, True, True)
    assert metric(stack, "gemini_meter_usage_parse_errors_total") == 1


async def test_an_upstream_error_is_recorded_with_zero_tokens(stack: Stack):
    status, _, body = await raw(
        "POST",
        stack.url("/v1beta/models/gemini-embedding-001:batchEmbedContents"),
        headers=stack.headers(**{"x-emulator-fail": "429"}),
        json={"requests": [{"content": {"parts": [{"text": LIFE}]}}]},
    )
    assert status == 429
    assert json.loads(body)["error"]["status"] == "RESOURCE_EXHAUSTED"
    [record] = await stack.records()
    assert record["upstream_status"] == 429
    assert record["input_tokens"] == record["total_tokens"] == 0
    assert record["estimated"] is False
    assert record["parse_error"] is False
