"""Continuations end to end: the real SDK continues, the proxy bills every hop once.

An interaction that reaches the per-request decode limit ends
``requires_continuation`` with a ``continuation_token``; both SDKs then send
a new ``interactions.create`` with that token and ``previous_interaction_id``
= the hop that issued it, until a hop completes. Each hop is its own
interaction on the server and reports only its own usage (it re-prefills the
context and bills that input again: "each continuation hop re-prefills and
bills input tokens", google-genai ``_interactions_continuation.py``); the
SDKs add the hops' usages up for the caller (``merge_unary_hops``,
``mergeUsages`` in @google/genai). So the meter bills each hop on its own
response, once: the sum of the hop records is what the SDK reports, never
more (nothing is cumulative across hops to double count).

generateContent continues the same way (``finishReason: CONTINUATION`` and a
``continuationToken`` on the candidate, the request sent again with it), and
is billed the same way.

The emulator is asked for the hops by its ``x-emulator-continuations``
trigger; the figures below are worked by hand from its documented rules.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import warnings
from pathlib import Path
from typing import Any, Final

import pytest
from google.genai import types

from tests.factories import Stack, interaction_usage, usage_metadata

# Final: its literal is one of the SDK's Model names, so create() is typed by its overloads.
MODEL: Final = "gemini-2.5-flash"
PROMPT = "Hello there friend"
TWO_MORE_HOPS = {"x-emulator-continuations": "2"}
# The answer 'Emulated reply from gemini-2.5-flash. You said: "Hello there
# friend".' is 69 characters, cut into three hops of 23 (6 tokens each); the
# prompt is 18 characters (5 tokens); the model thinks 128 tokens (the
# emulator's default level), in the first hop. A hop's input is the context
# so far (the previous hop's input and output), of which the previous hop's
# input is reported cached. (input, cached, output, thinking, total) per hop:
HOPS = [(5, 0, 6, 128, 139), (11, 5, 6, 0, 17), (17, 11, 6, 0, 23)]


def figures(record: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return (
        record["input_tokens"],
        record["cached_tokens"],
        record["output_tokens"],
        record["thinking_tokens"],
        record["total_tokens"],
    )


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
async def test_automatic_continuation_is_billed_hop_by_hop(stack: Stack, stream: bool):
    client = stack.sdk("alice")
    if stream:
        events = [
            event
            async for event in await client.aio.interactions.create(
                model=MODEL, input=PROMPT, stream=True, extra_headers=TWO_MORE_HOPS
            )
        ]
        completed = [e.interaction for e in events if e.event_type == "interaction.completed"]
        hop_ids = [hop.id for hop in completed]
        sdk_total = sum(hop.usage.total_tokens for hop in completed)
        assert [hop.status for hop in completed][-1] == "completed"
    else:
        merged = await client.aio.interactions.create(
            model=MODEL, input=PROMPT, extra_headers=TWO_MORE_HOPS
        )
        assert merged.status == "completed" and merged.continuation_ids is not None
        hop_ids = list(merged.continuation_ids)
        sdk_total = interaction_usage(merged).total_tokens  # the SDK's sum over the hops
    assert len(hop_ids) == 3

    records = await stack.records()
    # One record per hop, each on its own interaction and its own usage.
    assert [r["interaction_id"] for r in records] == hop_ids
    assert [figures(r) for r in records] == HOPS
    assert [r["previous_interaction_id"] for r in records] == [None, *hop_ids[:-1]]
    assert [(r["streamed"], r["parse_error"]) for r in records] == [(stream, False)] * 3
    alice = await stack.user_id("alice")
    assert all(r["user_id"] == alice for r in records)
    assert [r["cost_usd"] is not None for r in records] == [True] * 3
    # Billed once: the hops add up to what the SDK reports, which is also
    # what the upstream served, hop by hop.
    assert sum(r["total_tokens"] for r in records) == sdk_total == 139 + 17 + 23
    served = [stack.upstream.interactions[i].resource(usage_mode=None) for i in hop_ids]
    assert [s["usage"]["total_tokens"] for s in served] == [r["total_tokens"] for r in records]
    assert [s["status"] for s in served] == ["requires_continuation"] * 2 + ["completed"]

    # Three creates reached the upstream: the first and two continuations.
    creates = [r for r in stack.upstream.requests if r.path.endswith("/interactions")]
    assert len(creates) == 3


async def test_a_continuation_of_someone_elses_interaction_is_refused(stack: Stack):
    alice = stack.sdk("alice")
    with warnings.catch_warnings():
        # The SDK warns (once per process) that the interaction was left uncontinued.
        warnings.simplefilter("ignore", UserWarning)
        first = await alice.aio.interactions.create(
            model=MODEL, input=PROMPT, extra_headers=TWO_MORE_HOPS, automatic_continuation=False
        )
    assert first.status == "requires_continuation" and first.continuation_token
    assert first.id is not None
    before = len(stack.upstream.requests)
    bob = stack.sdk("bob")
    with pytest.raises(Exception) as refused:
        await bob.aio.interactions.create(
            model=MODEL,
            continuation_token=first.continuation_token,
            previous_interaction_id=first.id,
        )
    assert getattr(refused.value, "status_code", None) in (403, 404)
    assert len(stack.upstream.requests) == before  # never reached the upstream
    [record] = await stack.records()
    assert figures(record) == HOPS[0]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
async def test_generate_content_continuation_is_billed_hop_by_hop(stack: Stack, stream: bool):
    # generateContent continues the same way: a hop that stops with
    # finishReason CONTINUATION carries a continuationToken, the SDK sends the
    # same request again with it, and adds the hops' usage up ("each hop is a
    # separate request", google-genai _extra_utils.StreamContinuation).
    client = stack.sdk("alice")
    config = types.GenerateContentConfig(http_options=types.HttpOptions(headers=TWO_MORE_HOPS))
    if stream:
        chunks = [
            chunk
            async for chunk in await client.aio.models.generate_content_stream(
                model=MODEL, contents=PROMPT, config=config
            )
        ]
        # Each chunk's usage is the SDK's running sum over the hops so far.
        sdk_total = usage_metadata(chunks[-1]).total_token_count
        text = "".join(chunk.text or "" for chunk in chunks)
    else:
        merged = await client.aio.models.generate_content(
            model=MODEL, contents=PROMPT, config=config
        )
        sdk_total = usage_metadata(merged).total_token_count
        assert merged.text is not None
        text = merged.text
    assert text.endswith('"Hello there friend".')

    records = await stack.records()
    assert [figures(r) for r in records] == HOPS
    assert len({r["response_id"] for r in records}) == 3  # three responses, three records
    assert [r["streamed"] for r in records] == [stream] * 3
    assert sum(r["total_tokens"] for r in records) == sdk_total == 139 + 17 + 23
    assert len(stack.upstream.requests) == 3


# --------------------------------------------------------------------------- the JavaScript SDK

JS_DIR = Path(__file__).parent / "js"


@pytest.fixture(scope="session")
def js_sdk() -> Path:
    """``tests/js`` with @google/genai installed (``npm ci`` from the committed lock).

    The CI script installs it before the suite; a checkout without it
    installs it here, from the package registry npm is configured with.
    """
    if not (JS_DIR / "node_modules" / "@google" / "genai" / "package.json").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(JS_DIR)],
            check=True,
            capture_output=True,
        )
    return JS_DIR


async def test_the_javascript_sdk_continues_and_each_hop_is_billed_once(stack: Stack, js_sdk: Path):
    process = await asyncio.create_subprocess_exec(
        "node",
        str(js_sdk / "continuation.mjs"),
        stack.base_url,
        stack.keys["carol"],
        MODEL,
        PROMPT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    seen = json.loads(stdout)

    unary, streamed = seen["unary"], seen["streamed"]
    assert unary["status"] == "completed" and unary["text"].endswith('"Hello there friend".')
    assert len(unary["ids"]) == len(streamed["ids"]) == 3
    assert streamed["statuses"] == ["requires_continuation"] * 2 + ["completed"]

    records = await stack.records()
    assert [r["interaction_id"] for r in records] == unary["ids"] + streamed["ids"]
    assert [figures(r) for r in records] == HOPS + HOPS
    assert [r["streamed"] for r in records] == [False] * 3 + [True] * 3
    carol = await stack.user_id("carol")
    assert {r["user_id"] for r in records} == {carol}
    # What the JavaScript SDK reports is the sum of the hop records: each hop
    # billed once, the merge adds nothing.
    assert unary["usage"]["total_tokens"] == sum(r["total_tokens"] for r in records[:3])
    assert unary["usage"]["total_input_tokens"] == 5 + 11 + 17
    assert unary["usage"]["initial_input_tokens"] == 5
    assert [u["total_tokens"] for u in streamed["usages"]] == [h[-1] for h in HOPS]
