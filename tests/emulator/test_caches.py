"""The emulator's context caching and Files API, driven by the real google-genai SDK.

Expected token counts are worked by hand from the emulator's documented rule (text is
``ceil(characters / 4)`` tokens); shapes are checked against the SDK's own types.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from google.genai import errors, types

from proxy.emulator import emulator_state_key
from tests.emulator.test_emulator import KEY, strict_generate, url

MODEL = "gemini-2.5-flash"
# 4,100 characters: ceil(4100 / 4) = 1,025 tokens, one above the 1,024 minimum.
DOCUMENT = "abcd" * 1025
SYSTEM = "Answer from the document."  # 25 characters: 7 tokens
CACHE_TOKENS = 1025 + 7


def config(**extra: Any) -> types.CreateCachedContentConfig:
    return types.CreateCachedContentConfig(
        contents=[types.Content(role="user", parts=[types.Part(text=DOCUMENT)])],
        system_instruction=SYSTEM,
        display_name="doc",
        **extra,
    )


async def test_create_get_list_update_delete(aio: Any, http: Any, server: TestServer) -> None:
    cache = await aio.caches.create(model=MODEL, config=config(ttl="300s"))
    assert cache.name.startswith("cachedContents/")
    assert cache.model == f"models/{MODEL}"
    assert cache.display_name == "doc"
    assert cache.usage_metadata.total_token_count == CACHE_TOKENS
    assert cache.expire_time - cache.create_time == timedelta(seconds=300)
    assert cache.update_time == cache.create_time

    # The raw resource: Google's field set and time precision, nothing else.
    async with http.get(url(server, f"/v1beta/{cache.name}"), headers=KEY) as r:
        raw = await r.json()
    assert set(raw) == {
        "name",
        "model",
        "createTime",
        "updateTime",
        "expireTime",
        "displayName",
        "usageMetadata",
    }
    assert raw["usageMetadata"] == {"totalTokenCount": CACHE_TOKENS}
    assert len(raw["createTime"]) == len("2026-03-22T09:34:49.342985Z")
    assert len(raw["expireTime"]) == len("2026-03-22T09:35:48.044411163Z")
    types.CachedContent.model_validate(raw)  # no field the SDK does not declare

    assert (await aio.caches.get(name=cache.name)).name == cache.name
    assert (await aio.caches.get(name=cache.name.removeprefix("cachedContents/"))).name == (
        cache.name
    )
    second = await aio.caches.create(model=MODEL, config=config())
    assert second.expire_time - second.create_time == timedelta(hours=1)  # the default
    listed = [c.name async for c in await aio.caches.list(config={"page_size": 1})]
    assert listed == [cache.name, second.name]

    updated = await aio.caches.update(
        name=cache.name, config=types.UpdateCachedContentConfig(ttl="7200s")
    )
    assert updated.create_time == cache.create_time
    assert updated.expire_time - updated.update_time == timedelta(hours=2)
    at = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    updated = await aio.caches.update(
        name=cache.name, config=types.UpdateCachedContentConfig(expire_time=at)
    )
    assert updated.expire_time == at
    ledger = server.app[emulator_state_key].caches[cache.name]
    assert ledger.expiries[-1] == at and len(ledger.expiries) == 3

    await aio.caches.delete(name=cache.name)
    with pytest.raises(errors.ClientError) as refused:
        await aio.caches.get(name=cache.name)
    assert refused.value.code == 403
    assert refused.value.message == "CachedContent not found (or permission denied)"
    assert [c.name async for c in await aio.caches.list()] == [second.name]
    await aio.caches.delete(name=second.name)
    async with http.get(url(server, "/v1beta/cachedContents"), headers=KEY) as r:
        assert await r.json() == {}  # as Google answers an empty list


async def test_too_small_and_bad_lifetimes_are_refused(aio: Any, http: Any, server: TestServer):
    with pytest.raises(errors.ClientError) as refused:
        await aio.caches.create(
            model=MODEL,
            config=types.CreateCachedContentConfig(system_instruction="x" * 4092),
        )
    assert refused.value.code == 400
    # ceil(4092 / 4) = 1,023 tokens: one short
    assert refused.value.message == (
        "Cached content is too small. total_token_count=1023, min_total_token_count=1024"
    )
    body = {"model": MODEL, "systemInstruction": {"parts": [{"text": DOCUMENT}]}}
    for extra in ({"ttl": "ten minutes"}, {"ttl": "-5s"}, {"expireTime": "tomorrow"}):
        async with http.post(
            url(server, "/v1beta/cachedContents"), headers=KEY, json={**body, **extra}
        ) as r:
            assert r.status == 400, extra
    cache = await aio.caches.create(model=MODEL, config=config())
    async with http.patch(
        url(server, f"/v1beta/{cache.name}?updateMask=displayName"), headers=KEY, json={}
    ) as r:
        assert r.status == 400
    async with http.patch(
        url(server, f"/v1beta/{cache.name}"), headers=KEY, json={"name": cache.name}
    ) as r:
        assert r.status == 400


async def test_generate_reports_the_cache_as_cached_prompt(aio: Any, http: Any, server: TestServer):
    cache = await aio.caches.create(model=MODEL, config=config())
    prompt = "Summarise it."  # 13 characters: 4 tokens
    response = await aio.models.generate_content(
        model=MODEL,
        contents=prompt,
        config=types.GenerateContentConfig(cached_content=cache.name),
    )
    usage = response.usage_metadata
    assert usage.cached_content_token_count == CACHE_TOKENS
    assert usage.prompt_token_count == CACHE_TOKENS + 4
    assert usage.cache_tokens_details == [
        types.ModalityTokenCount(modality=types.MediaModality.TEXT, token_count=CACHE_TOKENS)
    ]
    async with http.post(
        url(server, f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"),
        headers=KEY,
        json={"contents": [{"parts": [{"text": prompt}]}], "cachedContent": cache.name},
    ) as r:
        assert r.status == 200
        last = (await r.read()).strip().split(b"\r\n\r\n")[-1].removeprefix(b"data: ")
    strict_generate(json.loads(last))

    # Google refuses a cache together with a system instruction, tools or tool config,
    # the cache of another model, and a cache that is gone.
    with pytest.raises(errors.ClientError) as refused:
        await aio.models.generate_content(
            model=MODEL,
            contents=prompt,
            config=types.GenerateContentConfig(cached_content=cache.name, system_instruction="x"),
        )
    assert refused.value.code == 400
    assert "can not be used with GenerateContent" in str(refused.value.message)
    with pytest.raises(errors.ClientError) as refused:
        await aio.models.generate_content(
            model="gemini-2.5-pro",
            contents=prompt,
            config=types.GenerateContentConfig(cached_content=cache.name),
        )
    assert refused.value.code == 400
    await aio.caches.delete(name=cache.name)
    with pytest.raises(errors.ClientError) as refused:
        await aio.models.generate_content(
            model=MODEL,
            contents=prompt,
            config=types.GenerateContentConfig(cached_content=cache.name),
        )
    assert refused.value.code == 403


async def test_files_get_list_delete_download(aio: Any, http: Any, server: TestServer) -> None:
    first = await aio.files.upload(
        file=io.BytesIO(b"x" * 10), config=types.UploadFileConfig(mime_type="text/plain")
    )
    second = await aio.files.upload(
        file=io.BytesIO(b"y" * 20), config=types.UploadFileConfig(mime_type="text/plain")
    )
    got = await aio.files.get(name=first.name)
    assert (got.name, got.size_bytes, got.uri) == (first.name, 10, first.uri)
    async with http.get(url(server, f"/v1beta/{first.name}"), headers=KEY) as r:
        types.File.model_validate(await r.json())  # the File itself, no "file" wrapper
    listed = [f.name async for f in await aio.files.list(config={"page_size": 1})]
    assert listed == [first.name, second.name]

    # An uploaded file is not downloadable; a generated one (stored with bytes) is.
    async with http.get(url(server, f"/v1beta/{first.name}:download?alt=media"), headers=KEY) as r:
        assert r.status == 400
    server.app[emulator_state_key].files[second.name].data = b"generated"
    async with http.get(url(server, f"/v1beta/{second.name}:download?alt=media"), headers=KEY) as r:
        assert (r.status, await r.read()) == (200, b"generated")

    await aio.files.delete(name=first.name)
    with pytest.raises(errors.ClientError) as refused:
        await aio.files.get(name=first.name)
    assert refused.value.code == 403
    assert [f.name async for f in await aio.files.list()] == [second.name]
