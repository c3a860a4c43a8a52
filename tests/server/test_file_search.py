"""Isolation of File Search stores, and of operations named by a bare id.

A store is its creator's alone, with everything under it (documents, operations, media,
imports and uploads), by every spelling; a request whose File Search tool names someone
else's store is refused; the list shows the caller's own stores only; bare operations are
nobody's to reach. As in ``test_resource_isolation``: "refused" is a 404 in Gemini's
shape (the answer for a store nobody owns) and the catch-all ``recording_upstream``
received nothing; the owner's own call still goes through. carol shares alice's team:
sharing is by owner.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.factories import (
    RecordingUpstream,
    Stack,
    StackFactory,
    assert_only_the_owner_reaches,
    gemini_error,
    raw,
    raw_target,
    sqlite_only,
)
from tests.server.test_resource_isolation import MODEL, OTHERS, _owned_by_alice


async def _create_store(stack: Stack, user: str) -> str:
    status, _, body = await raw(
        "POST",
        stack.url("/v1beta/fileSearchStores"),
        headers=stack.headers(user),
        json={"displayName": f"{user}'s docs"},
    )
    assert status == 200
    name = json.loads(body)["name"]
    assert isinstance(name, str)
    return name


async def _store_of_alice(
    make_stack: StackFactory, upstream: RecordingUpstream
) -> tuple[Stack, str, str]:
    """A proxy on the recording upstream, a store alice created and a file she uploaded."""
    stack, _, file = await _owned_by_alice(make_stack, upstream)
    store = await _create_store(stack, "alice")
    upstream.received.clear()
    return stack, store, file


# --- every method on a store, and under it, in every spelling ------------------------------

STORE_TARGETS = [
    ("GET", "/v1beta/{store}"),
    ("GET", "/v1/{store}/"),
    ("GET", "/v1alpha/FILESEARCHSTORES/{store_id}"),
    ("GET", "/upload/v1beta/{store}"),
    ("GET", "/v1beta/{store}?fields=name"),
    ("DELETE", "/v1beta/{store}?force=true"),
    ("DELETE", "/v1/filesearchstores/{store_id}/"),
    ("POST", "/v1beta/{store}:importFile"),
    ("POST", "/v1beta/{store}:IMPORTFILE"),
    ("POST", "/upload/v1beta/{store}:uploadToFileSearchStore"),
    ("POST", "/v1beta/{store}:uploadToFileSearchStore"),
    ("GET", "/v1beta/{store}/documents"),
    ("GET", "/v1beta/{store}/documents?pageSize=5"),
    ("GET", "/v1beta/{store}/documents/doc-1"),
    ("DELETE", "/v1beta/{store}/Documents/doc-1/?force=true"),
    ("GET", "/v1beta/{store}/operations/op-1"),
    ("GET", "/v1beta/{store}/upload/operations/op-1"),
    ("GET", "/v1beta/{store}/media/blob-1?alt=media"),
]


def _body_for(target: str, file: str) -> bytes:
    if "importfile" in target.lower():
        return json.dumps({"fileName": file}).encode()
    if "uploadtofilesearchstore" in target.lower():
        return b'{"displayName": "notes"}'
    return b""


@pytest.mark.parametrize(("method", "template"), STORE_TARGETS)
async def test_others_get_404_on_a_store_and_nothing_is_forwarded(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, method: str, template: str
):
    stack, store, file = await _store_of_alice(make_stack, recording_upstream)
    target = template.format(store=store, store_id=store.removeprefix("fileSearchStores/"))
    body = _body_for(target, file)
    for user in OTHERS:
        status, answer = await raw_target(stack, method, target, user, body)
        assert status == 404, (user, target)
        message = gemini_error(answer, 404, "NOT_FOUND")
        assert stack.keys[user] not in message
    assert recording_upstream.received == []
    # the owner's own call, in the same spelling, reaches the upstream as sent
    status, _ = await raw_target(stack, method, target, "alice", body)
    assert status == 200, target
    assert [r.raw_path for r in recording_upstream.received] == [target]
    assert recording_upstream.received[0].body == body


async def test_an_import_into_ones_own_store_is_recorded_once_at_its_embedding_model(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack, store, file = await _store_of_alice(make_stack, recording_upstream)
    status, _, _ = await raw(
        "POST",
        stack.url(f"/v1beta/{store}:importFile"),
        headers=stack.headers("alice"),
        json={"fileName": file},
    )
    assert status == 200
    [seen] = recording_upstream.received
    assert json.loads(seen.body) == {"fileName": file}
    imports = [r for r in await stack.records() if r["endpoint"] == "file_search.import"]
    assert [(r["user_id"], r["model"], r["unmetered_route"]) for r in imports] == [
        # the store's embeddingModel, as the upstream's create answered it
        (await stack.user_id("alice"), "gemini-embedding-001", True)
    ]


@sqlite_only
async def test_a_store_nobody_owns_is_404_even_for_a_case_variant(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack, store, _ = await _store_of_alice(make_stack, recording_upstream)
    for target in (
        "/v1beta/fileSearchStores/never-made",
        "/v1beta/fileSearchStores/never-made/documents",
        f"/v1beta/{store.upper()}",
        f"/v1beta/fileSearchStores/{store.split('/')[1].upper()}/operations/op-1",
    ):
        for user in ("alice", "bob"):
            status, answer = await raw_target(stack, "GET", target, user)
            assert status == 404, (user, target)
            gemini_error(answer, 404, "NOT_FOUND")
    assert recording_upstream.received == []


@sqlite_only
@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("PATCH", "/v1beta/{store}"),
        ("POST", "/v1beta/{store}"),
        ("PUT", "/v1beta/{store}"),
        ("POST", "/v1beta/{store}:query"),
        ("POST", "/v1beta/{store}/documents"),
        ("GET", "/v1beta/{store}/documents/doc-1/chunks"),
        ("POST", "/v1beta/{store}/operations/op-1:cancel"),
        ("GET", "/v1beta/{store}/operations"),
        ("DELETE", "/v1beta/fileSearchStores"),
        ("POST", "/v1beta/fileSearchStores:importFile"),
    ],
)
async def test_unknown_methods_on_a_store_are_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, method: str, target: str
):
    stack, store, _ = await _store_of_alice(make_stack, recording_upstream)
    for user in ("alice", "bob"):
        status, answer = await raw_target(stack, method, target.format(store=store), user)
        assert status == 405, (user, method, target)
        gemini_error(answer, 405, "INVALID_ARGUMENT")
    assert recording_upstream.received == []


async def test_the_list_shows_the_callers_own_stores(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack, store, _ = await _store_of_alice(make_stack, recording_upstream)
    path = "/v1beta/fileSearchStores?pageSize=10"
    status, _, body = await raw("GET", stack.url(path), headers=stack.headers("bob"))
    assert status == 200
    assert json.loads(body) == {}  # the upstream answered alice's, the proxy hid it
    status, _, body = await raw("GET", stack.url(path), headers=stack.headers("alice"))
    assert [s["name"] for s in json.loads(body)["fileSearchStores"]] == [store]
    bobs = await _create_store(stack, "bob")
    status, _, body = await raw("GET", stack.url(path), headers=stack.headers("bob"))
    assert [s["name"] for s in json.loads(body)["fileSearchStores"]] == [bobs]
    # every list reached the upstream, which answered with every user's stores
    assert recording_upstream.paths() == [path, path, "/v1beta/fileSearchStores", path]
    assert recording_upstream.stores == [store, bobs]


# --- a request naming someone else's store --------------------------------------------------


def _tool(key: str, field: str, names: list[str]) -> dict[str, Any]:
    return {
        "contents": [{"role": "user", "parts": [{"text": "what do my notes say?"}]}],
        "tools": [{key: {field: names}}],
    }


NAMING_A_STORE = [
    # (path, body built from the store's name)
    (
        f"/v1beta/models/{MODEL}:generateContent",
        lambda s: _tool("fileSearch", "fileSearchStoreNames", [s]),
    ),
    # what google-genai 3.6.1 sends for types.Tool(file_search=types.FileSearch(...))
    (
        f"/v1beta/models/{MODEL}:generateContent",
        lambda s: _tool("fileSearch", "file_search_store_names", [s]),
    ),
    (
        f"/v1/models/{MODEL}:generateContent",
        lambda s: _tool("file_search", "file_search_store_names", [s.split("/")[1]]),
    ),
    (
        f"/v1beta/models/{MODEL}:generateContent",
        lambda s: _tool("fileSearch", "fileSearchStoreNames", [f"v1beta/{s}"]),
    ),
    (
        f"/v1beta/models/{MODEL}:generateContent",
        lambda s: _tool("fileSearch", "fileSearchStoreNames", [s.upper()]),
    ),
    (
        f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
        lambda s: _tool("fileSearch", "fileSearchStoreNames", [s]),
    ),
    (
        f"/v1beta/models/{MODEL}:countTokens",
        lambda s: {"generateContentRequest": _tool("fileSearch", "fileSearchStoreNames", [s])},
    ),
    (
        "/v1beta/cachedContents",
        lambda s: {"model": f"models/{MODEL}", **_tool("fileSearch", "fileSearchStoreNames", [s])},
    ),
    (
        "/v1beta/interactions",
        lambda s: {
            "model": "gemini-3.5-flash",
            "input": "what do my notes say?",
            "tools": [{"type": "file_search", "file_search_store_names": [s]}],
        },
    ),
]


@pytest.mark.parametrize(("path", "build"), NAMING_A_STORE)
async def test_naming_someone_elses_store_is_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, path: str, build: Any
):
    stack, store, _ = await _store_of_alice(make_stack, recording_upstream)
    body = build(store)
    # another name than the owned one is refused to alice too
    owner_too = store.upper() in json.dumps(body)
    await assert_only_the_owner_reaches(
        stack, recording_upstream, path, body, OTHERS, owner_too=owner_too
    )


@sqlite_only
async def test_ones_own_store_beside_someone_elses_is_still_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack, store, _ = await _store_of_alice(make_stack, recording_upstream)
    bobs = await _create_store(stack, "bob")
    recording_upstream.received.clear()
    path = stack.url(f"/v1beta/models/{MODEL}:generateContent")
    body = _tool("fileSearch", "fileSearchStoreNames", [bobs, store])
    status, _, _ = await raw("POST", path, headers=stack.headers("bob"), json=body)
    assert status == 404
    assert recording_upstream.received == []
    body = _tool("fileSearch", "fileSearchStoreNames", [bobs])
    status, _, _ = await raw("POST", path, headers=stack.headers("bob"), json=body)
    assert status == 200
    assert len(recording_upstream.received) == 1


@sqlite_only
async def test_a_store_name_the_proxy_cannot_read_is_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack, store, _ = await _store_of_alice(make_stack, recording_upstream)
    path = stack.url(f"/v1beta/models/{MODEL}:generateContent")
    for names in (store, [f"{store}/documents/d"], [7], [""]):
        body = {"tools": [{"fileSearch": {"fileSearchStoreNames": names}}]}
        status, _, answer = await raw("POST", path, headers=stack.headers("alice"), json=body)
        assert status == 400, names
        gemini_error(answer, 400, "INVALID_ARGUMENT")
    assert recording_upstream.received == []


@sqlite_only
async def test_an_import_of_someone_elses_file_is_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    # bob's own store, alice's file: the file is checked like any a body names
    stack, _, alices_file = await _store_of_alice(make_stack, recording_upstream)
    bobs = await _create_store(stack, "bob")
    recording_upstream.received.clear()
    for body in ({"fileName": alices_file}, {"file_name": alices_file}):
        status, _, answer = await raw(
            "POST", stack.url(f"/v1beta/{bobs}:importFile"), headers=stack.headers("bob"), json=body
        )
        assert status == 404, body
        gemini_error(answer, 404, "NOT_FOUND")
    assert recording_upstream.received == []
    # a refused import is not recorded either (alice's cache is the one record)
    assert [r["endpoint"] for r in await stack.records()] == ["cached_content.create"]


@sqlite_only
async def test_an_upload_session_cannot_be_pointed_at_someone_elses_store(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    # bob starts an upload into his own store, then sends its keyless byte leg (the
    # upload id is the only credential) to alice's store path
    stack, store, _ = await _store_of_alice(make_stack, recording_upstream)
    bobs = await _create_store(stack, "bob")
    status, headers, _ = await raw(
        "POST",
        stack.url(f"/upload/v1beta/{bobs}:uploadToFileSearchStore"),
        headers=stack.headers("bob", **{"x-goog-upload-command": "start"}),
        json={"displayName": "bob's notes"},
    )
    assert status == 200
    upload_id = headers["x-goog-upload-url"].partition("upload_id=")[2].partition("&")[0]
    recording_upstream.received.clear()
    leg = {"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "0"}
    status, _, answer = await raw(
        "POST",
        stack.url(f"/upload/v1beta/{store}:uploadToFileSearchStore?upload_id={upload_id}"),
        headers=leg,
        data=b"bob's bytes",
    )
    assert status == 404
    gemini_error(answer, 404, "NOT_FOUND")
    assert recording_upstream.received == []
    status, _, _ = await raw(
        "POST",
        stack.url(f"/upload/v1beta/{bobs}:uploadToFileSearchStore?upload_id={upload_id}"),
        headers=leg,
        data=b"bob's bytes",
    )
    assert status == 200
    assert [r.body for r in recording_upstream.received] == [b"bob's bytes"]


# --- operations by a bare id ----------------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/v1beta/operations/op-1"),
        ("GET", "/v1/operations"),
        ("GET", "/v1/operations?pageSize=50"),
        ("GET", "/v1alpha/OPERATIONS/op-1/"),
        ("DELETE", "/v1/operations/op-1"),
        ("POST", "/v1beta/operations/op-1:cancel"),
        ("GET", "/upload/v1beta/operations/op-1"),
    ],
)
async def test_bare_operations_are_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, method: str, target: str
):
    stack = await make_stack(upstream=recording_upstream.url)
    for user in ("alice", "bob"):
        status, answer = await raw_target(stack, method, target, user)
        assert status == 404, (user, target)
        gemini_error(answer, 404, "NOT_FOUND")
    assert recording_upstream.received == []
    assert await stack.records() == []
