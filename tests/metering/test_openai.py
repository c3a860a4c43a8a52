"""The OpenAI-shaped usage of Gemini's compat endpoint, mapped onto the five categories: pure.

Fixtures are the shapes the sources show: OpenAI's reference (reasoning counted inside
``completion_tokens``), and the stream Google's endpoint sent in the report on
discuss.ai.google.dev thread 127400 (February 2026, read 2026-11-29), whose chunks carried
``{"completion_tokens": 1, "prompt_tokens": 9, "total_tokens": 103}`` then ``3 / 9 / 105``:
the 93 tokens beyond prompt and completion are the thinking of a thinking model.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.metering.openai import (
    OpenAIChatStreamTap,
    OpenAIImagesStreamTap,
    UsageChunkFilter,
    ask_stream_usage,
    estimate_embeddings_usage,
    images_in_data,
    openai_images_requested,
    summarize_chat,
    summarize_embeddings,
    summarize_images,
    usage_from_openai,
    usage_from_openai_images,
)
from proxy.metering.parsers import UsageParseError
from proxy.metering.records import Usage


def test_openai_convention_reasoning_inside_completion():
    # OpenAI: total = prompt + completion, and reasoning is part of the completion.
    usage = usage_from_openai(
        {
            "prompt_tokens": 120,
            "completion_tokens": 300,
            "total_tokens": 420,
            "prompt_tokens_details": {"cached_tokens": 100},
            "completion_tokens_details": {"reasoning_tokens": 256},
        }
    )
    # output 300 - 256 = 44, thinking 256
    assert usage == Usage(
        input_tokens=120,
        cached_tokens=100,
        output_tokens=44,
        thinking_tokens=256,
        total_tokens=420,
    )
    assert not usage.total_mismatch


def test_geminis_convention_thoughts_only_in_the_total():
    # Google's endpoint (thread 127400): 9 prompt, 3 completion, 105 total.
    usage = usage_from_openai({"completion_tokens": 3, "prompt_tokens": 9, "total_tokens": 105})
    # 105 - 9 - 3 = 93 thinking tokens, billed at the output rate
    assert (usage.input_tokens, usage.output_tokens, usage.thinking_tokens) == (9, 3, 93)
    assert usage.total_tokens == 105
    assert not usage.total_mismatch


def test_reasoning_reported_beside_the_completion():
    # completion_tokens 20 excludes the 128 reported reasoning tokens: 14 + 20 + 128 = 162
    usage = usage_from_openai(
        {
            "prompt_tokens": 14,
            "completion_tokens": 20,
            "total_tokens": 162,
            "completion_tokens_details": {"reasoning_tokens": 128},
        }
    )
    assert (usage.output_tokens, usage.thinking_tokens, usage.total_tokens) == (20, 128, 162)


def test_reasoning_larger_than_the_completion_cannot_be_part_of_it():
    # no total to tell: 60 reasoning cannot be inside 0 completion tokens
    usage = usage_from_openai(
        {
            "prompt_tokens": 21,
            "completion_tokens": 0,
            "completion_tokens_details": {"reasoning_tokens": 60},
        }
    )
    assert (usage.output_tokens, usage.thinking_tokens, usage.total_tokens) == (0, 60, 81)


def test_without_a_total_the_completion_is_all_output():
    usage = usage_from_openai({"prompt_tokens": 5, "completion_tokens": 7})
    assert (usage.output_tokens, usage.thinking_tokens, usage.total_tokens) == (7, 0, 12)


def test_a_total_below_its_parts_is_kept_and_shows_as_a_mismatch():
    usage = usage_from_openai({"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 5})
    assert (usage.output_tokens, usage.thinking_tokens) == (10, 0)
    assert usage.total_tokens == 5 and usage.total_mismatch


def test_modalities_in_the_details():
    usage = usage_from_openai(
        {
            "prompt_tokens": 300,
            "completion_tokens": 50,
            "total_tokens": 350,
            "prompt_tokens_details": {"audio_tokens": 160, "image_tokens": 0, "cached_tokens": 0},
            "completion_tokens_details": {"audio_tokens": 30},
        }
    )
    # what the details do not name is text: 300 - 160 = 140, 50 - 30 = 20
    assert usage.input_by_modality == {"audio": 160, "text": 140}
    assert usage.output_by_modality == {"audio": 30, "text": 20}
    # no modality named: no breakdown (priced as text)
    plain = usage_from_openai({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    assert plain.input_by_modality == plain.output_by_modality == {}


def test_nulls_are_zero_like_missing_counts():
    usage = usage_from_openai(
        {
            "prompt_tokens": 4,
            "completion_tokens": 2,
            "total_tokens": 6,
            "prompt_tokens_details": None,
            "completion_tokens_details": {"reasoning_tokens": None, "audio_tokens": None},
        }
    )
    assert (usage.input_tokens, usage.output_tokens, usage.thinking_tokens) == (4, 2, 0)


@pytest.mark.parametrize(
    "raw",
    [
        "usage",
        {"prompt_tokens": "9"},
        {"prompt_tokens": 9, "completion_tokens": -1},
        {"prompt_tokens": 9, "completion_tokens": True},
        {"prompt_tokens": 9, "total_tokens": 10.0},
        {"prompt_tokens": 9, "prompt_tokens_details": []},
        {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": "4"}},
        {"prompt_tokens": 9, "completion_tokens_details": {"reasoning_tokens": -3}},
    ],
)
def test_malformed_usage_raises(raw: object):
    with pytest.raises(UsageParseError):
        usage_from_openai(raw)


def test_summarize_chat():
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gemini-2.5-flash",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 105},
    }
    summary = summarize_chat(body)
    assert summary.response_id == "chatcmpl-1"
    assert summary.model == "gemini-2.5-flash"
    assert summary.usage is not None and summary.usage.thinking_tokens == 93
    assert not summary.parse_error
    broken: object
    for broken in ({**body, "usage": None}, {**body, "usage": {"prompt_tokens": "x"}}, [], None):
        flagged = summarize_chat(broken)
        assert flagged.parse_error and flagged.usage is None


def test_embeddings_usage_reported_estimated_or_flagged():
    request = {"model": "gemini-embedding-001", "input": ["What is the meaning of life?", "abc"]}
    reported = summarize_embeddings({"usage": {"prompt_tokens": 11, "total_tokens": 11}}, request)
    assert reported.usage == Usage(input_tokens=11, total_tokens=11)
    assert not reported.estimated and not reported.parse_error
    # 28 characters -> 7, 3 -> 1: 8 tokens counted by the proxy
    missing = summarize_embeddings({"object": "list", "data": []}, request)
    assert missing.usage == Usage(input_tokens=8, total_tokens=8)
    assert missing.estimated and not missing.parse_error
    malformed = summarize_embeddings({"usage": {"prompt_tokens": "11"}}, request)
    assert malformed.estimated and malformed.parse_error
    assert malformed.usage is not None and malformed.usage.input_tokens == 8
    nothing = summarize_embeddings(b"garbage", {"input": 5})
    assert nothing.parse_error and nothing.usage is None


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        ("abcde", 2),  # ceil(5 / 4)
        (["abcd", "e"], 2),  # 1 + 1, rounded per input
        ([101, 102, 103], 3),  # one token array: its length
        ([[1, 2], [3]], 3),  # token arrays
        ("", 0),
    ],
)
def test_embeddings_estimate(value: object, tokens: int):
    assert estimate_embeddings_usage({"input": value}) == Usage(
        input_tokens=tokens, total_tokens=tokens
    )


@pytest.mark.parametrize("value", [[], [1, "a"], [["a"]], {"text": "a"}, None])
def test_embeddings_estimate_needs_a_known_input(value: object):
    assert estimate_embeddings_usage({"input": value}) is None


# --- images -------------------------------------------------------------------------------
#
# ``ImagesResponse`` as the openai SDK 3.57.0 types it; Google's guide reads
# ``data[].b64_json``. Whether Google's answer carries ``usage`` is not confirmed: both
# answers are read.

PNG = "iVBORw0KGgo="
IMAGE_USAGE = {
    "input_tokens": 11,
    "input_tokens_details": {"text_tokens": 11, "image_tokens": 0},
    "output_tokens": 1290,
    "output_tokens_details": {"image_tokens": 1290, "text_tokens": 0},
    "total_tokens": 1301,
}


def test_images_count_only_entries_with_image_bytes_or_a_url():
    data = [
        {"b64_json": PNG},
        {"url": "https://example.invalid/a.png", "revised_prompt": "a cat"},
        # a filtered image: no bytes, no URL (or only what it was asked for): not billed
        {"revised_prompt": "a cat"},
        {"b64_json": ""},
        {"b64_json": None, "url": None},
        {"b64_json": 7},
        "junk",
        None,
    ]
    assert images_in_data({"created": 1, "data": data}) == 2
    assert images_in_data({"created": 1, "data": []}) == 0


@pytest.mark.parametrize(
    "payload", [None, [], "data", {}, {"created": 1}, {"data": {"b64_json": PNG}}, {"data": None}]
)
def test_an_answer_without_a_data_list_is_no_count(payload: object):
    assert images_in_data(payload) is None
    for per_image in (True, False):
        summary = summarize_images(payload, per_image=per_image)
        assert summary.parse_error
        assert summary.usage == Usage()


def test_a_per_image_model_bills_its_images_whatever_usage_says():
    # Imagen is priced per image: tokens it might report are not its bill
    payload = {"created": 1, "data": [{"b64_json": PNG}] * 3, "usage": IMAGE_USAGE}
    summary = summarize_images(payload, per_image=True)
    assert summary.usage == Usage(images=3)
    assert not summary.parse_error


def test_a_token_priced_model_bills_the_usage_reported():
    payload = {"created": 1, "data": [{"b64_json": PNG}], "usage": IMAGE_USAGE}
    summary = summarize_images(payload, per_image=False)
    assert summary.usage == Usage(
        input_tokens=11,
        output_tokens=1290,
        total_tokens=1301,
        input_by_modality={"text": 11},
        output_by_modality={"image": 1290},
    )
    assert not summary.parse_error


def test_a_token_priced_model_without_usage_counts_its_images():
    # no price per image: the record is unpriced, never billed as free
    payload = {"created": 1, "data": [{"b64_json": PNG}, {"revised_prompt": "x"}]}
    summary = summarize_images(payload, per_image=False)
    assert summary.usage == Usage(images=1)
    assert not summary.parse_error


def test_malformed_usage_is_flagged_and_the_images_counted():
    payload = {"data": [{"b64_json": PNG}], "usage": {"input_tokens": "11"}}
    summary = summarize_images(payload, per_image=False)
    assert summary.parse_error
    assert summary.usage == Usage(images=1)


def test_image_usage_without_details_is_image_output_and_the_rest_thinking():
    # output unsplit: billed as image tokens (this route's output, the dearer rate);
    # 1500 - 20 - 1120 = 360 beyond prompt and output: a thinking model's thoughts
    usage = usage_from_openai_images(
        {"input_tokens": 20, "output_tokens": 1120, "total_tokens": 1500}
    )
    assert usage == Usage(
        input_tokens=20,
        output_tokens=1120,
        thinking_tokens=360,
        total_tokens=1500,
        output_by_modality={"image": 1120},
    )
    # split by the details (what they leave out counts as text), and no total given
    split = usage_from_openai_images(
        {
            "input_tokens": 300,
            "input_tokens_details": {"image_tokens": 258},
            "output_tokens": 1300,
            "output_tokens_details": {"image_tokens": 1290},
        }
    )
    assert split.input_by_modality == {"image": 258, "text": 42}
    assert split.output_by_modality == {"image": 1290, "text": 10}
    assert (split.total_tokens, split.thinking_tokens) == (1600, 0)
    assert usage_from_openai_images({}) == Usage()


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"input_tokens": -1},
        {"output_tokens": 1.5},
        {"total_tokens": True},
        {"input_tokens_details": "text"},
        {"output_tokens": 3, "output_tokens_details": {"image_tokens": "3"}},
    ],
)
def test_malformed_image_usage_raises(raw: object):
    with pytest.raises(UsageParseError):
        usage_from_openai_images(raw)


@pytest.mark.parametrize(
    ("body", "n"),
    [
        ({"model": "m", "prompt": "x"}, 1),  # OpenAI's default
        ({"n": 4}, 4),
        ({"n": 10}, 10),
        ({"n": 0}, 1),
        ({"n": "3"}, 1),
        ({"n": True}, 1),
        ({"n": 10_000}, 1),
        (None, 1),
        ([], 1),
    ],
)
def test_images_requested(body: object, n: int):
    assert openai_images_requested(body) == n


def image_event(kind: str, **fields: object) -> dict[str, object]:
    return {"type": f"image_generation.{kind}", **fields}


@pytest.mark.parametrize("size", [1, 9, 4096])
def test_the_images_stream_tap_counts_completed_images(size: int):
    # OpenAI's image stream: partial images, then one completed event per image
    body = sse(
        image_event("partial_image", b64_json=PNG, partial_image_index=0),
        image_event("completed", b64_json=PNG, usage=IMAGE_USAGE),
        image_event("completed", b64_json=PNG),
        image_event("completed"),  # no image: not billed
    )
    tap = OpenAIImagesStreamTap(per_image=True)
    for start in range(0, len(body), size):
        tap.feed(body[start : start + size])
    summary = tap.finish()
    assert summary.usage == Usage(images=2)
    assert not summary.parse_error
    assert tap.finish() is summary


def test_an_images_stream_the_meter_cannot_bill_is_flagged():
    def summary(body: bytes, per_image: bool = True) -> tuple[Usage | None, bool]:
        tap = OpenAIImagesStreamTap(per_image=per_image)
        tap.feed(body)
        result = tap.finish()
        return result.usage, result.parse_error

    completed = sse(image_event("completed", b64_json=PNG, usage=IMAGE_USAGE))
    # a token-priced model: its stream's usage is not read, so the record is flagged
    assert summary(completed, per_image=False) == (Usage(images=1), True)
    # a chat-like stream, no completed image at all
    assert summary(sse(content("Hello"))) == (Usage(), True)
    assert summary(b"data: {oops\n\n" + completed) == (Usage(images=1), True)
    assert summary(b"") == (Usage(), True)


images_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "created",
                    "data",
                    "b64_json",
                    "url",
                    "usage",
                    *IMAGE_USAGE,
                    "image_tokens",
                    "text_tokens",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=25,
)


@given(images_like, st.booleans())
def test_image_answers_never_raise(payload: object, per_image: bool) -> None:
    summary = summarize_images(payload, per_image=per_image)
    assert summary.usage is not None
    assert min(summary.usage.images, summary.usage.input_tokens, summary.usage.output_tokens) >= 0
    if per_image or not isinstance(payload, dict) or payload.get("usage") is None:
        # billed by its images: exactly the entries with an image, and no tokens
        assert summary.usage == Usage(images=images_in_data(payload) or 0)
    tap = OpenAIImagesStreamTap(per_image=per_image)
    tap.feed(b"data: " + json.dumps(payload).encode() + b"\n\n")
    assert tap.finish().usage is not None


# --- streams ------------------------------------------------------------------------------


def sse(*chunks: object) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + (
        b"data: [DONE]\n\n"
    )


def content(text: str, usage: object = None) -> dict[str, object]:
    chunk: dict[str, object] = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "gemini-2.5-flash",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


USAGE_ONLY = {
    "id": "c1",
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 105},
}


def tap_over(body: bytes, size: int) -> OpenAIChatStreamTap:
    tap = OpenAIChatStreamTap()
    for start in range(0, len(body), size):
        tap.feed(body[start : start + size])
    return tap


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_the_stream_tap_takes_the_last_running_usage_never_a_sum(size: int):
    # Google's endpoint sent running totals on every chunk (thread 127400)
    body = sse(
        content("1", {"completion_tokens": 1, "prompt_tokens": 9, "total_tokens": 103}),
        content(", ", {"completion_tokens": 3, "prompt_tokens": 9, "total_tokens": 105}),
    )
    summary = tap_over(body, size).finish()
    assert summary.usage is not None
    # the last figure alone: 9 input, 3 output, 93 thinking (adding them up would give 18 input)
    assert (summary.usage.input_tokens, summary.usage.output_tokens) == (9, 3)
    assert summary.usage.thinking_tokens == 93
    assert summary.response_id == "c1" and summary.model == "gemini-2.5-flash"
    assert not summary.parse_error


def test_the_stream_tap_reads_openais_usage_only_chunk():
    summary = tap_over(sse(content("Hel"), content("lo"), USAGE_ONLY), 5).finish()
    assert summary.usage is not None and summary.usage.total_tokens == 105
    assert not summary.parse_error


def test_a_stream_without_usage_or_with_garbage_is_flagged():
    no_usage = tap_over(sse(content("Hello")), 3).finish()
    assert no_usage.parse_error and no_usage.usage is None
    garbage = tap_over(b"data: {oops\n\n" + sse(USAGE_ONLY), 3).finish()
    assert garbage.parse_error and garbage.usage is not None
    malformed = tap_over(sse({**USAGE_ONLY, "usage": {"prompt_tokens": -1}}), 64).finish()
    assert malformed.parse_error and malformed.usage is None
    # after [DONE] nothing counts
    after = tap_over(sse(USAGE_ONLY) + b'data: {"usage": {"prompt_tokens": 1}}\n\n', 64)
    usage = after.finish().usage
    assert usage is not None and usage.input_tokens == 9


def test_ask_stream_usage():
    body = {"model": "m", "stream": True, "stream_options": {"other": 1}}
    assert ask_stream_usage(body) == {
        "model": "m",
        "stream": True,
        "stream_options": {"other": 1, "include_usage": True},
    }
    assert body["stream_options"] == {"other": 1}  # the parsed body is not changed in place
    assert ask_stream_usage({"model": "m", "stream": True})["stream_options"] == {  # type: ignore[index]
        "include_usage": True
    }
    # nothing to do: not streamed, already asked, or options the upstream must judge
    assert ask_stream_usage({"stream": False}) is None
    assert ask_stream_usage({"stream": "true"}) is None
    assert ask_stream_usage({"stream": True, "stream_options": {"include_usage": True}}) is None
    assert ask_stream_usage({"stream": True, "stream_options": "yes"}) is None
    assert ask_stream_usage([1]) is None


def run_filter(body: bytes, size: int) -> bytes:
    relay = UsageChunkFilter()
    out = b"".join(relay.feed(body[i : i + size]) for i in range(0, len(body), size))
    return out + relay.close()


@pytest.mark.parametrize("size", [1, 2, 5, 64, 100_000])
def test_the_filter_drops_the_usage_only_chunk_and_nothing_else(size: int):
    kept = [
        b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n',
        # usage beside choices is the upstream's own: kept, byte for byte
        b'data: {"choices":[{"index":0,"delta":{"content":"lo"}}],"usage":{"prompt_tokens":1}}'
        b"\r\n\r\n",
        b": a comment event\n\n",
        b'data: {"error": {"code": 500}}\n\n',
    ]
    dropped = b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":9}}\n\n'
    done = b"data: [DONE]\n\n"
    assert run_filter(b"".join([*kept, dropped, done]), size) == b"".join([*kept, done])


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_the_filter_passes_an_unterminated_tail_at_close(size: int):
    assert (
        run_filter(b'data: {"choices":[{"delta":{}}]}', size) == b'data: {"choices":[{"delta":{}}]}'
    )
    # a usage-only chunk the stream ended on without its blank line is still dropped
    assert run_filter(b'data: {"choices":[],"usage":{"total_tokens":1}}\n', size) == b""


def test_the_filter_relays_each_event_as_soon_as_it_is_complete():
    relay = UsageChunkFilter()
    assert relay.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n') == b""
    assert relay.feed(b"\ndata: [DO") == b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    assert relay.feed(b"NE]\r\r") == b"data: [DONE]\r\r"
