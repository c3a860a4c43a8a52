"""The Batch API end to end: the real google-genai SDK through the proxy, on both databases.

A batch's results are metered where the proxy first sees them: inline in a
``batches.get`` (or list), or line by line while its responses file downloads. Each
result is one ``batch.result`` record billed to the batch's owner at the batch rate,
stored once however often it is fetched; the create itself leaves no record.

Hand-worked figures. The emulator counts ``ceil(characters / 4)`` tokens of text and
thinks 128 tokens on gemini-2.5-flash (its default "medium" level); its reply is
``Emulated reply from gemini-2.5-flash. You said: "<prompt>".``. gemini-2.5-flash costs
$0.30 per 1M input and $2.50 per 1M output (thinking included) at the standard rate;
the catalog's batch factor is 0.5, so $0.15 and $1.25.

- JOKE, "Tell me a one-sentence joke." (28 characters): input 7; reply 79 characters,
  output 20; thinking 128. Input 7 x 0.15 / 1M = 0.00000105; output 20 x 1.25 / 1M =
  0.000025; thinking 128 x 1.25 / 1M = 0.00016; total 0.00018605.
- SKY, "Why is the sky blue?" (20 characters): input 5; reply 71 characters, output 18;
  thinking 128. Input 0.00000075; output 0.0000225; thinking 0.00016; total 0.00018325.
"""

from __future__ import annotations

import asyncio
import io
import json
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from google import genai
from google.genai import errors, types
from prometheus_client import CollectorRegistry

from proxy.emulator import EmulatorConfig
from proxy.server.app import create_app
from proxy.server.keys import fingerprint
from proxy.server.typedefs import budgets_key
from tests.factories import (
    Stack,
    StackFactory,
    add_budget,
    add_spend,
    batch_request,
    issue_keys,
    raw,
)

MODEL = "gemini-2.5-flash"
JOKE = "Tell me a one-sentence joke."
SKY = "Why is the sky blue?"
BATCH_SECONDS = 0.3
EXPECTED: dict[str, dict[str, int | str]] = {
    JOKE: {"input": 7, "output": 20, "thinking": 128, "cost": "0.00018605"},
    SKY: {"input": 5, "output": 18, "thinking": 128, "cost": "0.00018325"},
}


async def batch_stack(make_stack: StackFactory, **overrides: Any) -> Stack:
    return await make_stack(EmulatorConfig(batch_seconds=BATCH_SECONDS), **overrides)


async def wait_done(client: genai.Client, name: str) -> types.BatchJob:
    for _ in range(100):
        job = await client.aio.batches.get(name=name)
        if job.done:
            return job
        await asyncio.sleep(BATCH_SECONDS / 5)
    raise AssertionError("the batch never finished")


def ledger_usage(stack: Stack, batch: str) -> dict[int, dict[str, Any] | None]:
    """What the emulator served of ``batch``, by result index (repeats collapse)."""
    return {s.index: s.usage for s in stack.upstream.batch_ledger if s.batch == batch}


def assert_matches_ledger(row: dict[str, Any], usage: dict[str, Any] | None) -> None:
    assert usage is not None
    assert row["input_tokens"] == usage["promptTokenCount"]
    assert row["output_tokens"] == usage["candidatesTokenCount"]
    assert row["thinking_tokens"] == usage.get("thoughtsTokenCount", 0)
    assert row["total_tokens"] == usage["totalTokenCount"]


async def test_inline_results_metered_once_at_batch_rates(make_stack: StackFactory):
    stack = await batch_stack(make_stack)
    client = stack.sdk("alice")
    job = await client.aio.batches.create(
        model=MODEL, src=[batch_request(JOKE), batch_request(SKY, "sky")]
    )
    assert job.name is not None and job.state == types.JobState.JOB_STATE_PENDING
    assert await stack.records() == []  # the create is free
    done = await wait_done(client, job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.dest is not None and done.dest.inlined_responses is not None
    # fetched again, and listed: the results are recorded once
    await client.aio.batches.get(name=job.name)
    await client.aio.batches.get(name=job.name)
    listed = [b.name async for b in await client.aio.batches.list()]
    assert listed == [job.name]
    served = [s for s in stack.upstream.batch_ledger if s.batch == job.name]
    assert len(served) >= 6  # the emulator served both results at least three times

    rows = await stack.records()
    assert len(rows) == 2
    alice = await stack.user_id("alice")
    ledger = ledger_usage(stack, job.name)
    for row, text, index in zip(rows, (JOKE, SKY), (0, 1), strict=True):
        expected = EXPECTED[text]
        assert row["endpoint"] == "batch.result"
        assert row["user_id"] == alice
        assert row["model"] == MODEL
        assert row["resource"] == job.name
        assert row["effective_service_tier"] == "batch"
        assert row["upstream_status"] == 200
        assert (row["input_tokens"], row["output_tokens"], row["thinking_tokens"]) == (
            expected["input"],
            expected["output"],
            expected["thinking"],
        )
        assert_matches_ledger(row, ledger[index])
        assert row["cost_usd"] == Decimal(expected["cost"])
        assert row["parse_error"] is False and row["unmetered_route"] is False
    assert rows[0]["request_id"] != rows[1]["request_id"]


async def test_a_second_replica_stores_nothing_twice(make_stack: StackFactory, proxy_server: Any):
    stack = await batch_stack(make_stack)
    client = stack.sdk("alice")
    job = await client.aio.batches.create(model=MODEL, src=[batch_request(JOKE)])
    assert job.name is not None
    await wait_done(client, job.name)
    assert len(await stack.records()) == 1
    # Another replica on the same database and upstream sees the same results.
    replica = create_app(stack.settings, registry=CollectorRegistry())
    server = await proxy_server(replica)
    keys = await issue_keys(replica)
    status, _, _ = await raw(
        "GET",
        str(server.make_url(f"/v1beta/{job.name}")),
        headers={"x-goog-api-key": keys["alice"]},
    )
    assert status == 200
    rows = await stack.records()
    assert len(rows) == 1 and rows[0]["cost_usd"] == Decimal(EXPECTED[JOKE]["cost"])


async def test_file_results_metered_while_the_download_streams(make_stack: StackFactory):
    stack = await batch_stack(make_stack)
    client = stack.sdk("bob")
    lines = [
        {"key": "joke", "request": batch_request(JOKE)},
        {"key": "broken", "request": {"contents": []}},
        {"key": "sky", "request": batch_request(SKY)},
    ]
    jsonl = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = await client.aio.files.upload(
        file=io.BytesIO(jsonl), config={"mime_type": "jsonl", "display_name": "in"}
    )
    assert uploaded.name is not None
    job = await client.aio.batches.create(model=MODEL, src=uploaded.name)
    assert job.name is not None
    done = await wait_done(client, job.name)
    assert done.dest is not None and done.dest.file_name is not None
    assert await stack.records() == []  # nothing inline: the results are in the file

    data = await client.aio.files.download(file=done.dest.file_name)
    assert len(data.splitlines()) == 3
    # the SDK asked the proxy, not Google, for the bytes
    downloads = [r.path for r in stack.upstream.requests if r.path.endswith(":download")]
    assert downloads == [f"/v1/{done.dest.file_name}:download"]  # the SDK's default version
    # downloaded again, the other way: nothing recorded twice
    status, _, again = await raw(
        "GET",
        stack.url(f"/download/v1beta/{done.dest.file_name}:download?alt=media"),
        headers=stack.headers("bob"),
    )
    assert status == 200 and again == data

    rows = await stack.records()
    assert len(rows) == 3
    bob = await stack.user_id("bob")
    assert {r["user_id"] for r in rows} == {bob}
    assert {r["resource"] for r in rows} == {job.name}
    joke, broken, sky = rows
    ledger = ledger_usage(stack, job.name)
    assert_matches_ledger(joke, ledger[0])
    assert_matches_ledger(sky, ledger[2])
    assert joke["cost_usd"] == Decimal(EXPECTED[JOKE]["cost"])
    assert sky["cost_usd"] == Decimal(EXPECTED[SKY]["cost"])
    # the failed line: zero tokens, its status (INVALID_ARGUMENT is HTTP 400), no cost
    assert broken["upstream_status"] == 400
    assert broken["total_tokens"] == 0 and broken["cost_usd"] == Decimal(0)
    assert broken["parse_error"] is False
    assert all(r["streamed"] for r in rows)


async def test_create_is_refused_when_the_budget_is_spent(make_stack: StackFactory):
    stack = await batch_stack(make_stack)
    await add_budget(stack.app, "user:alice", limit_usd="1.00")
    await add_spend(stack.app, "alice", "1.00")
    await stack.app[budgets_key].refresh()
    client = stack.sdk("alice")
    before = len(stack.upstream.requests)
    try:
        await client.aio.batches.create(model=MODEL, src=[batch_request(JOKE)])
    except errors.ClientError as exc:
        assert exc.code == 429
    else:
        raise AssertionError("the create was not refused")
    assert len(stack.upstream.requests) == before
    # bob has no budget: his goes through
    job = await stack.sdk("bob").aio.batches.create(model=MODEL, src=[batch_request(JOKE)])
    assert job.name is not None


async def test_embeddings_batch_metered_at_batch_rates(make_stack: StackFactory):
    # gemini-embedding-001: $0.15 per 1M input tokens, batch factor 0.5, so $0.075.
    # "abcdefgh" is ceil(8 / 4) = 2 tokens: 2 x 0.075 / 1M = 0.00000015; "abc" is 1 token:
    # 0.000000075.
    stack = await batch_stack(make_stack)
    client = stack.sdk("carol")
    with pytest.warns(Warning, match="experimental"):
        job = await client.aio.batches.create_embeddings(
            model="gemini-embedding-001",
            src={"inlined_requests": {"contents": ["abcdefgh", "abc"]}},
        )
    assert job.name is not None
    done = await wait_done(client, job.name)
    assert done.dest is not None and done.dest.inlined_embed_content_responses is not None
    await client.aio.batches.get(name=job.name)
    rows = await stack.records()
    assert [(r["input_tokens"], r["output_tokens"], r["cost_usd"]) for r in rows] == [
        (2, 0, Decimal("0.00000015")),
        (1, 0, Decimal("0.000000075")),
    ]
    ledger = ledger_usage(stack, job.name)
    assert [ledger[0], ledger[1]] == [
        {"promptTokenCount": 2, "promptTokenDetails": [{"modality": "TEXT", "tokenCount": 2}]},
        {"promptTokenCount": 1, "promptTokenDetails": [{"modality": "TEXT", "tokenCount": 1}]},
    ]
    carol = await stack.user_id("carol")
    assert all(
        r["endpoint"] == "batch.result"
        and r["user_id"] == carol
        and r["model"] == "gemini-embedding-001"
        and r["effective_service_tier"] == "batch"
        for r in rows
    )


async def test_a_client_leaving_mid_download_still_meters_every_line(make_stack: StackFactory):
    stack = await batch_stack(make_stack)
    client = stack.sdk("bob")
    jsonl = "".join(
        json.dumps({"key": str(i), "request": batch_request(text)}) + "\n"
        for i, text in enumerate((JOKE, SKY, JOKE))
    ).encode()
    uploaded = await client.aio.files.upload(file=io.BytesIO(jsonl), config={"mime_type": "jsonl"})
    assert uploaded.name is not None
    job = await client.aio.batches.create(model=MODEL, src=uploaded.name)
    assert job.name is not None
    done = await wait_done(client, job.name)
    assert done.dest is not None and done.dest.file_name is not None
    # The emulator writes a line every 300 ms; the client reads the first and leaves.
    headers = stack.headers("bob", **{"x-emulator-chunk-delay-ms": "300"})
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            stack.url(f"/v1beta/{done.dest.file_name}:download?alt=media"), headers=headers
        ) as response,
    ):
        assert response.status == 200
        first = await response.content.readline()
        assert json.loads(first)["key"] == "0"
    served = [s for s in stack.upstream.batch_ledger if s.batch == job.name]
    assert len(served) < 3  # the client left before the file was served whole
    for _ in range(50):
        rows = await stack.records()
        if len(rows) == 3:
            break
        await asyncio.sleep(0.1)
    # the proxy read the file to its end: every result recorded
    assert [r["cost_usd"] for r in rows] == [
        Decimal(EXPECTED[JOKE]["cost"]),
        Decimal(EXPECTED[SKY]["cost"]),
        Decimal(EXPECTED[JOKE]["cost"]),
    ]
    assert len([s for s in stack.upstream.batch_ledger if s.batch == job.name]) == 3


async def test_passthrough_mode_bills_the_callers_own_key(make_stack: StackFactory):
    # No owners are checked in passthrough mode: the results go to the key that fetched them.
    own_key = "AIza-client-own-google-key"
    stack = await batch_stack(make_stack, auth_mode="passthrough")
    base = {"x-goog-api-key": own_key}
    request = batch_request(JOKE)
    status, _, body = await raw(
        "POST",
        stack.url(f"/v1beta/models/{MODEL}:batchGenerateContent"),
        headers=base,
        json={"batch": {"inputConfig": {"requests": {"requests": [{"request": request}]}}}},
    )
    assert status == 200
    name = json.loads(body)["name"]
    await asyncio.sleep(BATCH_SECONDS * 1.2)
    status, _, _ = await raw("GET", stack.url(f"/v1beta/{name}"), headers=base)
    assert status == 200
    [row] = await stack.records()
    assert row["user_id"] == await stack.user_id(fingerprint(b"test-secret", own_key))
    assert row["cost_usd"] == Decimal(EXPECTED[JOKE]["cost"])
    assert [r.api_key for r in stack.upstream.requests] == [own_key, own_key]


async def test_recorded_results_count_against_the_owners_budget(make_stack: StackFactory):
    # No per-call reserve and no assumed output: a create reserves only its body's bytes / 4
    # tokens at the batch input rate (a few millionths of a dollar). The two results cost
    # 0.00018605 + 0.00018325 = 0.0003693 (see the module docstring), past the $0.0002
    # limit: the next create is refused, though nothing but batch results was spent.
    stack = await batch_stack(make_stack, budget_reserve_usd="0", budget_default_output_tokens=0)
    await add_budget(stack.app, "user:alice", limit_usd="0.0002")
    await stack.app[budgets_key].refresh()
    client = stack.sdk("alice")
    job = await client.aio.batches.create(
        model=MODEL, src=[batch_request(JOKE), batch_request(SKY)]
    )
    assert job.name is not None
    await wait_done(client, job.name)
    assert len(await stack.records()) == 2
    with pytest.raises(errors.ClientError) as refused:
        await client.aio.batches.create(model=MODEL, src=[batch_request(JOKE)])
    assert refused.value.code == 429
