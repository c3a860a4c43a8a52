"""Usage parsers and whole-response summaries (``proxy.metering.parsers``).

Every wire-shaped object here is checked against the google-genai SDK's own
pydantic models first, so the field names are the API's, not ours.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest
from google.genai import interactions as gi
from google.genai import types as gt
from hypothesis import given
from hypothesis import strategies as st

from proxy.metering.parsers import (
    PENDING,
    TERMINAL,
    GenerateAccumulator,
    ResponseSummary,
    UsageParseError,
    count_code_execution_steps,
    parse_json,
    summarize_generate,
    summarize_interaction,
    usage_due,
    usage_from_any,
    usage_from_generate,
    usage_from_interaction,
)
from proxy.metering.records import Usage
from tests.factories import assert_strict

FIXTURES = Path(__file__).parents[1] / "fixtures" / "streams"
RECORDED = Path(__file__).parents[1] / "fixtures" / "recorded"


def sdk_usage(obj: dict[str, Any]) -> dict[str, Any]:
    """Validate an Interactions usage object with the SDK; return it unchanged."""
    assert_strict(gi.Usage.model_validate(obj))
    return obj


def sdk_interaction(obj: dict[str, Any]) -> dict[str, Any]:
    assert_strict(gi.Interaction.model_validate(obj))
    return obj


def sdk_generate(obj: dict[str, Any]) -> dict[str, Any]:
    # GenerateContentResponse forbids extra fields: validation is the check.
    gt.GenerateContentResponse.model_validate(obj)
    return obj


# --- Interactions usage ------------------------------------------------------------------

FULL_INTERACTION_USAGE = {
    "total_input_tokens": 5230,
    "total_cached_tokens": 4096,
    "total_tool_use_tokens": 812,
    "total_output_tokens": 640,
    "total_thought_tokens": 1377,
    "total_tokens": 8059,
    "initial_input_tokens": 5230,
    "input_tokens_by_modality": [
        {"modality": "text", "tokens": 1362},
        {"modality": "image", "tokens": 1032},
        {"modality": "audio", "tokens": 2836},
    ],
    "cached_tokens_by_modality": [
        {"modality": "text", "tokens": 1060},
        {"modality": "audio", "tokens": 3036},
    ],
    "tool_use_tokens_by_modality": [{"modality": "text", "tokens": 812}],
    "output_tokens_by_modality": [{"modality": "text", "tokens": 640}],
    "grounding_tool_count": [
        {"type": "google_search", "count": 3},
        {"type": "google_maps", "count": 1},
    ],
}


def test_interaction_usage_maps_every_category() -> None:
    usage = usage_from_interaction(sdk_usage(FULL_INTERACTION_USAGE))
    assert usage == Usage(
        input_tokens=5230,
        cached_tokens=4096,
        intermediate_tokens=812,
        output_tokens=640,
        thinking_tokens=1377,
        total_tokens=8059,
        input_by_modality={"text": 1362, "image": 1032, "audio": 2836},
        cached_by_modality={"text": 1060, "audio": 3036},
        intermediate_by_modality={"text": 812},
        output_by_modality={"text": 640},
        grounding={"google_search": 3, "google_maps": 1},
    )
    assert not usage.total_mismatch


def test_interaction_usage_from_the_sdks_own_dump() -> None:
    # What a Python client would log: the SDK model dumped back to JSON.
    dumped = gi.Usage.model_validate(FULL_INTERACTION_USAGE).model_dump(mode="json")
    assert usage_from_interaction(dumped) == usage_from_interaction(FULL_INTERACTION_USAGE)


def test_interaction_usage_missing_fields_are_zero() -> None:
    assert usage_from_interaction(sdk_usage({})) == Usage()
    usage = usage_from_interaction(sdk_usage({"total_input_tokens": 7, "total_tokens": 7}))
    assert usage == Usage(input_tokens=7, total_tokens=7)


def test_interaction_usage_nulls_are_zero() -> None:
    assert usage_from_interaction({"total_output_tokens": None, "total_tokens": 3}) == Usage(
        total_tokens=3
    )


def test_interaction_modality_details() -> None:
    usage = usage_from_interaction(
        sdk_usage(
            {
                "input_tokens_by_modality": [
                    {"tokens": 10},  # modality omitted: proto3's unspecified, i.e. text
                    {"modality": "text", "tokens": 5},  # repeated: added up
                    {"modality": "video"},  # tokens omitted: zero
                    {"modality": "document", "tokens": 12},
                ]
            }
        )
    )
    assert usage.input_by_modality == {"text": 15, "video": 0, "document": 12}


def test_interaction_grounding_details() -> None:
    usage = usage_from_interaction(
        sdk_usage(
            {
                "grounding_tool_count": [
                    {"type": "google_search", "count": 2},
                    {"type": "google_search", "count": 1},
                    {"type": "retrieval"},
                    {"count": 4},
                ]
            }
        )
    )
    assert usage.grounding == {"google_search": 3, "retrieval": 0, "unspecified": 4}


def test_total_mismatch_is_not_malformed() -> None:
    usage = usage_from_interaction({"total_input_tokens": 10, "total_tokens": 99})
    assert usage.total_tokens == 99
    assert usage.total_mismatch


MALFORMED_INTERACTION = [
    pytest.param([], id="not-an-object"),
    pytest.param("usage", id="a-string"),
    pytest.param(None, id="null"),
    pytest.param({"total_input_tokens": "12"}, id="count-string"),
    pytest.param({"total_input_tokens": 12.0}, id="count-float"),
    pytest.param({"total_input_tokens": True}, id="count-bool"),
    pytest.param({"total_output_tokens": -1}, id="count-negative"),
    pytest.param({"total_tokens": [1]}, id="count-list"),
    pytest.param({"input_tokens_by_modality": {"text": 3}}, id="modalities-dict"),
    pytest.param({"input_tokens_by_modality": [3]}, id="modality-item-int"),
    pytest.param({"output_tokens_by_modality": [{"modality": 1, "tokens": 3}]}, id="modality-int"),
    pytest.param(
        {"cached_tokens_by_modality": [{"modality": "text", "tokens": False}]}, id="mbool"
    ),
    pytest.param({"tool_use_tokens_by_modality": [{"tokens": -3}]}, id="modality-negative"),
    pytest.param({"grounding_tool_count": {"google_search": 1}}, id="grounding-dict"),
    pytest.param({"grounding_tool_count": [{"type": 3, "count": 1}]}, id="grounding-type-int"),
    pytest.param({"grounding_tool_count": [{"type": "google_search", "count": "1"}]}, id="gcount"),
]


@pytest.mark.parametrize("raw", MALFORMED_INTERACTION)
def test_malformed_interaction_usage_raises(raw: object) -> None:
    with pytest.raises(UsageParseError):
        usage_from_interaction(raw)


def test_parse_error_message_does_not_echo_wire_values() -> None:
    with pytest.raises(UsageParseError) as info:
        usage_from_interaction({"total_input_tokens": "secret-looking-value"})
    assert "total_input_tokens" in str(info.value)
    assert "secret" not in str(info.value)


# --- generateContent usage ---------------------------------------------------------------

FULL_GENERATE_USAGE = {
    "promptTokenCount": 5230,
    "cachedContentTokenCount": 4096,
    "toolUsePromptTokenCount": 812,
    "candidatesTokenCount": 640,
    "thoughtsTokenCount": 1377,
    "totalTokenCount": 8059,
    "promptTokensDetails": [
        {"modality": "TEXT", "tokenCount": 1362},
        {"modality": "IMAGE", "tokenCount": 1032},
        {"modality": "AUDIO", "tokenCount": 2836},
    ],
    "cacheTokensDetails": [
        {"modality": "TEXT", "tokenCount": 1060},
        {"modality": "AUDIO", "tokenCount": 3036},
    ],
    "toolUsePromptTokensDetails": [{"modality": "TEXT", "tokenCount": 812}],
    "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 640}],
    "trafficType": "ON_DEMAND",
}


def test_generate_usage_maps_every_category() -> None:
    sdk_generate({"usageMetadata": FULL_GENERATE_USAGE})
    usage = usage_from_generate(FULL_GENERATE_USAGE)
    assert usage == Usage(
        input_tokens=5230,
        cached_tokens=4096,
        intermediate_tokens=812,
        output_tokens=640,
        thinking_tokens=1377,
        total_tokens=8059,
        input_by_modality={"text": 1362, "image": 1032, "audio": 2836},
        cached_by_modality={"text": 1060, "audio": 3036},
        intermediate_by_modality={"text": 812},
        output_by_modality={"text": 640},
    )
    # Same numbers as the Interactions object above: the two shapes meet in Usage.
    assert usage == usage_from_interaction(
        {k: v for k, v in FULL_INTERACTION_USAGE.items() if k != "grounding_tool_count"}
    )


def test_generate_usage_snake_case_from_the_sdk() -> None:
    # GenerateContentResponse.to_json_dict(), as a Python client would store it.
    response = gt.GenerateContentResponse.model_validate({"usageMetadata": FULL_GENERATE_USAGE})
    snake = response.to_json_dict()["usage_metadata"]
    assert isinstance(snake, dict)
    assert "prompt_token_count" in snake
    assert "token_count" in snake["prompt_tokens_details"][0]
    assert usage_from_generate(snake) == usage_from_generate(FULL_GENERATE_USAGE)


def test_generate_usage_missing_fields_are_zero() -> None:
    assert usage_from_generate({}) == Usage()
    usage = usage_from_generate(
        sdk_generate({"usageMetadata": {"promptTokenCount": 9}})["usageMetadata"]
    )
    assert usage == Usage(input_tokens=9)


def test_generate_modality_names() -> None:
    details = [
        {"modality": "MODALITY_UNSPECIFIED", "tokenCount": 2},  # "treated as TEXT" (SDK docs)
        {"tokenCount": 3},
        {"modality": "TEXT", "tokenCount": 4},
        {"modality": "VIDEO", "tokenCount": 5},
        {"modality": "DOCUMENT"},
    ]
    sdk_generate({"usageMetadata": {"promptTokensDetails": details}})
    usage = usage_from_generate({"promptTokensDetails": details})
    assert usage.input_by_modality == {"text": 9, "video": 5, "document": 0}


MALFORMED_GENERATE = [
    pytest.param(["promptTokenCount"], id="not-an-object"),
    pytest.param({"promptTokenCount": "12"}, id="count-string"),
    pytest.param({"candidatesTokenCount": 1.5}, id="count-float"),
    pytest.param({"thoughtsTokenCount": True}, id="count-bool"),
    pytest.param({"totalTokenCount": -4}, id="count-negative"),
    pytest.param({"prompt_token_count": "4"}, id="snake-count-string"),
    pytest.param({"promptTokensDetails": "TEXT"}, id="details-string"),
    pytest.param({"promptTokensDetails": [None]}, id="details-item-null"),
    pytest.param(
        {"candidatesTokensDetails": [{"modality": ["TEXT"], "tokenCount": 1}]}, id="mlist"
    ),
    pytest.param({"cacheTokensDetails": [{"modality": "TEXT", "tokenCount": "1"}]}, id="mstring"),
]


@pytest.mark.parametrize("raw", MALFORMED_GENERATE)
def test_malformed_generate_usage_raises(raw: object) -> None:
    with pytest.raises(UsageParseError):
        usage_from_generate(raw)


# --- either shape (the price CLI) ----------------------------------------------------------


def test_usage_from_any_detects_the_shape() -> None:
    expected = usage_from_generate(FULL_GENERATE_USAGE)
    assert usage_from_any(FULL_INTERACTION_USAGE) == usage_from_interaction(FULL_INTERACTION_USAGE)
    assert usage_from_any(FULL_GENERATE_USAGE) == expected
    snake = gt.GenerateContentResponseUsageMetadata.model_validate(
        FULL_GENERATE_USAGE
    ).to_json_dict()
    assert usage_from_any(snake) == expected
    assert usage_from_any({"total_tokens": 5}) == Usage(total_tokens=5)
    assert usage_from_any({"totalTokenCount": 5}) == Usage(total_tokens=5)
    assert usage_from_any({}) == Usage()


def test_usage_from_any_accepts_whole_responses() -> None:
    interaction = sdk_interaction(
        {"id": "v1_abc", "status": "completed", "usage": FULL_INTERACTION_USAGE}
    )
    assert usage_from_any(interaction) == usage_from_interaction(FULL_INTERACTION_USAGE)
    search = json.loads((FIXTURES / "generate_search.json").read_bytes())
    usage = usage_from_any(sdk_generate(search))
    assert usage.grounding == {"google_search": 2}
    assert usage.input_tokens == 12


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"total_tokens": 5, "totalTokenCount": 5}, id="both-shapes"),
        pytest.param({"tokens": 5}, id="neither-shape"),
        pytest.param([{"total_tokens": 5}], id="a-list"),
        pytest.param(5, id="a-number"),
        pytest.param({"total_tokens": "5"}, id="malformed-interaction"),
        pytest.param({"usage": {"total_tokens": -1}}, id="malformed-wrapped"),
    ],
)
def test_usage_from_any_rejects(raw: object) -> None:
    with pytest.raises(UsageParseError):
        usage_from_any(raw)


# --- Interaction summaries ---------------------------------------------------------------


def code_execution_interaction(**overrides: Any) -> dict[str, Any]:
    interaction: dict[str, Any] = {
        "id": "v1_ChdnbWV0ZXItMDAx",
        "status": "completed",
        "model": "gemini-3-flash-preview",
        "service_tier": "flex",
        "created": "2026-05-09T07:35:25Z",
        "updated": "2026-05-09T07:35:41Z",
        "steps": [
            {"type": "user_input", "content": [{"type": "text", "text": "mean of 1,2,'x'?"}]},
            {"type": "thought", "signature": "c2ln"},
            {
                "type": "code_execution_call",
                "id": "call_1",
                "arguments": {"code": "print(sum([1, 2, 'x']))", "language": "python"},
            },
            {
                "type": "code_execution_result",
                "call_id": "call_1",
                "result": "TypeError: unsupported operand",
                "is_error": True,
            },
            {
                "type": "code_execution_call",
                "id": "call_2",
                "arguments": {"code": "print(sum([1, 2]) / 2)", "language": "python"},
            },
            {"type": "code_execution_result", "call_id": "call_2", "result": "1.5\n"},
            {"type": "model_output", "content": [{"type": "text", "text": "It is 1.5."}]},
        ],
        "usage": FULL_INTERACTION_USAGE,
    }
    interaction.update(overrides)
    return sdk_interaction({k: v for k, v in interaction.items() if v is not None})


def test_summarize_completed_interaction() -> None:
    summary = summarize_interaction(code_execution_interaction())
    assert summary == ResponseSummary(
        usage=usage_from_interaction(FULL_INTERACTION_USAGE),
        interaction_id="v1_ChdnbWV0ZXItMDAx",
        status="completed",
        model="gemini-3-flash-preview",
        service_tier="flex",
        code_execution_calls=2,
        code_execution_errors=1,
    )


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_terminal_interaction_without_usage_is_a_parse_error(status: str) -> None:
    summary = summarize_interaction(code_execution_interaction(status=status, usage=None))
    assert summary.parse_error
    assert summary.usage is None
    assert summary.status == status
    assert summary.code_execution_calls == 2


@pytest.mark.parametrize("status", sorted(PENDING))
def test_pending_interaction_without_usage_is_fine(status: str) -> None:
    summary = summarize_interaction(code_execution_interaction(status=status, usage=None))
    assert not summary.parse_error
    assert summary.usage is None


def test_pending_interaction_reports_its_usage_snapshot() -> None:
    summary = summarize_interaction(code_execution_interaction(status="in_progress"))
    assert summary.usage is not None
    assert not summary.parse_error


def test_unknown_or_missing_status_expects_usage() -> None:
    assert usage_due("some_future_status")
    assert usage_due(None)
    assert summarize_interaction({"id": "v1_x", "status": "some_future_status"}).parse_error
    assert summarize_interaction({"id": "v1_x"}).parse_error


def test_malformed_interaction_usage_is_a_parse_error() -> None:
    summary = summarize_interaction(
        {"id": "v1_x", "status": "completed", "usage": {"total_tokens": -5}}
    )
    assert summary.parse_error
    assert summary.usage is None
    assert summary.interaction_id == "v1_x"


@pytest.mark.parametrize("body", [None, [], "completed", 3, True])
def test_non_object_interaction_is_a_parse_error(body: object) -> None:
    assert summarize_interaction(body) == ResponseSummary(parse_error=True)


def test_interaction_odd_field_types_are_ignored() -> None:
    summary = summarize_interaction(
        {
            "id": 5,
            "status": ["completed"],
            "model": {},
            "service_tier": 1,
            "steps": "x",
            "usage": {},
        }
    )
    assert summary == ResponseSummary(usage=Usage(), parse_error=False)


def test_terminal_statuses_track_the_sdk() -> None:
    statuses = {
        arg
        for member in typing.get_args(gi.InteractionStatus)
        for arg in typing.get_args(member)
        if isinstance(arg, str)
    }
    assert PENDING <= statuses
    assert statuses - PENDING == TERMINAL


def test_count_code_execution_steps() -> None:
    steps = [
        {"type": "code_execution_call"},
        {"type": "code_execution_result", "is_error": True},
        {"type": "code_execution_result", "is_error": "true"},  # not a bool: not an error
        {"type": "code_execution_result"},
        "garbage",
        None,
    ]
    assert count_code_execution_steps(steps) == (1, 1)
    assert count_code_execution_steps(None) == (0, 0)
    assert count_code_execution_steps({"type": "code_execution_call"}) == (0, 0)


# --- generateContent summaries -----------------------------------------------------------


def test_summarize_grounded_generate_response() -> None:
    body = sdk_generate(json.loads((FIXTURES / "generate_search.json").read_bytes()))
    summary = summarize_generate(body)
    assert summary == ResponseSummary(
        usage=Usage(
            input_tokens=12,
            intermediate_tokens=48,
            output_tokens=17,
            thinking_tokens=54,
            total_tokens=131,
            input_by_modality={"text": 12},
            intermediate_by_modality={"text": 48},
            grounding={"google_search": 2},
        ),
        response_id="Ep3uaKLtN4ibgLUP8e6p2Qg",
        model="gemini-2.5-flash",
    )


def generate_with_parts(parts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return sdk_generate(
        {
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}],
            "usageMetadata": {
                "promptTokenCount": 20,
                "candidatesTokenCount": 30,
                "totalTokenCount": 50,
            },
            "modelVersion": "gemini-2.5-pro",
            "responseId": "resp-1",
            **extra,
        }
    )


def test_summarize_generate_code_execution() -> None:
    body = generate_with_parts(
        [
            {"executableCode": {"language": "PYTHON", "code": "print(1/0)"}},
            {"codeExecutionResult": {"outcome": "OUTCOME_FAILED", "output": "ZeroDivisionError"}},
            {"executableCode": {"language": "PYTHON", "code": "while True: pass"}},
            {"codeExecutionResult": {"outcome": "OUTCOME_DEADLINE_EXCEEDED"}},
            {"executableCode": {"language": "PYTHON", "code": "print(1)"}},
            {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": "1\n"}},
            {"codeExecutionResult": {"output": "no outcome: unspecified, not a success"}},
            {"text": "Done."},
        ]
    )
    summary = summarize_generate(body)
    assert (summary.code_execution_calls, summary.code_execution_errors) == (3, 3)
    assert summary.usage == Usage(input_tokens=20, output_tokens=30, total_tokens=50)
    assert (summary.model, summary.response_id) == ("gemini-2.5-pro", "resp-1")
    assert not summary.parse_error


def test_summarize_generate_snake_case() -> None:
    body = generate_with_parts(
        [
            {"executableCode": {"language": "PYTHON", "code": "print(1/0)"}},
            {"codeExecutionResult": {"outcome": "OUTCOME_FAILED", "output": "ZeroDivisionError"}},
        ]
    )
    snake = gt.GenerateContentResponse.model_validate(body).to_json_dict()
    assert summarize_generate(snake) == summarize_generate(body)


def test_summarize_generate_counts_every_candidate() -> None:
    candidate = {
        "content": {"role": "model", "parts": [{"executableCode": {"code": "1"}}]},
        "groundingMetadata": {"webSearchQueries": ["a"], "imageSearchQueries": ["b"]},
    }
    body = sdk_generate(
        {
            "candidates": [candidate, {**candidate, "index": 1}],
            "usageMetadata": {"promptTokenCount": 1, "totalTokenCount": 1},
        }
    )
    summary = summarize_generate(body)
    assert summary.code_execution_calls == 2
    assert summary.usage is not None
    assert summary.usage.grounding == {"google_search": 4}


# --- grounding: what Google bills ---------------------------------------------------------


def _grounding_of(*bodies: object) -> dict[str, int]:
    acc = GenerateAccumulator()
    for body in bodies:
        acc.add(body)
    return acc.grounding()


def test_maps_grounding_docs_example_is_one_maps_prompt_not_a_search() -> None:
    # Google's own Maps example response (tests/fixtures/recorded/README.md): one Maps
    # source, the widget token, and webSearchQueries ["restaurants near me"], which the
    # Maps tool ran. Google bills it as one Maps-grounded prompt; before this count it
    # was taken for one Google Search query.
    example = json.loads((RECORDED / "generate_maps_grounding_docs_example.json").read_bytes())
    assert _grounding_of(example) == {"google_maps": 1}
    # The page's 2026-09-28 capture shows the same body without the widget token: the
    # Maps source alone makes it a Maps prompt.
    metadata = example["candidates"][0]["groundingMetadata"]
    del metadata["googleMapsWidgetContextToken"]
    assert _grounding_of(example) == {"google_maps": 1}
    # The SDK parses it (validation is the check) and its snake_case dump reads the same.
    snake = gt.GenerateContentResponse.model_validate(sdk_generate(example)).to_json_dict()
    assert _grounding_of(snake) == {"google_maps": 1}


def test_maps_and_search_in_one_candidate_count_both() -> None:
    metadata = {
        "groundingChunks": [
            {"maps": {"uri": "https://maps.google.com/?cid=1", "title": "Cafe"}},
            {"web": {"uri": "https://example.com", "title": "Example"}},
        ],
        "webSearchQueries": ["cafes near me", "cafe reviews"],
    }
    # Both tools ran; the queries cannot be told apart, so they count as Search (the
    # upper bound) and the Maps source is one Maps prompt.
    assert _grounding_of({"candidates": [{"groundingMetadata": metadata}]}) == {
        "google_search": 2,
        "google_maps": 1,
    }


def test_maps_without_a_maps_source_is_not_billed() -> None:
    # Google: a Maps request counts only "when a prompt successfully returns at least one
    # Google Maps grounded result". A widget token with no Maps source is neither a Maps
    # prompt nor a search.
    metadata = {"googleMapsWidgetContextToken": "widgetcontent/x", "webSearchQueries": ["q"]}
    assert _grounding_of({"candidates": [{"groundingMetadata": metadata}]}) == {}


def test_search_queries_count_once_each_and_never_empty() -> None:
    # "For billing purposes, we ignore the empty web search queries when counting unique
    # queries": "a" twice, "b", "" and "  " are 2 searches; a stream repeating the
    # candidate's metadata adds none; image search queries are searches of their own.
    chunk = {
        "candidates": [
            {"groundingMetadata": {"webSearchQueries": ["a", "a", "", "  ", "b"]}},
        ]
    }
    assert _grounding_of(chunk) == {"google_search": 2}
    assert _grounding_of(chunk, chunk) == {"google_search": 2}
    later = {"candidates": [{"groundingMetadata": {"imageSearchQueries": ["a"]}}]}
    assert _grounding_of(chunk, later) == {"google_search": 3}


def test_summarize_blocked_prompt() -> None:
    body = sdk_generate(
        {
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
            "modelVersion": "gemini-2.5-flash",
        }
    )
    summary = summarize_generate(body)
    assert summary.usage == Usage(input_tokens=8, total_tokens=8)
    assert not summary.parse_error


def test_generate_without_usage_is_a_parse_error() -> None:
    body = generate_with_parts([{"text": "hi"}])
    del body["usageMetadata"]
    summary = summarize_generate(body)
    assert summary.parse_error
    assert summary.usage is None
    assert summary.response_id == "resp-1"


def test_generate_malformed_usage_is_a_parse_error() -> None:
    summary = summarize_generate({"usageMetadata": {"promptTokenCount": "20"}})
    assert summary.parse_error
    assert summary.usage is None


@pytest.mark.parametrize("body", [None, [], "x", 1.5])
def test_non_object_generate_is_a_parse_error(body: object) -> None:
    assert summarize_generate(body) == ResponseSummary(parse_error=True)


def test_generate_odd_shapes_are_ignored() -> None:
    body = {
        "candidates": [
            None,
            {"content": "x"},
            {"content": {"parts": "x"}},
            {"content": {"parts": [None, {"codeExecutionResult": "x"}]}},
            {"groundingMetadata": {"webSearchQueries": "x"}},
            {"groundingMetadata": {"webSearchQueries": [1, None, "q"]}, "index": "0"},
        ],
        "usageMetadata": {},
        "responseId": 7,
        "modelVersion": "",
    }
    summary = summarize_generate(body)
    assert summary == ResponseSummary(usage=Usage(grounding={"google_search": 1}))


# --- parse_json --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"\xff\xfe\x00", b"nope", b"[1,]", b"[" * 100_000, b"1" * 5000, b"{}}"],
)
def test_parse_json_returns_none_on_garbage(body: bytes) -> None:
    assert parse_json(body) is None


def test_parse_json_reads_json() -> None:
    assert parse_json(b'{"a": [1, "b"]}') == {"a": [1, "b"]}
    assert parse_json(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    assert parse_json('{"a": 1}') == {"a": 1}


def test_parse_json_reads_what_orjson_refuses_as_python_does() -> None:
    # orjson stops at 64-bit integers, NaN and UTF-16; json.loads reads them
    assert parse_json(b'{"n": 18446744073709551616}') == {"n": 2**64}
    nan = parse_json(b'{"x": NaN}')
    assert isinstance(nan, dict) and nan["x"] != nan["x"]
    assert parse_json('{"a": 1}'.encode("utf-16")) == {"a": 1}


# --- properties --------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
# objects that look like usage, with values that may or may not be valid
usage_keys = st.sampled_from(
    [
        *FULL_INTERACTION_USAGE,
        *FULL_GENERATE_USAGE,
        "prompt_token_count",
        "usage",
        "usageMetadata",
        "modality",
        "tokens",
        "tokenCount",
        "type",
        "count",
    ]
)
usage_like = st.recursive(
    json_values,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(usage_keys, children, max_size=6)
    ),
    max_leaves=30,
)


@given(usage_like)
def test_usage_parsers_raise_only_usage_parse_error(raw: object) -> None:
    for parse in (usage_from_interaction, usage_from_generate, usage_from_any):
        try:
            usage = parse(raw)
        except UsageParseError:
            continue
        assert isinstance(usage, Usage)
        assert min(usage.input_tokens, usage.output_tokens, usage.total_tokens) >= 0


@given(usage_like)
def test_summaries_never_raise(raw: object) -> None:
    for summarize in (summarize_interaction, summarize_generate):
        summary = summarize(raw)
        assert isinstance(summary, ResponseSummary)
        assert summary.usage is not None or summary.parse_error or summary.status in PENDING


def test_an_idle_interaction_is_billed_on_its_usage() -> None:
    # google-genai 3.6 added "idle", the successor of requires_action: the
    # interaction's work is done, so its usage is due and final.
    usage = {"total_input_tokens": 7, "total_output_tokens": 3, "total_tokens": 10}
    summary = summarize_interaction({"id": "v1_a", "status": "idle", "usage": usage})
    assert summary.parse_error is False
    assert summary.usage is not None and summary.usage.total_tokens == 10
    assert summarize_interaction({"id": "v1_a", "status": "idle"}).parse_error is True
