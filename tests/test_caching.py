"""Context caching end to end: the real google-genai SDK through the proxy, both databases.

The emulator counts text as ``ceil(characters / 4)`` tokens. The cache below holds a
4,100-character document (1,025 tokens) and a 25-character system instruction (7 tokens):
1,032 tokens, which the emulator's own ledger (``EmulatedCache``) confirms. Prices
(``prices.toml``, gemini-2.5-flash): input $0.30, cached $0.03 per 1M tokens; storage
$1.00 per 1M tokens per hour, i.e. a token-second costs 1.00 / 1,000,000 / 3,600 USD.
Every figure below is worked by hand.
"""

from __future__ import annotations

import io
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

from google.genai import types

from proxy.server.typedefs import budgets_key
from tests.factories import Stack, StackFactory, add_budget, gemini_error, raw

MODEL = "gemini-2.5-flash"
DOCUMENT = "abcd" * 1025  # 4,100 characters: 1,025 tokens
SYSTEM = "Answer from the document."  # 25 characters: 7 tokens
TOKENS = 1032
TOKEN_SECOND_USD = Decimal("1.00") / 1_000_000 / 3600


def cache_config(**extra: Any) -> types.CreateCachedContentConfig:
    return types.CreateCachedContentConfig(
        contents=[types.Content(role="user", parts=[types.Part(text=DOCUMENT)])],
        system_instruction=SYSTEM,
        **extra,
    )


async def test_storage_is_billed_at_create_adjusted_on_update_refunded_on_delete(stack: Stack):
    client = stack.sdk("alice")
    cache = await client.aio.caches.create(model=MODEL, config=cache_config(ttl="300s"))
    assert cache.name is not None and cache.create_time is not None
    ledger = stack.upstream.caches[cache.name]
    assert ledger.total_tokens == TOKENS

    [created] = await stack.records()
    assert created["endpoint"] == "cached_content.create"
    assert created["resource"] == cache.name
    assert created["model"] == MODEL
    assert created["user_id"] == await stack.user_id("alice")
    # 1,032 tokens x 300 s = 309,600 token-seconds = 86 token-hours:
    # 86 x 1.00 / 1,000,000 = 0.000086
    assert created["storage_token_seconds"] == 309_600
    assert created["cost_usd"] == created["cost_storage_usd"] == Decimal("0.000086")
    # the cached tokens themselves are not billed at creation (docs/metering.md)
    assert created["input_tokens"] == created["cached_tokens"] == 0
    assert created["cost_input_usd"] == created["cost_cached_usd"] == 0

    # Used by a generation: the cached tokens bill at the cached rate.
    response = await client.aio.models.generate_content(
        model=MODEL,
        contents="Summarise it.",  # 13 characters: 4 tokens
        config=types.GenerateContentConfig(cached_content=cache.name),
    )
    assert response.usage_metadata is not None
    assert response.usage_metadata.cached_content_token_count == TOKENS
    generated = (await stack.records())[-1]
    assert generated["endpoint"] == "generate_content"
    assert (generated["input_tokens"], generated["cached_tokens"]) == (TOKENS + 4, TOKENS)
    # uncached 4 x 0.30 / 1M = 0.0000012; cached 1,032 x 0.03 / 1M = 0.00003096
    assert generated["cost_input_usd"] == Decimal("0.0000012")
    assert generated["cost_cached_usd"] == Decimal("0.00003096")

    # Extended to two hours after creation: 7,200 - 300 = 6,900 s more.
    created_at = cache.create_time
    await client.aio.caches.update(
        name=cache.name,
        config=types.UpdateCachedContentConfig(expire_time=created_at + timedelta(hours=2)),
    )
    extended = (await stack.records())[-1]
    assert extended["endpoint"] == "cached_content.update"
    assert extended["resource"] == cache.name
    # 1,032 x 6,900 = 7,120,800 token-seconds = 1,978 token-hours: 0.001978
    assert extended["storage_token_seconds"] == 7_120_800
    assert extended["cost_usd"] == Decimal("0.001978")

    # Shortened to ten minutes after creation: 600 - 7,200 = -6,600 s.
    await client.aio.caches.update(
        name=cache.name,
        config=types.UpdateCachedContentConfig(expire_time=created_at + timedelta(minutes=10)),
    )
    shortened = (await stack.records())[-1]
    # 1,032 x -6,600 = -6,811,200 token-seconds = -1,892 token-hours: -0.001892
    assert shortened["storage_token_seconds"] == -6_811_200
    assert shortened["cost_usd"] == Decimal("-0.001892")
    assert ledger.expiries == [
        created_at + timedelta(seconds=300),
        created_at + timedelta(hours=2),
        created_at + timedelta(minutes=10),
    ]

    # Deleted before it expires: the rest of the ten minutes is given back.
    before = time.time()
    await client.aio.caches.delete(name=cache.name)
    after = time.time()
    deleted = (await stack.records())[-1]
    assert deleted["endpoint"] == "cached_content.delete"
    assert deleted["resource"] == cache.name
    expiry = (created_at + timedelta(minutes=10)).timestamp()
    # between 1,032 x (expiry - after) and 1,032 x (expiry - before), given back
    refund = -deleted["storage_token_seconds"]
    assert TOKENS * (expiry - after) - 1 <= refund <= TOKENS * (expiry - before) + 1
    # stored to the Money column's 12 decimal places, rounded half to even
    assert deleted["cost_usd"] == (-refund * TOKEN_SECOND_USD).quantize(Decimal("1e-12"))
    # What stays billed is the time it lived: 1,032 x (deleted - created), to the second.
    storage = sum(r["storage_token_seconds"] for r in await stack.records())
    lived = storage / TOKENS
    assert before - created_at.timestamp() - 1 <= lived <= after - created_at.timestamp() + 1

    records = await stack.records()
    assert len(records) == 5
    assert {r["user_id"] for r in records} == {await stack.user_id("alice")}


async def test_an_expired_cache_gets_no_refund_and_errors_bill_nothing(stack: Stack):
    client = stack.sdk("bob")
    cache = await client.aio.caches.create(model=MODEL, config=cache_config(ttl="1s"))
    assert cache.name is not None
    [created] = await stack.records()
    assert created["storage_token_seconds"] == TOKENS * 1  # 1,032 token-seconds
    # Expired at the emulator: deleting it there fails (403), and nothing is given back.
    stack.upstream.caches[cache.name].expire_time -= timedelta(seconds=5)
    status, _, _ = await raw(
        "DELETE", stack.url(f"/v1beta/{cache.name}"), headers=stack.headers("bob")
    )
    assert status == 403
    failed = (await stack.records())[-1]
    assert failed["endpoint"] == "cached_content.delete"
    assert failed["upstream_status"] == 403
    assert failed["storage_token_seconds"] == 0 and failed["cost_usd"] in (None, 0)

    # A create Google refuses (too small) is recorded with no storage and owns nothing.
    body = {"model": f"models/{MODEL}", "systemInstruction": {"parts": [{"text": "tiny"}]}}
    status, _, _ = await raw(
        "POST", stack.url("/v1beta/cachedContents"), headers=stack.headers("bob"), json=body
    )
    assert status == 400
    refused = (await stack.records())[-1]
    assert (refused["endpoint"], refused["upstream_status"]) == ("cached_content.create", 400)
    assert refused["storage_token_seconds"] == 0


async def test_lists_show_only_the_callers_caches_and_files(stack: Stack):
    alice, bob = stack.sdk("alice"), stack.sdk("bob")
    mine = await alice.aio.caches.create(model=MODEL, config=cache_config())
    theirs = await bob.aio.caches.create(model=MODEL, config=cache_config())
    my_file = await alice.aio.files.upload(
        file=io.BytesIO(b"alice's notes"), config=types.UploadFileConfig(mime_type="text/plain")
    )
    their_file = await bob.aio.files.upload(
        file=io.BytesIO(b"bob's notes"), config=types.UploadFileConfig(mime_type="text/plain")
    )
    # Behind the one upstream key, Google's lists hold both users' items ...
    assert {mine.name, theirs.name} <= set(stack.upstream.caches)
    assert {my_file.name, their_file.name} <= set(stack.upstream.files)
    # ... the proxy shows each only their own.
    assert [c.name async for c in await alice.aio.caches.list()] == [mine.name]
    assert [c.name async for c in await bob.aio.caches.list()] == [theirs.name]
    assert [f.name async for f in await alice.aio.files.list()] == [my_file.name]
    assert [f.name async for f in await bob.aio.files.list()] == [their_file.name]
    # Each owner reaches their own.
    assert my_file.name is not None and theirs.name is not None
    assert (await alice.aio.files.get(name=my_file.name)).size_bytes == 13
    assert (await bob.aio.caches.get(name=theirs.name)).name == theirs.name
    await alice.aio.files.delete(name=my_file.name)
    assert my_file.name not in stack.upstream.files


async def test_passthrough_mode_bills_storage_without_checking_owners(make_stack: StackFactory):
    stack = await make_stack(auth_mode="passthrough")
    client = stack.sdk(key="AIza-a-teams-own-google-key")
    cache = await client.aio.caches.create(model=MODEL, config=cache_config(ttl="60s"))
    assert cache.name is not None and cache.create_time is not None
    await client.aio.caches.update(
        name=cache.name,
        config=types.UpdateCachedContentConfig(expire_time=cache.create_time + timedelta(hours=1)),
    )
    records = await stack.records()
    # 1,032 x 60 = 61,920 at create; 1,032 x (3,600 - 60) = 3,653,280 on the update
    assert [(r["endpoint"], r["storage_token_seconds"]) for r in records] == [
        ("cached_content.create", 61_920),
        ("cached_content.update", 3_653_280),
    ]
    assert records[0]["user_id"] == records[1]["user_id"]
    assert not any(r["parse_error"] for r in records)


async def test_a_teammate_extends_a_shared_cache_and_its_owner_pays(make_stack: StackFactory):
    stack = await make_stack(interaction_sharing="team")
    cache = await stack.sdk("alice").aio.caches.create(model=MODEL, config=cache_config())
    assert cache.name is not None and cache.create_time is not None
    # carol is on alice's team: she may use the cache, and extend it
    await stack.sdk("carol").aio.caches.update(
        name=cache.name,
        config=types.UpdateCachedContentConfig(expire_time=cache.create_time + timedelta(hours=3)),
    )
    created, extended = await stack.records()
    # the default hour: 1,032 x 3,600 = 3,715,200; then two hours more: 1,032 x 7,200
    assert created["storage_token_seconds"] == 3_715_200
    assert extended["storage_token_seconds"] == 7_430_400
    # the storage is the cache's owner's to pay, whoever extended it
    assert extended["user_id"] == created["user_id"] == await stack.user_id("alice")
    status, _, _ = await raw(
        "GET", stack.url(f"/v1beta/{cache.name}"), headers=stack.headers("bob")
    )
    assert status == 404  # bob is not on the team


async def test_a_cache_create_over_budget_is_refused_before_the_upstream(
    make_stack: StackFactory,
):
    stack = await make_stack(budget_reserve_usd=Decimal("0.001"))
    await add_budget(stack.app, "user:bob", limit_usd="0.0005")
    await stack.app[budgets_key].refresh()
    body = {
        "model": f"models/{MODEL}",
        "contents": [{"role": "user", "parts": [{"text": DOCUMENT}]}],
        "ttl": "60s",
    }
    status, _, answer = await raw(
        "POST", stack.url("/v1beta/cachedContents"), headers=stack.headers("bob"), json=body
    )
    # the reservation alone (0.001) is over the 0.0005 limit
    assert status == 429
    gemini_error(answer, 429, "RESOURCE_EXHAUSTED")
    assert stack.upstream.caches == {}
    assert await stack.records() == []
