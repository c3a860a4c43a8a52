"""The Live API's usage, read off server frames (``proxy.metering.live``), and the relay's
close-code rule (``proxy.server.live.relayed_close``): pure functions, no sockets."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from proxy.metering.live import LiveMeter, setup_model, usage_from_live
from proxy.metering.records import Usage
from proxy.server.live import relayed_close

# A real turn's usage: gemini-live-2.5-flash answering a spoken question, as printed by
# google-genai (``LiveServerMessage.usage_metadata``) in the README of
# github.com/ilseokoh/gemini-live-load-test ("Token Usage", revision indexed 2026-11-29):
# prompt_token_count=69 (AUDIO 58, TEXT 11), response_token_count=176 (TEXT 26,
# AUDIO 150), total_token_count=245. Here in the wire's camelCase, as the SDK parsed it.
RECORDED_TURN = {
    "promptTokenCount": 69,
    "responseTokenCount": 176,
    "totalTokenCount": 245,
    "promptTokensDetails": [
        {"modality": "AUDIO", "tokenCount": 58},
        {"modality": "TEXT", "tokenCount": 11},
    ],
    "responseTokensDetails": [
        {"modality": "TEXT", "tokenCount": 26},
        {"modality": "AUDIO", "tokenCount": 150},
    ],
}


def frame(message: Mapping[str, object]) -> bytes:
    return json.dumps(message).encode()


def test_a_recorded_turn_reads_as_gemini_bills_it() -> None:
    usage = usage_from_live(RECORDED_TURN)
    assert usage == Usage(
        input_tokens=69,
        output_tokens=176,
        total_tokens=245,
        input_by_modality={"audio": 58, "text": 11},
        output_by_modality={"text": 26, "audio": 150},
    )
    assert not usage.total_mismatch


def test_every_turn_is_summed_once_and_other_frames_cost_nothing() -> None:
    meter = LiveMeter()
    assert not meter.feed(frame({"setupComplete": {}}))
    assert not meter.feed(frame({"serverContent": {"modelTurn": {"parts": [{"text": "hi"}]}}}))
    assert meter.turn_open
    assert meter.feed(
        frame({"serverContent": {"turnComplete": True}, "usageMetadata": RECORDED_TURN})
    )
    assert not meter.turn_open
    # The second turn re-reads the first (its prompt grows) and is billed again in full.
    second = {
        "promptTokenCount": 69 + 176 + 40,
        "cachedContentTokenCount": 100,
        "responseTokenCount": 30,
        "thoughtsTokenCount": 5,
        "toolUsePromptTokenCount": 7,
        "totalTokenCount": 285 + 30 + 5 + 7,
        "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 285}],
        "cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 100}],
        "toolUsePromptTokensDetails": [{"modality": "TEXT", "tokenCount": 7}],
        "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 30}],
    }
    # Text frames are read like binary ones (the SDK accepts both).
    assert meter.feed(json.dumps({"usageMetadata": second}))
    assert meter.reports == 2 and meter.parse_errors == 0
    assert meter.usage == Usage(
        input_tokens=69 + 285,
        cached_tokens=100,
        intermediate_tokens=7,
        output_tokens=176 + 30,
        thinking_tokens=5,
        total_tokens=245 + 327,
        input_by_modality={"audio": 58 + 285, "text": 11},
        cached_by_modality={"audio": 100},
        intermediate_by_modality={"text": 7},
        output_by_modality={"text": 26, "audio": 180},
    )


def test_the_sdk_spelling_is_read_too() -> None:
    meter = LiveMeter()
    assert meter.feed(
        frame({"usage_metadata": {"prompt_token_count": 4, "response_token_count": 2}})
    )
    assert (meter.usage.input_tokens, meter.usage.output_tokens) == (4, 2)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"usageMetadata": {"promptTokenCount": "many"}}',
        b'{"usageMetadata": {"promptTokenCount": -1}}',
        b'{"usageMetadata": [1, 2]}',
        b'{"usageMetadata": {"promptTokenCount": 1',  # cut off
        b"\xff usageMetadata \xfe",
    ],
)
def test_an_unreadable_usage_is_flagged_never_guessed(raw: bytes) -> None:
    meter = LiveMeter()
    assert not meter.feed(raw)
    assert meter.parse_errors == 1 and meter.usage == Usage()


def test_a_model_that_talks_about_usage_metadata_is_not_an_error() -> None:
    meter = LiveMeter()
    text = {"serverContent": {"modelTurn": {"parts": [{"text": "usageMetadata is a field"}]}}}
    assert not meter.feed(frame(text))
    assert meter.parse_errors == 0 and meter.turn_open


def test_the_model_comes_from_the_setup_message() -> None:
    assert setup_model('{"setup": {"model": "models/gemini-live-2.5-flash"}}') == (
        "gemini-live-2.5-flash"
    )
    assert setup_model(b'{"setup": {"model": "gemini-x"}}') == "gemini-x"
    for not_setup in ('{"clientContent": {}}', "[]", "nonsense", '{"setup": {"model": 3}}'):
        assert setup_model(not_setup) is None


@pytest.mark.parametrize(
    ("code", "vanished", "expected"),
    [
        (1000, "client", 1000),
        (1007, "upstream", 1007),  # Google's "invalid argument" close goes on as it came
        (4000, "client", 4000),
        (1005, "upstream", 1000),  # a close frame without a status: a normal close
        (None, "upstream", 1014),  # the upstream dropped: "bad gateway" to the client
        (1006, "upstream", 1014),
        (None, "client", 1001),  # the client dropped: "going away" to the upstream
        (1015, "client", 1001),
        (2000, "upstream", 1014),  # unassigned: not forwarded as if it meant something
        (70000, "client", 1001),
    ],
)
def test_close_codes_that_cannot_be_sent_are_replaced(
    code: int | None, vanished: str, expected: int
) -> None:
    assert relayed_close(code, vanished_side=vanished) == expected
