"""Isolation of cached contents and files: reachable only by their owner, by every spelling.

Each attempt runs against the catch-all ``recording_upstream``: "refused" means a 404 in
Gemini's shape (the same answer as for a name nobody owns) and nothing reached it; the
owner's own call still goes through. carol shares alice's team: sharing is by owner.
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

MODEL = "gemini-2.5-flash"
OTHERS = ("bob", "carol")


async def _owned_by_alice(
    make_stack: StackFactory, upstream: RecordingUpstream, **overrides: Any
) -> tuple[Stack, str, str]:
    """A proxy on the recording upstream, and a cache and a file alice created through it."""
    stack = await make_stack(upstream=upstream.url, **overrides)
    status, _, body = await raw(
        "POST",
        stack.url("/v1beta/cachedContents"),
        headers=stack.headers("alice"),
        json={"model": f"models/{MODEL}", "contents": [{"parts": [{"text": "doc"}]}]},
    )
    assert status == 200
    cache = json.loads(body)["name"]
    # the SDK's resumable upload: a keyed start, then the keyless finalizing leg
    status, headers, _ = await raw(
        "POST",
        stack.url("/upload/v1beta/files"),
        headers=stack.headers("alice", **{"x-goog-upload-command": "start"}),
        json={"file": {"displayName": "notes"}},
    )
    assert status == 200
    upload_url = headers["x-goog-upload-url"].replace(upstream.url, stack.base_url)
    status, _, body = await raw(
        "POST",
        upload_url,
        headers={"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "0"},
        data=b"alice's notes",
    )
    assert status == 200
    file = json.loads(body)["file"]["name"]
    upstream.received.clear()
    return stack, cache, file


# --- the methods on a cache or a file, in every spelling ----------------------------------


CACHE_TARGETS = [
    ("GET", "/v1beta/{cache}"),
    ("GET", "/v1/{cache}"),
    ("GET", "/v1alpha/{cache}/"),
    ("GET", "/upload/v1beta/{cache}"),
    ("GET", "/v1beta/{cache}?fields=name"),
    ("GET", "/v1beta/CACHEDCONTENTS/{cache_id}"),
    ("PATCH", "/v1beta/{cache}"),
    ("PATCH", "/v1beta/{cache}?updateMask=ttl"),
    ("DELETE", "/v1beta/{cache}"),
    ("DELETE", "/v1/cachedcontents/{cache_id}/"),
]
FILE_TARGETS = [
    ("GET", "/v1beta/{file}"),
    ("GET", "/v1/{file}/"),
    ("GET", "/upload/v1beta/{file}"),
    ("GET", "/v1beta/FILES/{file_id}"),
    ("DELETE", "/v1beta/{file}"),
    ("GET", "/v1beta/{file}:download?alt=media"),
    ("GET", "/v1alpha/{file}:DOWNLOAD?alt=media"),
]


@pytest.mark.parametrize(("method", "template"), CACHE_TARGETS + FILE_TARGETS)
async def test_others_get_404_and_nothing_is_forwarded(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, method: str, template: str
):
    stack, cache, file = await _owned_by_alice(make_stack, recording_upstream)
    target = template.format(
        cache=cache,
        cache_id=cache.removeprefix("cachedContents/"),
        file=file,
        file_id=file.removeprefix("files/"),
    )
    body = b'{"ttl": "7200s"}' if method == "PATCH" else b""
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


@sqlite_only
async def test_a_name_nobody_owns_is_404_even_for_a_case_variant(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack, cache, file = await _owned_by_alice(make_stack, recording_upstream)
    for target in (
        "/v1beta/cachedContents/never-made",
        "/v1beta/files/never-made",
        f"/v1beta/{cache.upper()}",
        f"/v1beta/files/{file.split('/')[1].upper()}",
    ):
        for user in ("alice", "bob"):
            status, answer = await raw_target(stack, "GET", target, user)
            assert status == 404, (user, target)
    assert recording_upstream.received == []


@sqlite_only
@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/v1beta/{cache}"),
        ("PUT", "/v1beta/{cache}"),
        ("GET", "/v1beta/{cache}/contents"),
        ("POST", "/v1beta/{cache}:copy"),
        ("PATCH", "/v1beta/{file}"),
        ("POST", "/v1beta/{file}:download"),
        ("GET", "/v1beta/{file}/x"),
        ("DELETE", "/v1beta/cachedContents"),
    ],
)
async def test_unknown_methods_on_a_cache_or_file_are_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, method: str, target: str
):
    stack, cache, file = await _owned_by_alice(make_stack, recording_upstream)
    for user in ("alice", "bob"):
        status, answer = await raw_target(
            stack, method, target.format(cache=cache, file=file), user
        )
        assert status == 405, (user, method, target)
    assert recording_upstream.received == []


# --- references: a request that names someone else's cache or file ------------------------


def _generate(reference: dict[str, Any]) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], **reference}


def _file_part(key: str, uri_key: str, uri: str) -> dict[str, Any]:
    return {"contents": [{"parts": [{"text": "read"}, {key: {uri_key: uri, "mimeType": "x"}}]}]}


REFERENCES = [
    # (path, body built from the cache and file names)
    (f"/v1beta/models/{MODEL}:generateContent", lambda c, f: _generate({"cachedContent": c})),
    (f"/v1beta/models/{MODEL}:generateContent", lambda c, f: _generate({"cached_content": c})),
    (
        f"/v1beta/models/{MODEL}:generateContent",
        lambda c, f: _generate({"cachedContent": c.split("/")[1]}),
    ),
    (
        f"/v1/models/{MODEL}:streamGenerateContent?alt=sse",
        lambda c, f: _generate({"cachedContent": c}),
    ),
    (
        f"/v1beta/models/{MODEL}:countTokens",
        lambda c, f: {"generateContentRequest": _generate({"cachedContent": c})},
    ),
    (
        f"/v1beta/models/{MODEL}:generateContent",
        lambda c, f: _file_part("fileData", "fileUri", f),
    ),
    (
        f"/v1beta/models/{MODEL}:generateContent",
        lambda c, f: _file_part("file_data", "file_uri", f.upper()),
    ),
    (
        f"/v1beta/models/{MODEL}:generateContent",
        lambda c, f: _file_part(
            "fileData", "fileUri", f"https://generativelanguage.googleapis.com/v1beta/{f}"
        ),
    ),
    (
        f"/v1beta/models/{MODEL}:streamGenerateContent",
        lambda c, f: _file_part("fileData", "fileUri", f"http://elsewhere:1/v1/{f}:download"),
    ),
    (
        f"/v1beta/models/{MODEL}:countTokens",
        lambda c, f: _file_part("fileData", "fileUri", f),
    ),
    (
        "/v1beta/models/gemini-embedding-001:embedContent",
        lambda c, f: {"content": {"parts": [{"fileData": {"fileUri": f}}]}},
    ),
    (
        "/v1beta/interactions",
        lambda c, f: {
            "model": "gemini-3.5-flash",
            "input": [{"type": "document", "uri": f"https://x/v1beta/{f}"}],
        },
    ),
    (
        "/v1beta/cachedContents",
        lambda c, f: {"model": f"models/{MODEL}", **_file_part("fileData", "fileUri", f)},
    ),
]


@pytest.mark.parametrize(("path", "build"), REFERENCES)
async def test_naming_someone_elses_cache_or_file_is_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, path: str, build: Any
):
    stack, cache, file = await _owned_by_alice(make_stack, recording_upstream)
    body = build(cache, file)
    # another name than the owned one is refused to alice too
    owner_too = file.upper() in json.dumps(body)
    await assert_only_the_owner_reaches(
        stack, recording_upstream, path, body, OTHERS, owner_too=owner_too
    )


@sqlite_only
async def test_a_reference_the_proxy_cannot_read_is_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack, cache, _ = await _owned_by_alice(make_stack, recording_upstream)
    path = f"/v1beta/models/{MODEL}:generateContent"
    for reference in (
        {"cachedContent": {"name": cache}},
        {"cachedContent": f"{cache}/../x"},
        {"cachedContent": 7},
    ):
        status, _, answer = await raw(
            "POST", stack.url(path), headers=stack.headers("alice"), json=_generate(reference)
        )
        assert status == 400, reference
        gemini_error(answer, 400, "INVALID_ARGUMENT")
    # a query parameter naming a cache is checked like the body's field
    status, _, _ = await raw(
        "POST",
        stack.url(f"{path}?cachedContent={cache}"),
        headers=stack.headers("bob"),
        json=_generate({}),
    )
    assert status == 404
    assert recording_upstream.received == []


async def test_lists_are_filtered_to_the_callers_own(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack, cache, file = await _owned_by_alice(make_stack, recording_upstream)
    for path, field, name in (
        ("/v1beta/cachedContents", "cachedContents", cache),
        ("/v1beta/files", "files", file),
    ):
        status, _, body = await raw("GET", stack.url(path), headers=stack.headers("bob"))
        assert status == 200
        assert json.loads(body) == {}  # the upstream answered alice's, the proxy hid it
        status, _, body = await raw("GET", stack.url(path), headers=stack.headers("alice"))
        assert [item["name"] for item in json.loads(body)[field]] == [name]
    # every list did reach the upstream, which answered with alice's item each time
    assert len(recording_upstream.received) == 4


@sqlite_only
async def test_a_file_name_chosen_by_the_client_is_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    # Owners never change: were bob to create a file under a name alice once owned (and
    # deleted), alice, not bob, could read it. So the proxy lets Google pick every name.
    stack = await make_stack(upstream=recording_upstream.url)
    for body in ({"file": {"name": "files/report"}}, {"name": "files/report"}):
        for path in ("/upload/v1beta/files", "/v1beta/files"):
            status, _, answer = await raw(
                "POST",
                stack.url(path),
                headers=stack.headers("bob", **{"x-goog-upload-command": "start"}),
                json=body,
            )
            assert status == 400, (path, body)
            assert "file name" in gemini_error(answer, 400, "INVALID_ARGUMENT")
    assert recording_upstream.received == []
    # with no name (as the SDK sends it unless told otherwise) the start goes through
    status, _, _ = await raw(
        "POST",
        stack.url("/upload/v1beta/files"),
        headers=stack.headers("bob", **{"x-goog-upload-command": "start"}),
        json={"file": {"displayName": "report", "name": ""}},
    )
    assert status == 200
    assert len(recording_upstream.received) == 1
