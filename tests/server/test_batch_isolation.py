"""Isolation: a batch, its input file and its responses file are reachable only by their owner.

Each bypass is tried against the catch-all ``recording_upstream``: "refused" means
nothing reached it, and the owner's own call still goes through. The recording upstream
answers a create with ``batches/rec-N`` and every get with that batch done, its results
in ``files/batch-rec-N``, which the proxy then owns by the batch's owner.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from proxy.emulator import EmulatorConfig
from tests.factories import (
    RecordingUpstream,
    Stack,
    StackFactory,
    batch_request,
    gemini_error,
    raw,
    raw_target,
)

MODEL = "gemini-2.5-flash"
CREATE = f"/v1beta/models/{MODEL}:batchGenerateContent"
INLINE: dict[str, Any] = {
    "batch": {"inputConfig": {"requests": {"requests": [{"request": {"contents": []}}]}}}
}


async def create_batch(stack: Stack, user: str) -> str:
    status, _, body = await raw("POST", stack.url(CREATE), headers=stack.headers(user), json=INLINE)
    assert status == 200, body
    name: str = json.loads(body)["name"]
    return name


async def _stack_with_batch(
    make_stack: StackFactory, upstream: RecordingUpstream, **overrides: Any
) -> tuple[Stack, str, str]:
    """A proxy on the recording upstream; a batch alice created and polled through it
    (so its responses file is hers too); the upstream's log cleared."""
    stack = await make_stack(upstream=upstream.url, **overrides)
    name = await create_batch(stack, "alice")
    status, _, body = await raw("GET", stack.url(f"/v1beta/{name}"), headers=stack.headers("alice"))
    assert status == 200
    file: str = json.loads(body)["metadata"]["output"]["responsesFile"]
    upstream.received.clear()
    return stack, name, file


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("GET", "/"),
        ("DELETE", ""),
        ("DELETE", "/"),
        ("POST", ":cancel"),
        ("POST", "/cancel"),
        ("POST", ":CANCEL"),
        ("PATCH", ":updateGenerateContentBatch"),
        ("PATCH", ":updateEmbedContentBatch"),
    ],
)
async def test_every_method_on_a_batch_is_checked_against_the_owner(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, method: str, suffix: str
):
    stack, name, _ = await _stack_with_batch(make_stack, recording_upstream)
    path = f"/v1beta/{name}{suffix}"
    for user in ("bob", "carol"):  # carol shares alice's team; sharing is by owner
        status, _, body = await raw(method, stack.url(path), headers=stack.headers(user))
        assert status == 404, user
        gemini_error(body, 404, "NOT_FOUND")
    assert recording_upstream.received == []
    status, _, _ = await raw(method, stack.url(path), headers=stack.headers("alice"), json={})
    assert status == 200
    assert [(r.method, r.raw_path) for r in recording_upstream.received] == [(method, path)]


@pytest.mark.parametrize(
    "template",
    [
        "/v1/{name}",
        "/v1alpha/{name}",
        "/download/v1beta/{name}",
        "/upload/v1beta/{name}",
        "/v1beta/BATCHES/{bid}",
        "/v1beta/Batches/{bid}/",
        "/v1beta/{name}?name=batches/mine",
        "/v1beta/{name}?alt=json",
    ],
)
async def test_every_spelling_of_a_batch_is_checked(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, template: str
):
    stack, name, _ = await _stack_with_batch(make_stack, recording_upstream)
    target = template.format(name=name, bid=name.split("/")[1])
    status, body = await raw_target(stack, "GET", target)
    assert status == 404, target
    gemini_error(body, 404, "NOT_FOUND")
    assert recording_upstream.received == []
    status, _ = await raw_target(stack, "GET", target, user="alice")
    assert status == 200
    assert recording_upstream.paths() == [target]


async def test_a_batch_id_in_another_case_is_not_the_owners(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    # Ids are compared exactly: should the upstream read "REC-1" as "rec-1", the proxy
    # has refused it rather than waved it through.
    stack, name, _ = await _stack_with_batch(make_stack, recording_upstream)
    for user in ("alice", "bob"):
        status, _ = await raw_target(stack, "GET", f"/v1beta/{name.upper()}", user=user)
        assert status == 404
    assert recording_upstream.received == []


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/v1beta/{name}:frobnicate"),
        ("GET", "/v1beta/{name}/operations"),
        ("GET", "/v1beta/{name}:cancel"),
        ("PUT", "/v1beta/{name}"),
        ("POST", "/v1beta/batches"),
        ("DELETE", "/v1beta/batches"),
        ("GET", "/v1beta/batches:list"),
    ],
)
async def test_unknown_methods_on_batches_are_refused_for_everyone(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, method: str, target: str
):
    stack, name, _ = await _stack_with_batch(make_stack, recording_upstream)
    for user in ("alice", "bob"):
        status, body = await raw_target(stack, method, target.format(name=name), user=user)
        assert status == 405, user
        gemini_error(body, 405, "INVALID_ARGUMENT")
    assert recording_upstream.received == []


@pytest.mark.parametrize(
    "config",
    [
        {"inputConfig": {"fileName": "{file}"}},
        {"input_config": {"file_name": "{file}"}},
        {"inputConfig": {"file_name": "{file}"}},
        {"inputConfig": {"fileName": "{file}/"}},
        {"inputConfig": {"fileName": "https://generativelanguage.googleapis.com/v1beta/{file}"}},
        # his own file in one spelling, hers in the other: each is checked
        {"inputConfig": {"fileName": "{own}", "file_name": "{file}"}},
        {"inputConfig": {"fileName": "{own}"}, "input_config": {"fileName": "{file}"}},
    ],
)
async def test_a_batch_on_another_users_input_file_is_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, config: dict[str, Any]
):
    stack, _, file = await _stack_with_batch(make_stack, recording_upstream)
    # bob's own file: the responses file of a batch of his
    own_batch = await create_batch(stack, "bob")
    status, _, body = await raw(
        "GET", stack.url(f"/v1beta/{own_batch}"), headers=stack.headers("bob")
    )
    own = json.loads(body)["metadata"]["output"]["responsesFile"]
    recording_upstream.received.clear()
    batch = json.loads(json.dumps(config).replace("{file}", file).replace("{own}", own))
    status, _, body = await raw(
        "POST", stack.url(CREATE), headers=stack.headers("bob"), json={"batch": batch}
    )
    assert status == 404
    gemini_error(body, 404, "NOT_FOUND")
    assert recording_upstream.received == []
    # his own file alone goes through
    status, _, _ = await raw(
        "POST",
        stack.url(CREATE),
        headers=stack.headers("bob"),
        json={"batch": {"inputConfig": {"fileName": own}}},
    )
    assert status == 200
    assert len(recording_upstream.received) == 1


@pytest.mark.parametrize("value", [7, "", ["files/x"], {"name": "files/x"}, "gs://bucket/x"])
async def test_an_input_file_the_proxy_cannot_read_is_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, value: object
):
    stack = await make_stack(upstream=recording_upstream.url)
    status, _, body = await raw(
        "POST",
        stack.url(CREATE),
        headers=stack.headers("alice"),
        json={"batch": {"inputConfig": {"fileName": value}}},
    )
    assert status == 400
    gemini_error(body, 400, "INVALID_ARGUMENT")
    assert recording_upstream.received == []


@pytest.mark.parametrize(
    "template",
    [
        "/v1beta/{file}:download?alt=media",
        "/v1/{file}:download?alt=media",
        "/download/v1beta/{file}:download?alt=media",
        "/download/v1/{file}:download?alt=media",
        "/v1beta/{file}:DOWNLOAD?alt=media",
        "/v1beta/FILES/{fid}:download?alt=media",
        "/v1beta/{file}:download",
    ],
)
async def test_another_users_responses_file_is_not_downloaded(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, template: str
):
    stack, _, file = await _stack_with_batch(make_stack, recording_upstream)
    target = template.format(file=file, fid=file.split("/")[1])
    for user in ("bob", "carol"):
        status, body = await raw_target(stack, "GET", target, user=user)
        assert status == 404, user
        gemini_error(body, 404, "NOT_FOUND")
    assert recording_upstream.received == []
    status, _ = await raw_target(stack, "GET", target, user="alice")
    assert status == 200
    assert recording_upstream.paths() == [target]


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/v1beta/{name}?fields=name", {}),
        ("/v1beta/{name}?$fields=metadata.state", {}),
        ("/v1beta/{name}", {"x-goog-fieldmask": "name"}),
        ("/v1beta/batches?fields=operations.name", {}),
    ],
)
async def test_what_could_strip_results_is_refused(
    make_stack: StackFactory,
    recording_upstream: RecordingUpstream,
    target: str,
    headers: dict[str, str],
):
    stack, name, file = await _stack_with_batch(make_stack, recording_upstream)
    status, _, body = await raw(
        "GET",
        stack.url(target.format(name=name, file=file)),
        headers=stack.headers("alice", **headers),
    )
    assert status == 400
    gemini_error(body, 400, "INVALID_ARGUMENT")
    assert recording_upstream.received == []


async def test_a_list_shows_and_records_only_ones_own_batches(make_stack: StackFactory):
    stack = await make_stack(EmulatorConfig(batch_seconds=0.1))
    request = [batch_request("hi")]
    names: dict[str, list[str]] = {"alice": [], "bob": [], "carol": []}
    for user in ("alice", "bob", "alice", "carol"):
        job = await stack.sdk(user).aio.batches.create(model=MODEL, src=request)
        assert job.name is not None
        names[user].append(job.name)
    await asyncio.sleep(0.2)  # all four done, their results inline in the list
    # The upstream lists all four: the proxy passes on, and records, bob's alone.
    status, _, body = await raw(
        "GET", stack.url("/v1beta/batches?pageSize=100"), headers=stack.headers("bob")
    )
    assert status == 200
    assert [op["name"] for op in json.loads(body)["operations"]] == names["bob"]
    assert len(json.loads(body)["operations"][0]["metadata"]["output"]) == 1
    rows = await stack.records()
    assert [(r["user_id"], r["resource"]) for r in rows] == [
        (await stack.user_id("bob"), names["bob"][0])
    ]
    for user, own in names.items():
        listed = [b.name async for b in await stack.sdk(user).aio.batches.list()]
        assert sorted(n for n in listed if n) == sorted(own), user
    owners = {r["resource"]: r["user_id"] for r in await stack.records()}
    assert len(owners) == 4
    for user, own in names.items():
        for name in own:
            assert owners[name] == await stack.user_id(user)


async def test_a_list_the_proxy_cannot_filter_passes_on_nothing(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    # The recording upstream answers a list with {"ok": true}: no "operations" to filter,
    # so nothing of it goes back (a field the proxy does not know could name anyone's).
    stack, _, _ = await _stack_with_batch(make_stack, recording_upstream)
    status, _, body = await raw(
        "GET", stack.url("/v1beta/batches?pageSize=5"), headers=stack.headers("alice")
    )
    assert status == 200
    assert json.loads(body) == {}  # no operations: Google's JSON leaves the empty list out
    assert recording_upstream.paths() == ["/v1beta/batches?pageSize=5"]
