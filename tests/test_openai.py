"""The OpenAI-compatible endpoint end to end: the real ``openai`` SDK through the proxy.

``AsyncOpenAI(base_url=<proxy>/v1beta/openai/, api_key=<virtual key>)``, as Google's
OpenAI-compatibility guide configures it, talks to the proxy over loopback, the proxy to
the emulator, and the records land in SQLite and PostgreSQL. Each record is compared with
the emulator's ledger (``openai_ledger_key``: what it billed, in its own counts) and priced
by hand. gemini-2.5-flash (prices.toml, entry of 2025-10-08): input $0.30, cached $0.03,
output $2.50 per 1M tokens; gemini-embedding-001: input $0.15. Image generation: Imagen 4
$0.04 per image, Imagen 4 Fast $0.02 (entries of 2025-10-08); gemini-2.5-flash-image input
$0.30, image output $30.00 per 1M tokens, 1,290 tokens an image in the emulator.

The emulator's figures: text is ceil(characters / 4); every message before the last is
cached; gemini-2.5-flash thinks 128 tokens (medium); its reply to "Explain to me how AI
works" is ``Emulated reply from gemini-2.5-flash. You said: "Explain to me how AI
works".``, 77 characters, so 20 output tokens.
"""

from __future__ import annotations

import contextlib
import gzip
import json
from decimal import Decimal
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionSystemMessageParam, ChatCompletionUserMessageParam

from proxy.emulator.openai import OpenAIServed, openai_ledger_key
from proxy.server.auth import PresentedKey
from proxy.server.typedefs import authenticator_key, budgets_key, metrics_key
from proxy.storage.schema import ResourceKind
from tests.factories import (
    UPSTREAM_KEY,
    RecordingUpstream,
    Stack,
    StackFactory,
    add_budget,
    add_spend,
    gemini_error,
    metric_sum,
    raw,
    sqlite_only,
)

MODEL = "gemini-2.5-flash"
# 28 characters: 7 tokens
SYSTEM: ChatCompletionSystemMessageParam = {
    "role": "system",
    "content": "You are a helpful assistant.",
}
# 26 characters: 7 tokens
QUESTION: ChatCompletionUserMessageParam = {"role": "user", "content": "Explain to me how AI works"}
ANSWER = 'Emulated reply from gemini-2.5-flash. You said: "Explain to me how AI works".'
CHAT = "/v1beta/openai/chat/completions"


def client_for(stack: Stack, user: str = "alice") -> AsyncOpenAI:
    # No retries: a refused or failed call is asserted on as the first answer.
    return AsyncOpenAI(
        base_url=stack.url("/v1beta/openai/"), api_key=stack.keys[user], max_retries=0
    )


def ledger(stack: Stack) -> list[OpenAIServed]:
    return stack.emulator.app[openai_ledger_key]


def assert_record_is_the_ledger(record: dict[str, Any], served: OpenAIServed) -> None:
    """Input, cached, output and thinking as the emulator billed them; no tool use."""
    assert record["input_tokens"] == served.prompt_tokens
    assert record["cached_tokens"] == served.cached_tokens
    assert record["output_tokens"] == served.completion_tokens
    assert record["thinking_tokens"] == served.reasoning_tokens
    assert record["intermediate_tokens"] == 0
    assert record["total_tokens"] == served.total_tokens
    assert record["model"] == served.model
    assert record["parse_error"] is False
    assert record["unmetered_route"] is False


def assert_upstream_saw_the_proxys_key(stack: Stack, path: str) -> None:
    """The one request that reached the upstream, at ``path``, carried the proxy's key and
    never the client's bearer token."""
    [seen] = list(stack.upstream.requests)
    assert seen.path == path
    assert seen.api_key == UPSTREAM_KEY
    assert "authorization" not in seen.headers


async def stack_on_stream(
    make_stack: StackFactory,
    aiohttp_server: Any,
    path: str,
    chunks: list[bytes],
    headers: dict[str, str] | None = None,
) -> Stack:
    """A stack whose upstream answers a POST to ``path`` with ``chunks``, written one by
    one as an event stream (with ``headers`` besides its Content-Type)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", **(headers or {})}
        )
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post(path, handle)
    upstream = await aiohttp_server(app)
    return await make_stack(upstream=str(upstream.make_url("")).rstrip("/"))


async def collect(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


async def test_chat_completion(stack: Stack):
    async with client_for(stack, "alice") as client:
        response = await client.chat.completions.create(model=MODEL, messages=[SYSTEM, QUESTION])
    assert response.choices[0].message.content == ANSWER
    [served] = ledger(stack)
    # the SDK parsed what Google's endpoint sends: thoughts only in the total
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (14, 20)
    assert response.usage.total_tokens == 14 + 20 + 128

    [record] = await stack.records()
    assert_record_is_the_ledger(record, served)
    assert (served.prompt_tokens, served.cached_tokens) == (14, 7)
    assert (served.completion_tokens, served.reasoning_tokens) == (20, 128)
    assert record["endpoint"] == "openai.chat_completions"
    assert record["user_id"] == await stack.user_id("alice")
    assert record["response_id"] == response.id
    assert record["streamed"] is False
    assert record["upstream_status"] == 200
    # 7 uncached x 0.30 = 2.10, 7 cached x 0.03 = 0.21, (20 + 128) x 2.50 = 370 -> 372.31 per 1M
    assert record["cost_usd"] == Decimal("0.00037231")
    assert record["cost_thinking_usd"] == Decimal("0.00032")
    assert_upstream_saw_the_proxys_key(stack, CHAT)


async def test_a_stream_without_include_usage_is_metered_and_stays_as_asked(stack: Stack):
    async with client_for(stack, "bob") as client:
        stream = await client.chat.completions.create(model=MODEL, messages=[QUESTION], stream=True)
        chunks = await collect(stream)
    # the client sees the stream it asked for: no usage-only chunk, no usage anywhere
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
    assert chunks[-1].choices[0].finish_reason == "stop"
    # ... while the proxy asked the upstream for the usage
    [served] = ledger(stack)
    assert served.stream and served.include_usage

    [record] = await stack.records()
    assert_record_is_the_ledger(record, served)
    assert record["streamed"] is True
    assert record["user_id"] == await stack.user_id("bob")
    # 7 x 0.30 = 2.10 and (20 + 128) x 2.50 = 370 -> 372.10 per 1M
    assert record["cost_usd"] == Decimal("0.0003721")


async def test_a_stream_with_include_usage_gets_its_usage_chunk(stack: Stack):
    async with client_for(stack, "carol") as client:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[SYSTEM, QUESTION],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = await collect(stream)
    *content, last = chunks
    assert all(chunk.choices and chunk.usage is None for chunk in content)
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (14, 20)

    [record] = await stack.records()
    assert_record_is_the_ledger(record, ledger(stack)[0])
    assert record["response_id"] == last.id
    assert record["cost_usd"] == Decimal("0.00037231")  # as the plain call, worked above


async def test_running_usage_on_every_chunk_is_taken_once(stack: Stack):
    # Google's endpoint was seen sending running totals on every chunk; adding them up
    # is the "50-60x inflation" its reporter saw (discuss.ai.google.dev thread 127400).
    headers = {"x-emulator-openai-usage": "every-chunk"}
    async with client_for(stack) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[QUESTION], stream=True, extra_headers=headers
        )
        chunks = await collect(stream)
    usages = [chunk.usage for chunk in chunks]
    assert len(usages) == 4 and all(u is not None and u.prompt_tokens == 7 for u in usages)
    assert sum(u.prompt_tokens for u in usages if u is not None) == 28

    [record] = await stack.records()
    assert_record_is_the_ledger(record, ledger(stack)[0])
    assert record["input_tokens"] == 7
    assert record["cost_usd"] == Decimal("0.0003721")


async def test_openais_convention_maps_to_the_same_record(stack: Stack):
    # completion_tokens with the reasoning inside, told apart by reasoning_tokens
    headers = {"x-emulator-openai-usage": "openai"}
    async with client_for(stack) as client:
        response = await client.chat.completions.create(
            model=MODEL, messages=[SYSTEM, QUESTION], extra_headers=headers
        )
    assert response.usage is not None
    assert response.usage.completion_tokens == 148
    assert response.usage.completion_tokens_details is not None
    assert response.usage.completion_tokens_details.reasoning_tokens == 128

    [record] = await stack.records()
    assert_record_is_the_ledger(record, ledger(stack)[0])
    assert (record["output_tokens"], record["thinking_tokens"]) == (20, 128)
    assert record["cost_usd"] == Decimal("0.00037231")


async def test_reasoning_effort_none_turns_thinking_off(stack: Stack):
    async with client_for(stack) as client:
        await client.chat.completions.create(
            model=MODEL, messages=[QUESTION], reasoning_effort="none"
        )
    [record] = await stack.records()
    assert record["thinking_tokens"] == 0 and record["output_tokens"] == 20
    # 7 x 0.30 + 20 x 2.50 = 52.10 per 1M
    assert record["cost_usd"] == Decimal("0.0000521")


async def test_embeddings(stack: Stack):
    async with client_for(stack, "bob") as client:
        response = await client.embeddings.create(
            model="gemini-embedding-001",
            input=["What is the meaning of life?", "How much wood would a woodchuck chuck?"],
        )
    # the SDK asked for base64 and decoded it: 8 floats per input
    assert [len(item.embedding) for item in response.data] == [8, 8]
    [served] = ledger(stack)
    # 28 characters -> 7, 38 -> ceil(9.5) = 10
    assert served.prompt_tokens == response.usage.prompt_tokens == 17

    [record] = await stack.records()
    assert record["endpoint"] == "openai.embeddings"
    assert record["model"] == "gemini-embedding-001"
    assert record["input_tokens"] == record["total_tokens"] == 17
    assert record["output_tokens"] == record["thinking_tokens"] == 0
    assert record["estimated"] is False and record["parse_error"] is False
    # 17 x 0.15 = 2.55 per 1M
    assert record["cost_usd"] == Decimal("0.00000255")


async def test_embeddings_without_usage_are_estimated(stack: Stack):
    async with client_for(stack) as client:
        await client.embeddings.create(
            model="models/gemini-embedding-001",
            input="What is the meaning of life?",
            extra_headers={"x-emulator-usage": "missing"},
        )
    [record] = await stack.records()
    assert record["model"] == "gemini-embedding-001"
    # 28 characters -> 7 tokens, counted by the proxy
    assert record["input_tokens"] == 7
    assert record["estimated"] is True and record["parse_error"] is False
    assert record["cost_usd"] == Decimal("0.00000105")


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_error_is_recorded_as_one(stack: Stack, stream: bool):
    async with client_for(stack) as client:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model=MODEL,
                messages=[QUESTION],
                stream=stream,
                extra_headers={"x-emulator-fail": "429"},
            )
    [record] = await stack.records()
    assert record["endpoint"] == "openai.chat_completions"
    assert record["upstream_status"] == 429
    assert record["streamed"] is stream
    assert record["input_tokens"] == record["total_tokens"] == 0
    assert record["parse_error"] is False


@sqlite_only
async def test_malformed_usage_is_flagged_and_the_answer_still_relayed(stack: Stack):
    headers = stack.headers(**{"x-emulator-usage": "malformed"})
    body = {"model": MODEL, "messages": [QUESTION]}
    status, _, answer = await raw("POST", stack.url(CHAT), headers=headers, json=body)
    assert status == 200
    assert json.loads(answer)["usage"]["prompt_tokens"] == "many"
    status, _, streamed = await raw(
        "POST", stack.url(CHAT), headers=headers, json={**body, "stream": True}
    )
    assert status == 200 and streamed.endswith(b"data: [DONE]\n\n")

    records = await stack.records()
    assert [r["streamed"] for r in records] == [False, True]
    for record in records:
        assert record["parse_error"] is True
        assert record["input_tokens"] == record["total_tokens"] == 0
        assert record["upstream_status"] == 200


@sqlite_only
async def test_the_raw_stream_loses_only_the_usage_chunk(stack: Stack):
    body = {"model": MODEL, "messages": [QUESTION], "stream": True}
    status, headers, answer = await raw("POST", stack.url(CHAT), headers=stack.headers(), json=body)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [e for e in answer.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    # three pieces of the answer and the finish: the usage-only fifth chunk was dropped
    assert len(chunks) == 4 and all(c["choices"] and "usage" not in c for c in chunks)
    [record] = await stack.records()
    assert record["total_tokens"] == 7 + 20 + 128


# --- keys ---------------------------------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
async def test_the_bearer_key_is_swapped_never_forwarded(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, scheme: str
):
    stack = await make_stack(upstream=recording_upstream.url)
    key = stack.keys["alice"]
    body = {"model": MODEL, "messages": [QUESTION], "stream": True}
    status, _, _ = await raw(
        "POST", stack.url(CHAT), headers={"Authorization": f"{scheme} {key}"}, json=body
    )
    assert status == 200
    [seen] = recording_upstream.received
    assert seen.headers["x-goog-api-key"] == UPSTREAM_KEY
    assert "authorization" not in seen.headers
    assert all(key not in value for value in seen.headers.values())
    assert key.encode() not in seen.body
    # the body the upstream got asks for the usage, and is otherwise the client's
    assert json.loads(seen.body) == {**body, "stream_options": {"include_usage": True}}
    # the events are rewritten for the client, so they are asked for uncompressed
    assert seen.headers["accept-encoding"] == "identity"
    [record] = await stack.records()
    assert record["user_id"] == await stack.user_id("alice")


@sqlite_only
async def test_an_unknown_bearer_key_never_reaches_the_upstream(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack = await make_stack(upstream=recording_upstream.url)
    async with AsyncOpenAI(
        base_url=stack.url("/v1beta/openai/"), api_key="gm-not-a-key", max_retries=0
    ) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model=MODEL, messages=[QUESTION])
        with pytest.raises(openai.AuthenticationError):
            await client.embeddings.create(model="gemini-embedding-001", input="x")
    assert recording_upstream.received == []
    assert await stack.records() == []


@sqlite_only
async def test_the_sdk_batch_flow_is_refused_with_virtual_keys(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    # Google's guide: files.create(purpose="batch"), batches.create naming the file by id,
    # batches.retrieve, files.content. Behind the shared key the file would be nobody's,
    # the batch the organisation's: every step is refused, none reaches the upstream.
    stack = await make_stack(upstream=recording_upstream.url)
    async with client_for(stack, "bob") as client:
        with pytest.raises(openai.NotFoundError):
            await client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
        with pytest.raises(openai.NotFoundError):
            await client.batches.create(
                input_file_id="files/alice-input",
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
        with pytest.raises(openai.NotFoundError):
            await client.batches.retrieve("batch-1")
        with pytest.raises(openai.NotFoundError):
            await client.batches.cancel("batch-1")
        with pytest.raises(openai.NotFoundError):
            await client.files.content("file-out-1")
    assert recording_upstream.received == []
    assert await stack.records() == []


# --- budgets ------------------------------------------------------------------------------

# 93 bytes -> ceil(93 / 4) = 24 input tokens: 24 x 0.30e-6 = 0.0000072; max_tokens 100:
# 100 x 2.50e-6 = 0.00025; plus the per-call reserve 0.001 -> 0.0012572 reserved.
BUDGET_BODY = (
    b'{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"Say hi"}],"max_tokens":100}'
)


async def assert_reserves_exactly(
    make_stack: StackFactory, path: str, body: bytes, limit: str, reserved: str
) -> None:
    """A call of ``body`` to ``path`` reserves exactly ``reserved`` USD: with ``limit`` less
    ``reserved`` spent it fits (carol), with one ten-millionth more it is refused before
    the upstream (alice)."""
    stack = await make_stack(budget_reserve_usd=Decimal("0.001"), budget_refresh_seconds=3600.0)
    for user in ("alice", "carol"):
        await add_budget(stack.app, f"user:{user}", limit_usd=limit)
    fits = Decimal(limit) - Decimal(reserved)
    await add_spend(stack.app, "carol", str(fits))
    await add_spend(stack.app, "alice", str(fits + Decimal("0.0000001")))
    await stack.app[budgets_key].refresh()

    async def send(user: str) -> int:
        headers = {
            "Authorization": f"Bearer {stack.keys[user]}",
            "Content-Type": "application/json",
        }
        status, _, _ = await raw("POST", stack.url(path), headers=headers, data=body)
        return status

    assert await send("alice") == 429
    assert ledger(stack) == []  # refused before the upstream
    assert await send("carol") == 200
    assert len(ledger(stack)) == 1


@sqlite_only
async def test_a_chat_completion_reserves_its_estimate(make_stack: StackFactory):
    assert len(BUDGET_BODY) == 93
    # without max_tokens read, 8192 default output tokens (0.02048) would refuse carol too
    await assert_reserves_exactly(make_stack, CHAT, BUDGET_BODY, "0.01", "0.0012572")


# --- context caches named in the body -------------------------------------------------------

ALICES_CACHE = "cachedContents/alice-cache-1"


async def stack_with_alices_cache(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
) -> Stack:
    stack = await make_stack(upstream=recording_upstream.url)
    auth = stack.app[authenticator_key]
    alice = await auth.authenticate(PresentedKey(stack.keys["alice"], "header"))
    await auth.commit_resource(ResourceKind.CACHED_CONTENT, ALICES_CACHE, alice, MODEL)
    return stack


def naming(cache: str, spelling: str) -> dict[str, Any]:
    """A chat body naming ``cache`` in one of the places Google's layer may read it."""
    body: dict[str, Any] = {"model": MODEL, "messages": [QUESTION]}
    outer, key = spelling.split(".")
    google = {key: cache}
    if outer == "top":
        body[key] = cache
    elif outer == "google":
        body["google"] = google
    else:
        body[outer] = {"google": google}
    return body


SPELLINGS = [
    "extra_body.cached_content",  # what the openai SDK's extra_body sends, as documented
    "extra_body.cachedContent",
    "extraBody.cached_content",
    "google.cached_content",
    "top.cachedContent",
]


@sqlite_only
@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize(
    "cache",
    [
        ALICES_CACHE,
        "alice-cache-1",  # the bare id
        "v1beta/cachedContents/alice-cache-1",  # with a version prefix
        "/cachedcontents/alice-cache-1",  # another case of the collection
        "cachedContents/never-made-here",
    ],
)
async def test_someone_elses_cache_is_refused_before_the_upstream(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, spelling: str, cache: str
):
    stack = await stack_with_alices_cache(make_stack, recording_upstream)
    headers = {"Authorization": f"Bearer {stack.keys['bob']}"}
    status, _, answer = await raw(
        "POST", stack.url(CHAT), headers=headers, json=naming(cache, spelling)
    )
    assert status == 404
    message = gemini_error(answer, 404, "NOT_FOUND")
    assert "was not found" in message
    assert recording_upstream.received == []
    assert await stack.records() == []


@sqlite_only
async def test_the_owner_uses_her_cache_and_garbage_names_are_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack = await stack_with_alices_cache(make_stack, recording_upstream)
    alice = {"Authorization": f"Bearer {stack.keys['alice']}"}
    # her cache, by the spelling the openai SDK's extra_body produces
    async with client_for(stack, "alice") as client:
        await client.chat.completions.create(
            model=MODEL,
            messages=[QUESTION],
            extra_body={"extra_body": {"google": {"cached_content": ALICES_CACHE}}},
        )
    [seen] = recording_upstream.received
    assert json.loads(seen.body)["extra_body"] == {"google": {"cached_content": ALICES_CACHE}}
    # a name the proxy cannot read as one cache is refused, not forwarded
    for garbage in (7, "", "cachedContents/alice-cache-1/../other", "files/abc"):
        body = naming("x", "extra_body.cached_content")
        body["extra_body"]["google"]["cached_content"] = garbage
        status, _, answer = await raw("POST", stack.url(CHAT), headers=alice, json=body)
        assert status == 400, garbage
        gemini_error(answer, 400, "INVALID_ARGUMENT")
    assert len(recording_upstream.received) == 1


# --- odd upstreams --------------------------------------------------------------------------


@sqlite_only
async def test_a_compressed_stream_is_filtered_on_its_decoded_events(
    make_stack: StackFactory, aiohttp_server: Any
):
    # An upstream that gzips its stream although asked for identity: the client gets the
    # decoded events, without the usage-only one and without a Content-Encoding.
    events = [
        b'data: {"id":"c9","object":"chat.completion.chunk","choices":[{"index":0,'
        b'"delta":{"content":"Hi"},"finish_reason":"stop"}]}\n\n',
        b'data: {"id":"c9","object":"chat.completion.chunk","choices":[],'
        b'"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":105}}\n\n',
        b"data: [DONE]\n\n",
    ]
    packed = gzip.compress(b"".join(events))
    chunks = [packed[start : start + 7] for start in range(0, len(packed), 7)]
    stack = await stack_on_stream(
        make_stack, aiohttp_server, CHAT, chunks, {"Content-Encoding": "gzip"}
    )
    body = {"model": MODEL, "messages": [QUESTION], "stream": True}
    status, headers, answer = await raw("POST", stack.url(CHAT), headers=stack.headers(), json=body)
    assert status == 200
    assert "Content-Encoding" not in headers
    assert answer == events[0] + events[2]
    [record] = await stack.records()
    # 9 input, 3 output, 105 - 9 - 3 = 93 thinking
    assert (record["input_tokens"], record["output_tokens"], record["thinking_tokens"]) == (
        9,
        3,
        93,
    )


@sqlite_only
async def test_a_stream_cut_before_its_usage_is_still_recorded_and_flagged(stack: Stack):
    body = {"model": MODEL, "messages": [QUESTION], "stream": True}
    headers = stack.headers(**{"x-emulator-cut-after": "2"})
    with contextlib.suppress(aiohttp.ClientPayloadError):
        await raw("POST", stack.url(CHAT), headers=headers, json=body)
    [served] = ledger(stack)
    assert served.include_usage  # asked for, never delivered
    [record] = await stack.records()
    assert record["endpoint"] == "openai.chat_completions" and record["streamed"] is True
    assert record["parse_error"] is True
    assert record["total_tokens"] == 0


# --- image generation ---------------------------------------------------------------------

IMAGES = "/v1beta/openai/images/generations"
IMAGEN = "imagen-4.0-generate-001"
GEMINI_IMAGE = "gemini-2.5-flash-image"
# Google's guide's example prompt: 43 characters, ceil(43 / 4) = 11 tokens in the emulator
SHEEPADOODLE = "a portrait of a sheepadoodle wearing a cape"


def metric(stack: Stack, name: str, **labels: str) -> float:
    return metric_sum(stack.app[metrics_key].registry, name, **labels)


async def test_an_imagen_generation_bills_the_images_returned(stack: Stack):
    async with client_for(stack, "bob") as client:
        response = await client.images.generate(
            model=IMAGEN, prompt=SHEEPADOODLE, response_format="b64_json", n=3
        )
    assert response.data is not None and len(response.data) == 3
    assert all(image.b64_json for image in response.data)
    [served] = ledger(stack)
    assert (served.route, served.images, served.filtered) == ("images", 3, 0)

    [record] = await stack.records()
    assert record["endpoint"] == "openai.images"
    assert record["model"] == IMAGEN
    assert record["user_id"] == await stack.user_id("bob")
    assert record["images"] == served.images
    assert record["input_tokens"] == record["output_tokens"] == record["total_tokens"] == 0
    assert record["unmetered_route"] is False and record["parse_error"] is False
    assert record["streamed"] is False and record["upstream_status"] == 200
    # 3 images x $0.04 = $0.12
    assert record["cost_usd"] == Decimal("0.12")
    assert record["cost_media_usd"] == Decimal("0.12")
    assert_upstream_saw_the_proxys_key(stack, IMAGES)
    # counted as a metered call: its cost as media, no longer as an unmetered route
    assert metric(stack, "gemini_meter_cost_usd_total", category="media") == 0.12
    assert metric(stack, "gemini_meter_unmetered_route_requests_total") == 0
    assert metric(stack, "gemini_meter_requests_total", endpoint="openai.images") == 1
    assert metric(stack, "gemini_meter_unpriced_records_total") == 0


async def test_filtered_images_are_not_billed(stack: Stack):
    async with client_for(stack) as client:
        response = await client.images.generate(
            model="imagen-4.0-fast-generate-001",
            prompt=SHEEPADOODLE,
            n=2,
            extra_headers={"x-emulator-filtered": "1"},
        )
    assert response.data is not None and len(response.data) == 1
    [served] = ledger(stack)
    assert (served.images, served.filtered) == (1, 1)
    [record] = await stack.records()
    # 1 image returned x $0.02 = $0.02; the filtered one costs nothing
    assert record["images"] == 1
    assert record["cost_usd"] == Decimal("0.02")


async def test_a_gemini_image_model_bills_the_tokens_it_reports(stack: Stack):
    async with client_for(stack, "carol") as client:
        response = await client.images.generate(
            model=GEMINI_IMAGE,
            prompt=SHEEPADOODLE,
            response_format="b64_json",
            n=2,
            # an answer with OpenAI's image usage, should Google send one (none documented)
            extra_headers={"x-emulator-usage": "present"},
        )
    # one image, whatever n asked (as Google's Gemini image models answer)
    assert response.data is not None and len(response.data) == 1
    assert response.usage is not None and response.usage.output_tokens == 1290
    [served] = ledger(stack)
    assert (served.prompt_tokens, served.image_tokens, served.images) == (11, 1290, 1)

    [record] = await stack.records()
    assert record["endpoint"] == "openai.images"
    assert record["model"] == GEMINI_IMAGE
    assert record["user_id"] == await stack.user_id("carol")
    assert record["input_tokens"] == served.prompt_tokens
    assert record["output_tokens"] == served.image_tokens
    assert record["thinking_tokens"] == 0
    assert record["total_tokens"] == served.total_tokens == 1301
    # billed by the token: the image count is in its image tokens, not in ``images``
    assert record["images"] == 0
    assert record["modalities"] == {"input": {"text": 11}, "output": {"image": 1290}}
    assert record["parse_error"] is False
    # 11 x $0.30 = $3.30 and 1,290 image tokens x $30.00 = $38,700 per 1M -> $0.0387033
    assert record["cost_input_usd"] == Decimal("0.0000033")
    assert record["cost_output_usd"] == Decimal("0.0387")
    assert record["cost_usd"] == Decimal("0.0387033")
    assert metric(stack, "gemini_meter_tokens_total", type="input", model=GEMINI_IMAGE) == 11
    assert metric(stack, "gemini_meter_tokens_total", type="output", model=GEMINI_IMAGE) == 1290
    assert metric(stack, "gemini_meter_unmetered_route_requests_total") == 0


@sqlite_only
async def test_a_gemini_image_without_usage_is_counted_and_left_unpriced(stack: Stack):
    async with client_for(stack) as client:
        # Google's answer as its guide shows it: images, no usage
        await client.images.generate(model=GEMINI_IMAGE, prompt=SHEEPADOODLE)
        await client.images.generate(
            model=GEMINI_IMAGE,
            prompt=SHEEPADOODLE,
            extra_headers={"x-emulator-usage": "malformed"},
        )
    missing, malformed = await stack.records()
    for record in (missing, malformed):
        # the image is recorded; with no per-image price it is unpriced, never free
        assert record["images"] == 1
        assert record["input_tokens"] == record["output_tokens"] == 0
        assert record["cost_usd"] is None and record["unpriced"] is True
    assert missing["parse_error"] is False
    assert malformed["parse_error"] is True
    assert metric(stack, "gemini_meter_unpriced_records_total") == 2
    assert metric(stack, "gemini_meter_usage_parse_errors_total", endpoint="openai.images") == 1


@sqlite_only
async def test_an_image_generation_error_is_recorded_as_one(stack: Stack):
    async with client_for(stack) as client:
        with pytest.raises(openai.RateLimitError):
            await client.images.generate(
                model=IMAGEN, prompt=SHEEPADOODLE, extra_headers={"x-emulator-fail": "429"}
            )
    [record] = await stack.records()
    assert (record["endpoint"], record["upstream_status"]) == ("openai.images", 429)
    assert record["images"] == 0 and record["parse_error"] is False
    assert record["cost_usd"] == 0


@sqlite_only
async def test_an_image_answer_streamed_anyway_is_relayed_and_billed_per_image(
    make_stack: StackFactory, aiohttp_server: Any
):
    # Google's guide lists no stream for this route; should an event stream come back,
    # it is relayed as it came, and OpenAI's completed-image events are what it bills.
    completed = {"type": "image_generation.completed", "b64_json": "iVBORw0KGgo="}
    events = [
        b'data: {"type":"image_generation.partial_image","b64_json":"iVBO"}\n\n',
        b"data: " + json.dumps(completed).encode() + b"\n\n",
    ]
    stack = await stack_on_stream(make_stack, aiohttp_server, IMAGES, events)
    for model in (IMAGEN, GEMINI_IMAGE):
        body = {"model": model, "prompt": "a cat", "stream": True}
        status, headers, answer = await raw(
            "POST", stack.url(IMAGES), headers=stack.headers(), json=body
        )
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
        assert answer == b"".join(events)
    imagen, gemini = await stack.records()
    assert (imagen["streamed"], imagen["images"], imagen["parse_error"]) == (True, 1, False)
    assert imagen["cost_usd"] == Decimal("0.04")  # 1 image x $0.04
    # a token-priced model's stream: its usage is not read, so the record is flagged
    assert (gemini["images"], gemini["parse_error"], gemini["unpriced"]) == (1, True, True)


@sqlite_only
async def test_an_imagen_generation_reserves_its_images(make_stack: StackFactory):
    stack = await make_stack(budget_reserve_usd=Decimal("0.01"), budget_refresh_seconds=3600.0)
    await add_budget(stack.app, "user:alice", limit_usd="1.00")
    await add_spend(stack.app, "alice", "0.95")
    await stack.app[budgets_key].refresh()
    async with client_for(stack, "alice") as client:
        # 2 images x $0.04 + the $0.01 reserve = $0.09, over the $0.05 left
        with pytest.raises(openai.RateLimitError):
            await client.images.generate(model=IMAGEN, prompt=SHEEPADOODLE, n=2)
        assert ledger(stack) == []  # refused before the upstream
        # n left out is OpenAI's 1: $0.04 + $0.01 = $0.05, which fits exactly
        await client.images.generate(model=IMAGEN, prompt=SHEEPADOODLE)
    assert len(ledger(stack)) == 1


@sqlite_only
async def test_a_gemini_image_generation_reserves_like_a_generation(make_stack: StackFactory):
    # No per-image price: the body's bytes / 4 as input and the default 8,192 output
    # tokens, priced as generated output: (13 x $0.30 + 8,192 x $2.50) per 1M = $0.0000039
    # + $0.02048 = $0.0204839, plus the $0.001 reserve = $0.0214839.
    body = b'{"model":"gemini-2.5-flash-image","prompt":"a cat"}'
    assert -(-len(body) // 4) == 13
    await assert_reserves_exactly(make_stack, IMAGES, body, "0.1", "0.0214839")
