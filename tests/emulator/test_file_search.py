"""The emulator's File Search stores, read back through google-genai's own types.

Every field it answers must be one ``types.FileSearchStore`` declares (SDK 3.6.1), and
the list pages as Google's reference says (``pageSize``, ``nextPageToken``).
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from google.genai import errors, types

from proxy.emulator import emulator_state_key
from tests.emulator.test_emulator import KEY, assert_fully_known, url


async def test_create_get_list_delete(aio: Any, http: Any, server: TestServer) -> None:
    async with http.get(url(server, "/v1beta/fileSearchStores"), headers=KEY) as response:
        assert response.status == 200
        assert await response.json() == {}  # nothing yet: no empty list
    made = [
        await aio.file_search_stores.create(config={"display_name": f"Docs {n}"}) for n in range(3)
    ]
    for store in made:
        assert_fully_known(store)
        assert store.name is not None
        assert store.active_documents_count == 0 and store.size_bytes == 0
        assert store.embedding_model == "models/gemini-embedding-001"
    store = made[0]
    assert store.name is not None and store.name.startswith("fileSearchStores/docs-0-")
    # 12 random characters after the display name's slug, within Google's 40
    assert len(store.name.removeprefix("fileSearchStores/docs-0-")) == 12
    got = await aio.file_search_stores.get(name=store.name)
    assert_fully_known(got)
    assert got.display_name == "Docs 0"
    pager = await aio.file_search_stores.list(config=types.ListFileSearchStoresConfig(page_size=2))
    assert [s.name async for s in pager] == [s.name for s in made]  # two pages
    await aio.file_search_stores.delete(name=store.name, config={"force": True})
    assert server.app[emulator_state_key].file_search_stores[store.name].deleted
    with pytest.raises(errors.ClientError) as missing:
        await aio.file_search_stores.get(name=store.name)
    assert missing.value.code == 404
    assert missing.value.status == "NOT_FOUND"
