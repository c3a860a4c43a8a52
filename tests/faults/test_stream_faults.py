"""Streams cut short by an upstream that resets mid-stream. Each ends with the
database compared to what the upstream served (its ledger and its own figures)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.factories import UPSTREAM_KEY, StackFactory, raw
from tests.faults.helpers import cutting_upstream, served

CREATE = "/v1beta/interactions"
STREAM_GENERATE = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
PROMPT = {"contents": [{"role": "user", "parts": [{"text": "Tell me about cut streams."}]}]}


async def _cut_stack(make_stack: StackFactory, aiohttp_server: Any, events: int) -> Any:
    async def wrap(emulator_url: str) -> str:
        relay = await aiohttp_server(cutting_upstream(emulator_url, events))
        return str(relay.make_url("")).rstrip("/")

    return await make_stack(wrap_upstream=wrap)


async def _read_cut(response: aiohttp.ClientResponse) -> bytes:
    received = b""
    try:
        async for chunk in response.content.iter_any():
            received += chunk
    except aiohttp.ClientPayloadError:
        pass  # the proxy closes the connection: the client sees the body is not whole
    return received


async def test_an_interaction_stream_reset_upstream_is_provisional_until_its_terminal_usage(
    make_stack: StackFactory, aiohttp_server: Any
):
    # Two events get through (the interaction is named), then the upstream resets.
    stack = await _cut_stack(make_stack, aiohttp_server, events=2)
    body = {"model": "gemini-3.5-flash", "input": "Say hello after a cut.", "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url(CREATE), headers=stack.headers(), json=body) as response,
    ):
        assert response.status == 200
        await _read_cut(response)
    [iid] = list(stack.upstream.interactions)
    [record] = await stack.records()
    assert (record["interaction_id"], record["provisional"]) == (iid, True)
    assert record["parse_error"] is False

    # The interaction went on upstream; a GET through the proxy sees it completed.
    status, _, answer = await raw("GET", stack.url(f"{CREATE}/{iid}"), headers=stack.headers())
    assert status == 200
    # the upstream's own figure for it, asked directly
    upstream_url = str(stack.emulator.make_url(f"{CREATE}/{iid}"))
    _, _, direct = await raw("GET", upstream_url, headers={"x-goog-api-key": UPSTREAM_KEY})
    total = json.loads(direct)["usage"]["total_tokens"]
    assert total > 0
    [record] = await stack.records()  # still one row per interaction
    assert (record["interaction_id"], record["provisional"], record["total_tokens"]) == (
        iid,
        False,
        total,
    )


async def test_a_generate_stream_reset_upstream_is_recorded_with_the_usage_seen(
    make_stack: StackFactory, aiohttp_server: Any
):
    stack = await _cut_stack(make_stack, aiohttp_server, events=1)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.url(STREAM_GENERATE + "?alt=sse"), headers=stack.headers(), json=PROMPT
        ) as response,
    ):
        assert response.status == 200
        received = await _read_cut(response)
    assert served(stack.upstream, STREAM_GENERATE) == 1
    [record] = await stack.records()
    event = json.loads(received.split(b"data:", 1)[1].split(b"\n", 1)[0])
    seen = event.get("usageMetadata", {}).get("totalTokenCount", 0)
    assert record["total_tokens"] == seen
    assert record["response_id"] == event["responseId"]
    assert record["parse_error"] is (seen == 0)
