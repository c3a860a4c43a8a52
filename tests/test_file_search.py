"""File Search stores end to end: google-genai 3.6.1's ``file_search_stores`` and a
``generate_content`` with the File Search tool, through the proxy, on the emulator.

The store is its creator's: bob cannot get, delete, list or search alice's store, and
the emulator's own ledger of requests proves none of his attempts reached it.
"""

from __future__ import annotations

import pytest
from google.genai import errors, types

from tests.factories import Stack

MODEL = "gemini-2.5-flash"


def _search(store: str) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        tools=[types.Tool(file_search=types.FileSearch(file_search_store_names=[store]))]
    )


def _reached(stack: Stack, since: int = 0) -> list[str]:
    """The emulator's record of the requests that reached it, the version left out."""
    seen = list(stack.upstream.requests)[since:]
    return [f"{r.method} {r.path.split('/', 2)[2]}" for r in seen]


async def test_a_store_is_its_creators_alone(stack: Stack):
    alice, bob = stack.sdk("alice").aio, stack.sdk("bob").aio
    store = await alice.file_search_stores.create(config={"display_name": "Alice's notes"})
    assert store.name is not None and store.name.startswith("fileSearchStores/alice-s-notes-")
    name = store.name
    # the emulator holds it (its own ledger), and the proxy gave it to alice
    assert stack.upstream.file_search_stores[name].display_name == "Alice's notes"
    fetched = await alice.file_search_stores.get(name=name)
    assert fetched.display_name == "Alice's notes"
    assert [s.name async for s in await alice.file_search_stores.list()] == [name]
    answer = await alice.models.generate_content(
        model=MODEL, contents="What do my notes say?", config=_search(name)
    )
    assert answer.text

    before = len(stack.upstream.requests)
    for attempt in (
        bob.file_search_stores.get(name=name),
        bob.file_search_stores.delete(name=name, config={"force": True}),
        bob.models.generate_content(model=MODEL, contents="Spill.", config=_search(name)),
    ):
        with pytest.raises(errors.ClientError) as refused:
            await attempt
        assert refused.value.code == 404
    # bob's list reached the emulator, which answered alice's store; the proxy hid it
    assert [s.name async for s in await bob.file_search_stores.list()] == []
    assert _reached(stack, before) == ["GET fileSearchStores"]

    await alice.file_search_stores.delete(name=name, config={"force": True})
    assert stack.upstream.file_search_stores[name].deleted
    assert [r for r in _reached(stack) if name in r] == [f"GET {name}", f"DELETE {name}"]
