"""Incremental decoders and stream taps (``proxy.metering.streams``).

The fixtures under ``fixtures/streams`` are whole wire bodies; every event or
chunk in them is validated with the google-genai SDK's own models below. The
property tests cut those bodies at arbitrary points, as the network may.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest
from google.genai import interactions as gi
from google.genai import types as gt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.metering.parsers import ResponseSummary, usage_from_interaction
from proxy.metering.records import EndpointKind, Usage
from proxy.metering.streams import (
    GenerateStreamTap,
    InteractionStreamTap,
    JSONArrayDecoder,
    SSEDecoder,
    StreamTap,
    stream_tap,
)
from tests.factories import assert_strict

FIXTURES = Path(__file__).parents[1] / "fixtures" / "streams"
INTERACTION_SSE = (FIXTURES / "interaction_code_execution.sse").read_bytes()
GENERATE_SSE = (FIXTURES / "generate_code_execution.sse").read_bytes()
GENERATE_ARRAY = (FIXTURES / "generate_code_execution.json").read_bytes()

SSE_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(gi.InteractionSSEEvent)


def sse_payloads(body: bytes) -> list[bytes]:
    decoder = SSEDecoder()
    return decoder.feed(body) + decoder.close()


def sse(*events: object, done: bool = True) -> bytes:
    """An Interactions-style body: one ``data:`` line per event."""
    lines = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
    return b"".join(lines) + (b"data: [DONE]\n\n" if done else b"")


def chunks_at(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(body), *(c for c in cuts if 0 <= c <= len(body))})
    return [body[a:b] for a, b in zip(points, points[1:], strict=False)]


def tap_result(tap: StreamTap, parts: list[bytes]) -> ResponseSummary:
    for part in parts:
        tap.feed(part)
    return tap.finish()


# --- the fixtures follow the SDK ---------------------------------------------------------


def test_interaction_fixture_events_validate_with_the_sdk() -> None:
    payloads = sse_payloads(INTERACTION_SSE)
    assert payloads[-1] == b"[DONE]"
    kinds = set()
    for payload in payloads[:-1]:
        event = SSE_EVENT.validate_python(json.loads(payload))
        assert_strict(event)
        kinds.add(event.event_type)
    assert kinds == {
        "interaction.created",
        "interaction.status_update",
        "step.start",
        "step.delta",
        "step.stop",
        "interaction.completed",
    }


def test_generate_fixture_chunks_validate_with_the_sdk() -> None:
    chunks = json.loads(GENERATE_ARRAY)
    assert len(chunks) == 6
    # the SSE fixture carries the same chunks
    assert [json.loads(p) for p in sse_payloads(GENERATE_SSE)] == chunks
    for chunk in chunks:
        gt.GenerateContentResponse.model_validate(chunk)  # extra fields are forbidden there


# --- SSEDecoder --------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_sse_line_endings(eol: bytes) -> None:
    body = eol.join([b"data: one", b"", b"data: two", b"data: lines", b"", b""])
    assert sse_payloads(body) == [b"one", b"two\nlines"]
    # fed byte by byte, so every CR is at the end of a chunk
    decoder = SSEDecoder()
    out = [p for i in range(len(body)) for p in decoder.feed(body[i : i + 1])]
    assert out + decoder.close() == [b"one", b"two\nlines"]


def test_sse_cr_then_lf_across_chunks_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == [b"a"]
    assert decoder.feed(b"\ndata: b\r\r") == [b"b"]
    assert decoder.close() == []


def test_sse_mixed_line_endings() -> None:
    assert sse_payloads(b"data: a\r\n\ndata: b\n\r\ndata: c\r\rdata: d\n\n") == [
        b"a",
        b"b",
        b"c",
        b"d",
    ]


def test_sse_bom_is_skipped_once() -> None:
    assert sse_payloads(b"\xef\xbb\xbfdata: x\n\n") == [b"x"]
    # a BOM split over chunks
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef") == []
    assert decoder.feed(b"\xbb") == []
    assert decoder.feed(b"\xbfdata: x\n\n") == [b"x"]
    # only at the very start: later it is data
    assert sse_payloads(b"data: x\n\n\xef\xbb\xbfdata: y\n\n") == [b"x"]
    assert sse_payloads(b"data: \xef\xbb\xbfy\n\n") == [b"\xef\xbb\xbfy"]
    # not a BOM after all
    assert sse_payloads(b"\xef\xbb") == []


def test_sse_comments_and_other_fields() -> None:
    body = (
        b": keep-alive\n"
        b"event: step.delta\n"
        b"id: evt_0001\n"
        b"retry: 3000\n"
        b'data: {"a": 1}\n'
        b"unknown: field\n"
        b"\n"
        b":comment without a space\n\n"
        b"event: ping\n\n"  # no data: not dispatched
        b"id\n"
        b"data: 2\n\n"
    )
    assert sse_payloads(body) == [b'{"a": 1}', b"2"]


def test_sse_data_field_forms() -> None:
    body = (
        b"data:no space\n\n"
        b"data:  two spaces\n\n"
        b"data\n\n"  # a field name alone: empty data
        b"data:\n\n"
        b"data\ndata\n\n"
        b"data : not the data field\n\n"
        b"datum: nor this\n\n"
        b"data: a:b: c\n\n"
    )
    assert sse_payloads(body) == [b"no space", b" two spaces", b"", b"", b"\n", b"a:b: c"]


def test_sse_close_flushes_a_final_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\n") == [b"a"]
    assert decoder.close() == [b"b"]
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: [DONE]") == [b"a"]
    assert decoder.close() == [b"[DONE]"]
    assert SSEDecoder().close() == []


def test_sse_large_event_over_many_chunks() -> None:
    payload = b'{"text": "' + b"x" * 200_000 + b'"}'
    body = b"data: " + payload + b"\r\n\r\n"
    decoder = SSEDecoder()
    out: list[bytes] = []
    for i in range(0, len(body), 1000):
        out += decoder.feed(body[i : i + 1000])
    assert out == [payload]


@given(st.binary(), st.lists(st.integers(0, 600), max_size=12))
def test_sse_never_raises_and_ignores_cuts(body: bytes, cuts: list[int]) -> None:
    whole = sse_payloads(body)
    decoder = SSEDecoder()
    parts = [p for chunk in chunks_at(body, cuts) for p in decoder.feed(chunk)]
    assert parts + decoder.close() == whole


sse_lines = st.lists(
    st.sampled_from(
        [b"data: {}", b"data:x", b"data", b":c", b"", b"id: 1", b"event: e", b"data: [DONE]"]
    ),
    max_size=20,
)


@given(sse_lines, st.sampled_from([b"\n", b"\r\n", b"\r"]), st.lists(st.integers(0, 300)))
def test_sse_line_ending_does_not_matter(lines: list[bytes], eol: bytes, cuts: list[int]) -> None:
    expected = sse_payloads(b"\n".join(lines))
    body = eol.join(lines)
    decoder = SSEDecoder()
    parts = [p for chunk in chunks_at(body, cuts) for p in decoder.feed(chunk)]
    assert parts + decoder.close() == expected


# --- JSONArrayDecoder --------------------------------------------------------------------


def array_elements(
    body: bytes, cuts: list[int] | None = None
) -> tuple[list[bytes], JSONArrayDecoder]:
    decoder = JSONArrayDecoder()
    out: list[bytes] = []
    for chunk in chunks_at(body, cuts or []):
        out += decoder.feed(chunk)
    return out, decoder


def test_array_fixture() -> None:
    elements, decoder = array_elements(GENERATE_ARRAY)
    assert [json.loads(e) for e in elements] == json.loads(GENERATE_ARRAY)
    assert decoder.complete
    assert not decoder.broken
    # byte by byte
    elements_1, _ = array_elements(GENERATE_ARRAY, list(range(len(GENERATE_ARRAY))))
    assert elements_1 == elements


def test_array_strings_that_look_like_structure() -> None:
    tricky = [
        {"text": "}]{[,"},
        {"text": 'a "quoted" \\ backslash \\', "n": [1, [2, {"x": "]"}]]},
        {"text": '\\\\\\"', "u": "\u00e9\u2603\U0001f600"},
        {"empty": "", "nested": {"a": {"b": {"c": []}}}},
        [1, "two", {"three": 3}],
    ]
    body = b"[" + b" ,\n".join(json.dumps(t).encode() for t in tricky) + b"]"
    for size in (1, 2, 3, 7, len(body)):
        cuts = list(range(0, len(body), size))
        elements, decoder = array_elements(body, cuts)
        assert [json.loads(e) for e in elements] == tricky
        assert decoder.complete


def test_array_backslash_at_chunk_end() -> None:
    decoder = JSONArrayDecoder()
    assert decoder.feed(b'[{"a": "x\\') == []
    assert decoder.feed(b'"}') == []  # the quote was escaped: still inside the string
    assert decoder.feed(b'"}\n') == [b'{"a": "x\\"}"}']


def test_array_element_is_emitted_at_its_closing_brace() -> None:
    decoder = JSONArrayDecoder()
    assert decoder.feed(b'[{"a": 1}') == [b'{"a": 1}']
    assert not decoder.complete
    assert decoder.feed(b"\n,\r\n") == []
    assert decoder.feed(b'{"b": 2}\n]') == [b'{"b": 2}']
    assert decoder.complete


@pytest.mark.parametrize(
    "body",
    [b"[]", b" \r\n[ \t]\n", b"\xef\xbb\xbf[]", b"[\n]\n\n"],
)
def test_array_empty(body: bytes) -> None:
    elements, decoder = array_elements(body)
    assert elements == []
    assert decoder.complete
    assert not decoder.broken


def test_array_bare_object_is_one_element() -> None:
    elements, decoder = array_elements(b' {"usageMetadata": {}}\n')
    assert elements == [b'{"usageMetadata": {}}']
    assert decoder.complete


@pytest.mark.parametrize(
    ("body", "emitted"),
    [
        (b"garbage", 0),
        (b'{"a": 1}x', 1),
        (b'[{"a": 1}{"b": 2}]', 1),
        (b'[{"a": 1},,{"b": 2}]', 1),
        (b'[{"a": 1},]', 1),
        (b'[{"a": 1}] trailing', 1),
        (b"[1, 2]", 0),
        (b'["text"]', 0),
        (b"[null]", 0),
        (b"<html>502 Bad Gateway</html>", 0),
    ],
)
def test_array_garbage_breaks_the_decoder(body: bytes, emitted: int) -> None:
    elements, decoder = array_elements(body)
    assert len(elements) == emitted
    assert decoder.broken
    assert not decoder.complete
    assert decoder.feed(b'[{"a": 1}]') == []  # ignored from then on


def test_array_truncated_keeps_complete_elements() -> None:
    body = GENERATE_ARRAY[: GENERATE_ARRAY.rindex(b"candidates")]
    elements, decoder = array_elements(body)
    assert len(elements) == 5
    assert not decoder.complete
    assert not decoder.broken


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=15,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=5)
whitespace = st.text(" \t\r\n", max_size=3)


@given(
    st.lists(json_objects, max_size=5),
    st.lists(whitespace, min_size=12, max_size=12),
    st.booleans(),
    st.lists(st.integers(0, 2000), max_size=20),
)
def test_array_roundtrip_any_split(
    objects: list[dict[str, Any]], ws: list[str], ascii_only: bool, cuts: list[int]
) -> None:
    sep = (ws[0] + "," + ws[1]).encode()
    items = [json.dumps(o, ensure_ascii=ascii_only).encode() for o in objects]
    body = (ws[2] + "[" + ws[3]).encode() + sep.join(items) + (ws[4] + "]" + ws[5]).encode()
    elements, decoder = array_elements(body, cuts)
    assert [json.loads(e) for e in elements] == objects
    assert decoder.complete


@given(st.binary(), st.lists(st.integers(0, 600), max_size=12))
def test_array_never_raises_and_ignores_cuts(body: bytes, cuts: list[int]) -> None:
    whole, decoder = array_elements(body)
    split, split_decoder = array_elements(body, cuts)
    assert split == whole
    assert (split_decoder.broken, split_decoder.complete) == (decoder.broken, decoder.complete)


@given(
    st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b",", b" ", b"a"]), max_size=40)
)
def test_array_never_raises_on_structural_noise(pieces: list[bytes]) -> None:
    body = b"".join(pieces)
    whole, _ = array_elements(body)
    split, _ = array_elements(body, list(range(len(body))))
    assert split == whole


# --- InteractionStreamTap ----------------------------------------------------------------

FINAL_USAGE = Usage(
    input_tokens=1800,
    cached_tokens=1024,
    intermediate_tokens=640,
    output_tokens=420,
    thinking_tokens=310,
    total_tokens=3170,
    input_by_modality={"text": 1500, "image": 300},
    cached_by_modality={"text": 1024},
    intermediate_by_modality={"text": 640},
    output_by_modality={"text": 420},
)
INTERACTION_SUMMARY = ResponseSummary(
    usage=FINAL_USAGE,
    interaction_id="v1_ChdnbWV0ZXItY29kZS1leGVjdXRpb24tMDAx",
    status="completed",
    model="gemini-3-flash-preview",
    service_tier="standard",
    code_execution_calls=2,
    code_execution_errors=1,
)


def interaction_events(body: bytes = INTERACTION_SSE) -> list[dict[str, Any]]:
    return [json.loads(p) for p in sse_payloads(body) if p != b"[DONE]"]


def test_interaction_tap_reads_the_fixture() -> None:
    assert tap_result(InteractionStreamTap(), [INTERACTION_SSE]) == INTERACTION_SUMMARY


def test_interaction_tap_does_not_add_up_cumulative_usage() -> None:
    # The stream carries many running totals; adding them up would bill several times over.
    usages = [
        usage
        for event in interaction_events()
        for usage in (
            event.get("usage"),
            event.get("interaction", {}).get("usage"),
            event.get("metadata", {}).get("total_usage"),
        )
        if usage is not None
    ]
    assert len(usages) > 5
    naive = sum(usage_from_interaction(u).total_tokens for u in usages)
    summary = tap_result(InteractionStreamTap(), [INTERACTION_SSE])
    assert summary.usage is not None
    assert summary.usage.total_tokens == 3170 < naive


def test_interaction_tap_completed_usage_wins() -> None:
    final = {"total_input_tokens": 10, "total_output_tokens": 5, "total_tokens": 15}
    body = sse(
        {
            "event_type": "interaction.created",
            "interaction": {"id": "v1_a", "status": "in_progress"},
        },
        {
            "event_type": "step.stop",
            "index": 0,
            "usage": {"total_input_tokens": 10, "total_tokens": 10},
        },
        {
            "event_type": "interaction.completed",
            "interaction": {"id": "v1_a", "status": "completed", "usage": final},
        },
        # a stray running total after completion does not replace the final figure
        {"event_type": "step.stop", "index": 1, "usage": {"total_tokens": 999}},
    )
    for event in interaction_events(body):
        assert_strict(SSE_EVENT.validate_python(event))
    summary = tap_result(InteractionStreamTap(), [body])
    assert summary.usage == Usage(input_tokens=10, output_tokens=5, total_tokens=15)
    assert not summary.parse_error


def test_interaction_tap_created_usage_is_only_a_snapshot() -> None:
    body = sse(
        {
            "event_type": "interaction.created",
            "interaction": {
                "id": "v1_s",
                "status": "in_progress",
                "usage": {"total_input_tokens": 10, "total_tokens": 10},
            },
        },
        {
            "event_type": "step.stop",
            "index": 0,
            "usage": {"total_input_tokens": 10, "total_tokens": 25},
        },
        done=False,
    )
    for event in interaction_events(body):
        assert_strict(SSE_EVENT.validate_python(event))
    summary = tap_result(InteractionStreamTap(), [body])
    assert summary.usage == Usage(input_tokens=10, total_tokens=25)


def test_interaction_tap_broken_off_stream_uses_the_last_usage() -> None:
    # the stream ends (connection lost) after the text delta carrying total_usage
    cut = INTERACTION_SSE.index(b'"total_usage"')
    body = INTERACTION_SSE[: INTERACTION_SSE.index(b"\n\n", cut) + 2]
    summary = tap_result(InteractionStreamTap(), [body])
    assert summary.usage is not None
    assert (summary.usage.output_tokens, summary.usage.total_tokens) == (380, 3130)
    assert summary.status == "in_progress"
    assert not summary.parse_error
    assert (summary.code_execution_calls, summary.code_execution_errors) == (2, 1)


def test_interaction_tap_status_update_usage() -> None:
    body = sse(
        {
            "event_type": "interaction.status_update",
            "interaction_id": "v1_b",
            "status": "in_progress",
        },
        {
            "event_type": "interaction.status_update",
            "interaction_id": "v1_b",
            "status": "failed",
            "usage": {"total_input_tokens": 4, "total_tokens": 4},
        },
        {"event_type": "error", "error": {"code": "internal", "message": "model overloaded"}},
    )
    for event in interaction_events(body):
        assert_strict(SSE_EVENT.validate_python(event))
    summary = tap_result(InteractionStreamTap(), [body])
    assert summary == ResponseSummary(
        usage=Usage(input_tokens=4, total_tokens=4), interaction_id="v1_b", status="failed"
    )


def test_interaction_tap_without_usage_is_a_parse_error() -> None:
    body = sse(
        {
            "event_type": "interaction.created",
            "interaction": {"id": "v1_c", "status": "in_progress"},
        },
        {"event_type": "error", "error": {"code": "unavailable", "message": "try again"}},
    )
    summary = tap_result(InteractionStreamTap(), [body])
    assert summary.parse_error
    assert summary.usage is None
    assert summary.interaction_id == "v1_c"
    assert tap_result(InteractionStreamTap(), []).parse_error


def test_interaction_tap_step_usage_is_not_a_total() -> None:
    body = sse({"event_type": "step.stop", "index": 0, "step_usage": {"total_tokens": 50}})
    summary = tap_result(InteractionStreamTap(), [body])
    assert summary.usage is None
    assert summary.parse_error


def test_interaction_tap_malformed_final_usage() -> None:
    body = sse(
        {"event_type": "step.stop", "index": 0, "usage": {"total_tokens": 10}},
        {
            "event_type": "interaction.completed",
            "interaction": {"id": "v1_d", "status": "completed", "usage": {"total_tokens": "12"}},
        },
    )
    summary = tap_result(InteractionStreamTap(), [body])
    assert summary.parse_error
    assert summary.usage is None


def test_interaction_tap_malformed_intermediate_usage_is_superseded() -> None:
    body = sse(
        {"event_type": "step.stop", "index": 0, "usage": {"total_tokens": -1}},
        {"event_type": "step.stop", "index": 1, "usage": {"total_tokens": 10}},
    )
    summary = tap_result(InteractionStreamTap(), [body])
    assert summary.usage == Usage(total_tokens=10)
    assert not summary.parse_error


@pytest.mark.parametrize(
    "garbage",
    [b"data: {not json\n\n", b"data: [1, 2]\n\n", b'data: "text"\n\n', b"data: \xff\xfe\n\n"],
)
def test_interaction_tap_garbage_event_is_a_parse_error(garbage: bytes) -> None:
    cut = INTERACTION_SSE.index(b"data: ", 1000)
    body = INTERACTION_SSE[:cut] + garbage + INTERACTION_SSE[cut:]
    summary = tap_result(InteractionStreamTap(), [body])
    assert summary.parse_error
    # what could be read is still reported
    assert summary.usage == FINAL_USAGE


def test_interaction_tap_stops_at_done() -> None:
    after = sse(
        {"event_type": "step.stop", "index": 9, "usage": {"total_tokens": 1}},
        {"event_type": "step.start", "index": 9, "step": {"type": "code_execution_call"}},
    )
    body = INTERACTION_SSE + b"data: {garbage\n\n" + after
    assert tap_result(InteractionStreamTap(), [body]) == INTERACTION_SUMMARY


def test_interaction_tap_counts_code_execution_per_step() -> None:
    body = sse(
        # error flagged in both the start and a delta: one error
        {
            "event_type": "step.start",
            "index": 1,
            "step": {
                "type": "code_execution_result",
                "call_id": "c1",
                "result": "",
                "is_error": True,
            },
        },
        {
            "event_type": "step.delta",
            "index": 1,
            "delta": {"type": "code_execution_result", "result": "Traceback", "is_error": True},
        },
        {
            "event_type": "step.delta",
            "index": 1,
            "delta": {"type": "code_execution_result", "result": " more", "is_error": True},
        },
        # error only in a delta; the start said otherwise
        {
            "event_type": "step.start",
            "index": 3,
            "step": {
                "type": "code_execution_result",
                "call_id": "c2",
                "result": "",
                "is_error": False,
            },
        },
        {
            "event_type": "step.delta",
            "index": 3,
            "delta": {"type": "code_execution_result", "result": "boom", "is_error": True},
        },
        # a call in the start and in its argument delta: one call
        {
            "event_type": "step.start",
            "index": 2,
            "step": {"type": "code_execution_call", "id": "c2", "arguments": {}},
        },
        {
            "event_type": "step.delta",
            "index": 2,
            "delta": {
                "type": "code_execution_call",
                "arguments": {"code": "1", "language": "bash"},
            },
        },
        # a successful result
        {
            "event_type": "step.start",
            "index": 4,
            "step": {"type": "code_execution_result", "call_id": "c2", "result": "ok"},
        },
        {"event_type": "step.stop", "index": 4, "usage": {"total_tokens": 3}},
    )
    for event in interaction_events(body):
        assert_strict(SSE_EVENT.validate_python(event))
    summary = tap_result(InteractionStreamTap(), [body])
    assert (summary.code_execution_calls, summary.code_execution_errors) == (1, 2)


def test_interaction_tap_completed_steps_are_authoritative() -> None:
    steps = [
        {"type": "code_execution_call", "id": "c1", "arguments": {"code": "1"}},
        {"type": "code_execution_result", "call_id": "c1", "result": "e", "is_error": True},
        {"type": "code_execution_call", "id": "c2", "arguments": {"code": "2"}},
        {"type": "code_execution_result", "call_id": "c2", "result": "e", "is_error": True},
        {"type": "code_execution_call", "id": "c3", "arguments": {"code": "3"}},
        {"type": "code_execution_result", "call_id": "c3", "result": "ok"},
    ]
    events = [e for e in interaction_events() if e["event_type"] != "interaction.completed"]
    completed = {
        "event_type": "interaction.completed",
        "interaction": {
            "id": "v1_e",
            "status": "completed",
            "steps": steps,
            "usage": {"total_tokens": 7},
        },
    }
    assert_strict(SSE_EVENT.validate_python(completed))
    summary = tap_result(InteractionStreamTap(), [sse(*events, completed)])
    assert (summary.code_execution_calls, summary.code_execution_errors) == (3, 2)
    assert summary.usage == Usage(total_tokens=7)


def test_interaction_tap_odd_events_are_ignored() -> None:
    body = sse(
        {"event_type": "interaction.created", "interaction": "v1_x"},
        {"event_type": "step.start", "step": {"type": "code_execution_call"}},  # no index: counted
        {"event_type": "step.start", "index": "1", "step": "code_execution_call"},
        {"event_type": "step.delta", "delta": {"type": "code_execution_call"}},  # no index: not
        {"event_type": "step.delta", "index": True, "delta": None, "metadata": "x"},
        {"event_type": "interaction.status_update", "status": 3, "interaction_id": []},
        {"event_type": "something.new", "usage": {"total_tokens": 99}},
        {"no_event_type": True},
        {"event_type": "step.stop", "index": 0, "usage": {"total_tokens": 5}},
    )
    summary = tap_result(InteractionStreamTap(), [body])
    assert summary == ResponseSummary(usage=Usage(total_tokens=5), code_execution_calls=1)


def test_interaction_tap_finish_is_idempotent() -> None:
    tap = InteractionStreamTap()
    tap.feed(INTERACTION_SSE)
    first = tap.finish()
    assert tap.finish() is first


def test_interaction_tap_without_done_or_final_blank_line() -> None:
    body = INTERACTION_SSE[: INTERACTION_SSE.rindex(b"data: [DONE]")].rstrip(b"\n")
    assert tap_result(InteractionStreamTap(), [body]) == INTERACTION_SUMMARY


def as_crlf(body: bytes) -> bytes:
    return body.replace(b"\n", b"\r\n")


def as_cr(body: bytes) -> bytes:
    return body.replace(b"\n", b"\r")


def with_noise(body: bytes) -> bytes:
    # keep-alive comments and id/event fields, as proxies and servers add them
    out = body.replace(b"\n\ndata: ", b"\n\n: keep-alive\n\nevent: message\nid: 7\ndata: ")
    return b"\xef\xbb\xbf" + out


INTERACTION_VARIANTS = {
    "lf": INTERACTION_SSE,
    "crlf": as_crlf(INTERACTION_SSE),
    "cr": as_cr(INTERACTION_SSE),
    "noise": with_noise(INTERACTION_SSE),
}


@pytest.mark.parametrize("name", INTERACTION_VARIANTS)
def test_interaction_tap_framing_variants(name: str) -> None:
    body = INTERACTION_VARIANTS[name]
    assert tap_result(InteractionStreamTap(), [body]) == INTERACTION_SUMMARY
    one_byte = [body[i : i + 1] for i in range(len(body))]
    assert tap_result(InteractionStreamTap(), one_byte) == INTERACTION_SUMMARY


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(INTERACTION_VARIANTS)),
    st.lists(st.integers(0, len(INTERACTION_SSE) + 100), max_size=60),
)
def test_interaction_tap_any_split(name: str, cuts: list[int]) -> None:
    body = INTERACTION_VARIANTS[name]
    assert tap_result(InteractionStreamTap(), chunks_at(body, cuts)) == INTERACTION_SUMMARY


@given(st.binary(), st.lists(st.integers(0, 600), max_size=12))
def test_interaction_tap_never_raises(body: bytes, cuts: list[int]) -> None:
    whole = tap_result(InteractionStreamTap(), [body])
    assert tap_result(InteractionStreamTap(), chunks_at(body, cuts)) == whole


event_types = st.sampled_from(
    [
        "interaction.created",
        "interaction.status_update",
        "interaction.completed",
        "step.start",
        "step.delta",
        "step.stop",
        "error",
    ]
)
field_names = st.sampled_from(
    [
        "interaction",
        "usage",
        "step_usage",
        "step",
        "delta",
        "metadata",
        "total_usage",
        "index",
        "type",
        "is_error",
        "steps",
        "status",
        "id",
        "total_tokens",
        "code_execution_call",
        "code_execution_result",
    ]
)
event_like = st.recursive(
    json_scalars | field_names,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(field_names, children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.lists(st.tuples(event_types, st.dictionaries(field_names, event_like, max_size=4))))
def test_interaction_tap_never_raises_on_odd_shapes(
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    body = sse(*({**fields, "event_type": kind} for kind, fields in events))
    summary = tap_result(InteractionStreamTap(), [body])
    assert summary.usage is not None or summary.parse_error


# --- GenerateStreamTap -------------------------------------------------------------------

GENERATE_SUMMARY = ResponseSummary(
    usage=Usage(
        input_tokens=250,
        cached_tokens=128,
        intermediate_tokens=260,
        output_tokens=210,
        thinking_tokens=356,
        total_tokens=1076,
        input_by_modality={"text": 192, "image": 58},
        cached_by_modality={"text": 128},
        intermediate_by_modality={"text": 260},
        output_by_modality={"text": 210},
    ),
    response_id="8ofuaNLoFqexgLUPqvWq6Q0",
    model="gemini-2.5-flash",
    code_execution_calls=2,
    code_execution_errors=1,
)


@pytest.mark.parametrize(("body", "is_sse"), [(GENERATE_SSE, True), (GENERATE_ARRAY, False)])
def test_generate_tap_reads_the_fixture(body: bytes, is_sse: bool) -> None:
    assert tap_result(GenerateStreamTap(sse=is_sse), [body]) == GENERATE_SUMMARY


def test_generate_tap_does_not_add_up_cumulative_usage() -> None:
    chunks = json.loads(GENERATE_ARRAY)
    naive = sum(c["usageMetadata"]["totalTokenCount"] for c in chunks)
    summary = tap_result(GenerateStreamTap(sse=False), [GENERATE_ARRAY])
    assert summary.usage is not None
    assert summary.usage.total_tokens == 1076 < naive


def generate_chunk(**fields: Any) -> dict[str, Any]:
    chunk = {"modelVersion": "gemini-2.5-flash", "responseId": "r1", **fields}
    gt.GenerateContentResponse.model_validate(chunk)
    return chunk


def generate_sse(*chunks: object) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)


def test_generate_tap_grounding_counted_once_per_search() -> None:
    grounding = {"webSearchQueries": ["euro 2024 winner", "euro 2024 final"]}
    usage = {"promptTokenCount": 9, "totalTokenCount": 9}
    repeated = generate_sse(
        generate_chunk(candidates=[{"groundingMetadata": grounding}], usageMetadata=usage),
        generate_chunk(candidates=[{"groundingMetadata": grounding, "finishReason": "STOP"}]),
    )
    summary = tap_result(GenerateStreamTap(sse=True), [repeated])
    assert summary.usage is not None
    assert summary.usage.grounding == {"google_search": 2}
    # Google bills distinct non-empty queries ("we ignore the empty web search queries when
    # counting unique queries"): "a", "b" and "b" again, and an empty one, are 2 searches.
    spread = generate_sse(
        generate_chunk(candidates=[{"groundingMetadata": {"webSearchQueries": ["a", ""]}}]),
        generate_chunk(
            candidates=[{"groundingMetadata": {"webSearchQueries": ["b", "b"]}}],
            usageMetadata=usage,
        ),
    )
    summary = tap_result(GenerateStreamTap(sse=True), [spread])
    assert summary.usage is not None
    assert summary.usage.grounding == {"google_search": 2}


def test_generate_tap_without_usage_is_a_parse_error() -> None:
    body = generate_sse(generate_chunk(candidates=[{"content": {"parts": [{"text": "hi"}]}}]))
    summary = tap_result(GenerateStreamTap(sse=True), [body])
    assert summary.parse_error
    assert summary.usage is None
    assert summary.response_id == "r1"
    assert tap_result(GenerateStreamTap(sse=False), []).parse_error


def test_generate_tap_last_usage_malformed() -> None:
    body = generate_sse(
        generate_chunk(usageMetadata={"promptTokenCount": 3}),
        {"usageMetadata": {"promptTokenCount": -3}},
    )
    summary = tap_result(GenerateStreamTap(sse=True), [body])
    assert summary.parse_error
    assert summary.usage is None


def test_generate_tap_garbage_chunk_is_a_parse_error() -> None:
    body = GENERATE_SSE + b"data: {oops\r\n\r\n"
    summary = tap_result(GenerateStreamTap(sse=True), [body])
    assert summary.parse_error
    assert summary.usage == GENERATE_SUMMARY.usage


def test_generate_tap_broken_array_is_a_parse_error() -> None:
    body = GENERATE_ARRAY[:-1] + b", oops]"
    summary = tap_result(GenerateStreamTap(sse=False), [body])
    assert summary.parse_error
    assert summary.usage == GENERATE_SUMMARY.usage


def test_generate_tap_truncated_array_uses_the_last_complete_chunk() -> None:
    body = GENERATE_ARRAY[: GENERATE_ARRAY.rindex(b"candidates")]
    summary = tap_result(GenerateStreamTap(sse=False), [body])
    assert not summary.parse_error
    assert summary.usage is not None
    assert summary.usage.output_tokens == 150  # chunk 5 of 6
    assert summary.code_execution_calls == 2


def test_generate_tap_error_in_stream() -> None:
    # an upstream error after some chunks arrives as one more array element
    error = {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}
    body = GENERATE_ARRAY[:-1] + b",\r\n" + json.dumps(error).encode() + b"\n]"
    summary = tap_result(GenerateStreamTap(sse=False), [body])
    assert summary == GENERATE_SUMMARY


def test_generate_tap_whole_response_body() -> None:
    body = (FIXTURES / "generate_search.json").read_bytes()
    summary = tap_result(GenerateStreamTap(sse=False), [body])
    assert summary.usage is not None
    assert summary.usage.grounding == {"google_search": 2}


GENERATE_VARIANTS = {
    "sse": (GENERATE_SSE, True),
    "sse-lf": (GENERATE_SSE.replace(b"\r\n", b"\n"), True),
    "sse-cr": (GENERATE_SSE.replace(b"\r\n", b"\r"), True),
    "sse-noise": (with_noise(GENERATE_SSE.replace(b"\r\n", b"\n")), True),
    "array": (GENERATE_ARRAY, False),
    "array-bom": (b"\xef\xbb\xbf" + GENERATE_ARRAY, False),
}


@pytest.mark.parametrize("name", GENERATE_VARIANTS)
def test_generate_tap_framing_variants(name: str) -> None:
    body, is_sse = GENERATE_VARIANTS[name]
    assert tap_result(GenerateStreamTap(sse=is_sse), [body]) == GENERATE_SUMMARY
    one_byte = [body[i : i + 1] for i in range(len(body))]
    assert tap_result(GenerateStreamTap(sse=is_sse), one_byte) == GENERATE_SUMMARY


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(GENERATE_VARIANTS)),
    st.lists(st.integers(0, len(GENERATE_ARRAY) + 100), max_size=60),
)
def test_generate_tap_any_split(name: str, cuts: list[int]) -> None:
    body, is_sse = GENERATE_VARIANTS[name]
    assert tap_result(GenerateStreamTap(sse=is_sse), chunks_at(body, cuts)) == GENERATE_SUMMARY


@given(st.binary(), st.booleans(), st.lists(st.integers(0, 600), max_size=12))
def test_generate_tap_never_raises(body: bytes, is_sse: bool, cuts: list[int]) -> None:
    whole = tap_result(GenerateStreamTap(sse=is_sse), [body])
    assert tap_result(GenerateStreamTap(sse=is_sse), chunks_at(body, cuts)) == whole


# --- stream_tap --------------------------------------------------------------------------


def test_stream_tap_picks_the_tap() -> None:
    assert isinstance(stream_tap(EndpointKind.INTERACTION_CREATE), InteractionStreamTap)
    assert isinstance(stream_tap(EndpointKind.INTERACTION_GET, sse=False), InteractionStreamTap)
    tap = stream_tap(EndpointKind.STREAM_GENERATE_CONTENT, sse=False)
    assert isinstance(tap, GenerateStreamTap)
    assert tap_result(tap, [GENERATE_ARRAY]) == GENERATE_SUMMARY
    tap = stream_tap(EndpointKind.STREAM_GENERATE_CONTENT, sse=True)
    assert tap_result(tap, [GENERATE_SSE]) == GENERATE_SUMMARY


# --- the documented stream shape -----------------------------------------------------------

DOCUMENTED = (
    Path(__file__).parents[1] / "fixtures" / "recorded" / "interaction_stream_streaming_guide.sse"
).read_bytes()


def test_documented_stream_events_validate_with_the_sdk() -> None:
    # Each event as Google's transcript frames it: "event: <event_type>" then its data.
    blocks = DOCUMENTED.rstrip(b"\n").split(b"\n\n")
    assert blocks[-1] == b"event: done\ndata: [DONE]"
    for block in blocks[:-1]:
        name, data = block.split(b"\n")
        event = json.loads(data.removeprefix(b"data: "))
        assert name == b"event: " + event["event_type"].encode()
        assert_strict(SSE_EVENT.validate_python(event))


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, len(DOCUMENTED)), max_size=40))
def test_documented_stream_bills_on_interaction_completed(cuts: list[int]) -> None:
    # event: lines are ignored, "event: done" ends the reading, and the usage
    # is the one interaction.completed carries (no step or status carries any).
    body = DOCUMENTED + b"event: message\ndata: {not json}\n\n"
    summary = tap_result(InteractionStreamTap(), chunks_at(body, cuts))
    assert summary.parse_error is False and summary.status == "completed"
    assert summary.usage is not None
    assert (summary.usage.input_tokens, summary.usage.output_tokens) == (11, 90)
    assert (summary.usage.thinking_tokens, summary.usage.total_tokens) == (245, 346)


def test_documented_stream_cut_before_completion_has_no_usage() -> None:
    # A real stream carries its usage only on interaction.completed: cut before
    # it, the tap has the interaction's id and status but nothing to bill.
    cut = DOCUMENTED[: DOCUMENTED.index(b"event: interaction.completed")]
    summary = tap_result(InteractionStreamTap(), [cut])
    assert summary.interaction_id == "v1_..." and summary.status == "in_progress"
    assert summary.usage is None
