"""Embedding usage: the response's usageMetadata, else an estimate from the request.

Request bodies marked "Google's example" are the REST examples of Google's
embeddings reference (ai.google.dev/api/embeddings, from
google-gemini/api-examples ``rest/embed.sh``). The usage shape is the Developer
API's ``EmbeddingUsageMetadata`` (``promptTokenCount``, ``promptTokenDetails``
of ``{"modality", "tokenCount"}``), as client libraries generated from
Google's schema (googleai_dart's ``EmbeddingUsageMetadata``) spell it; Vertex
AI's ``UsageMetadata`` spells the list ``promptTokensDetails``.
Estimates: ``ceil(characters / 4)`` per text part, worked by hand below.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.metering.parsers import (
    ResponseSummary,
    UsageParseError,
    estimate_embed_usage,
    summarize_embed,
    usage_from_any,
    usage_from_embed,
)
from proxy.metering.records import Usage

# Google's example embedContent body: "What is the meaning of life?" is 28 characters -> 7.
EMBED_EXAMPLE = {
    "model": "models/gemini-embedding-001",
    "content": {"parts": [{"text": "What is the meaning of life?"}]},
}
# Google's example batchEmbedContents body:
#   "What is the meaning of life?"            28 characters -> 7
#   "How much wood would a woodchuck chuck?"  38 characters -> ceil(9.5) = 10
#   "How does the brain work?"                24 characters -> 6
#   total 23
BATCH_EXAMPLE = {
    "requests": [
        {
            "model": "models/gemini-embedding-001",
            "content": {"parts": [{"text": "What is the meaning of life?"}]},
        },
        {
            "model": "models/gemini-embedding-001",
            "content": {"parts": [{"text": "How much wood would a woodchuck chuck?"}]},
        },
        {
            "model": "models/gemini-embedding-001",
            "content": {"parts": [{"text": "How does the brain work?"}]},
        },
    ]
}


def text_usage(tokens: int) -> Usage:
    return Usage(input_tokens=tokens, total_tokens=tokens, input_by_modality={"text": tokens})


def test_developer_api_usage_metadata():
    usage = usage_from_embed(
        {
            "promptTokenCount": 15,
            "promptTokenDetails": [
                {"modality": "TEXT", "tokenCount": 10},
                {"modality": "IMAGE", "tokenCount": 5},
            ],
        }
    )
    assert usage == Usage(
        input_tokens=15, total_tokens=15, input_by_modality={"text": 10, "image": 5}
    )
    # embeddings bill input only
    assert usage.output_tokens == usage.thinking_tokens == usage.cached_tokens == 0
    assert not usage.total_mismatch


@pytest.mark.parametrize(
    "raw",
    [
        # Vertex AI / the SDK's UsageMetadata spelling
        {"promptTokenCount": 7, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 7}]},
        # the Python SDK's to_json_dict
        {"prompt_token_count": 7, "prompt_token_details": [{"modality": "TEXT", "token_count": 7}]},
        {"promptTokenCount": 7, "totalTokenCount": 7, "promptTokenDetails": [{"tokenCount": 7}]},
    ],
)
def test_other_spellings(raw: dict[str, object]):
    assert usage_from_embed(raw) == text_usage(7)


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"promptTokenCount": "7"},
        {"promptTokenCount": -1},
        {"promptTokenCount": True},
        {"promptTokenCount": 7, "promptTokenDetails": {"modality": "TEXT"}},
        {"promptTokenCount": 7, "totalTokenCount": 7.0},
    ],
)
def test_malformed_usage_is_refused(raw: object):
    with pytest.raises(UsageParseError):
        usage_from_embed(raw)


def test_the_price_cli_reads_embedding_usage():
    details = {
        "promptTokenCount": 15,
        "promptTokenDetails": [
            {"modality": "TEXT", "tokenCount": 10},
            {"modality": "IMAGE", "tokenCount": 5},
        ],
    }
    expected = Usage(input_tokens=15, total_tokens=15, input_by_modality={"text": 10, "image": 5})
    assert usage_from_any(details) == expected
    assert usage_from_any({"embeddings": [{"values": [0.1]}], "usageMetadata": details}) == expected
    # a bare promptTokenCount in an embeddings response: input only, the total is the input
    assert usage_from_any({"embedding": {}, "usageMetadata": {"promptTokenCount": 4}}) == Usage(
        input_tokens=4, total_tokens=4
    )


def test_estimate_of_googles_examples():
    assert estimate_embed_usage(EMBED_EXAMPLE) == text_usage(7)
    assert estimate_embed_usage(BATCH_EXAMPLE) == text_usage(23)


def test_estimate_rounds_up_per_text_part():
    # "abcde" -> ceil(5/4) = 2, "fgh" -> ceil(3/4) = 1, "" -> 0: 3 (one rounding over the
    # 8 characters would give 2)
    body = {"content": {"parts": [{"text": "abcde"}, {"text": "fgh"}, {"text": ""}]}}
    assert estimate_embed_usage(body) == text_usage(3)


def test_estimate_counts_characters_not_bytes():
    # "héllo wörld" is 11 characters (13 bytes in UTF-8) -> 3
    assert estimate_embed_usage({"content": {"parts": [{"text": "héllo wörld"}]}}) == text_usage(3)


def test_estimate_ignores_media_parts_and_odd_items():
    # only parts[].text is counted: 12 characters -> 3
    body = {
        "requests": [
            {
                "content": {
                    "parts": [
                        {"inlineData": {"mimeType": "image/png", "data": "AAAA" * 100}},
                        {"text": "twelve chars"},
                        "not a part",
                        {"text": 42},
                    ]
                },
                "title": "a title is not counted",
            },
            "not a request",
            {"content": "not a content"},
            {"content": {"parts": "not a list"}},
        ]
    }
    assert estimate_embed_usage(body) == text_usage(3)
    # media only: an estimate of zero, not a missing one
    image = {"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "AA"}}]}}
    assert estimate_embed_usage(image) == Usage()


@pytest.mark.parametrize("body", [None, [], "text", {}, {"requests": "x"}, {"contents": []}])
def test_nothing_to_estimate_from(body: object):
    assert estimate_embed_usage(body) is None


def test_reported_usage_wins_over_the_estimate():
    response = {
        "embeddings": [{"values": [0.1]}, {"values": [0.2]}, {"values": [0.3]}],
        "usageMetadata": {
            "promptTokenCount": 21,
            "promptTokenDetails": [{"modality": "TEXT", "tokenCount": 21}],
        },
    }
    summary = summarize_embed(response, BATCH_EXAMPLE)
    assert summary.usage == text_usage(21)
    assert summary.estimated is False
    assert summary.parse_error is False


def test_documented_response_without_usage_is_estimated():
    # Google's reference of BatchEmbedContentsResponse before usageMetadata: embeddings only
    response = {"embeddings": [{"values": [0.1, 0.2]}] * 3}
    summary = summarize_embed(response, BATCH_EXAMPLE)
    assert summary.usage == text_usage(23)
    assert summary.estimated is True
    assert summary.parse_error is False
    single = summarize_embed({"embedding": {"values": [0.5]}}, EMBED_EXAMPLE)
    assert (single.usage, single.estimated, single.parse_error) == (text_usage(7), True, False)


def test_usage_without_a_count_is_estimated():
    summary = summarize_embed({"embedding": {}, "usageMetadata": {}}, EMBED_EXAMPLE)
    assert (summary.usage, summary.estimated, summary.parse_error) == (text_usage(7), True, False)


@pytest.mark.parametrize(
    "response",
    [
        {"embedding": {}, "usageMetadata": {"promptTokenCount": "7"}},
        {"embedding": {}, "usageMetadata": "seven"},
        ["not", "an", "object"],
        None,
    ],
)
def test_malformed_responses_are_flagged_and_estimated(response: object):
    summary = summarize_embed(response, EMBED_EXAMPLE)
    assert summary.usage == text_usage(7)
    assert summary.estimated is True
    assert summary.parse_error is True


def test_no_usage_and_no_readable_request():
    summary = summarize_embed({"embedding": {}}, None)
    assert summary.usage is None
    assert summary.parse_error is True
    assert summary.estimated is False


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "content",
                    "requests",
                    "parts",
                    "text",
                    "usageMetadata",
                    "promptTokenCount",
                    "promptTokenDetails",
                    "modality",
                    "tokenCount",
                    "embedding",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@given(JSON, JSON)
def test_embed_summary_never_raises_and_never_loses_usage_it_can_count(
    response: object, request: object
) -> None:
    summary = summarize_embed(response, request)
    assert isinstance(summary, ResponseSummary)
    # either a usage, or a flagged absence of one
    assert summary.usage is not None or summary.parse_error
    if summary.usage is not None:
        assert summary.usage.input_tokens >= 0
        assert summary.usage.output_tokens == 0
    if summary.estimated:
        assert summary.usage == estimate_embed_usage(request)
