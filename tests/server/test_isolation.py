"""Isolation: an interaction is reachable only by its owner, by every spelling.

Each bypass is tried against the catch-all ``recording_upstream``: "refused"
means nothing reached it, and the owner's own call (in its canonical form)
still goes through. Both databases.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from proxy.server.app import create_app
from proxy.server.typedefs import metrics_key, sessionmaker_key
from proxy.storage.journal import decode_frames
from proxy.storage.schema import Interaction
from tests.factories import (
    INTERACTIONS,
    SAY_HELLO,
    RecordingUpstream,
    Stack,
    StackFactory,
    gemini_error,
    issue_keys,
    raw,
    raw_target,
    sqlite_only,
)


async def _stack_with_interaction(
    make_stack: StackFactory, upstream: RecordingUpstream, **overrides: Any
) -> tuple[Stack, str]:
    """A proxy on the recording upstream, and an interaction alice created through it."""
    stack = await make_stack(upstream=upstream.url, **overrides)
    status, _, body = await raw(
        "POST", stack.url(INTERACTIONS), headers=stack.headers("alice"), json=SAY_HELLO
    )
    assert status == 200
    iid = json.loads(body)["id"]
    upstream.received.clear()
    return stack, iid


# --- method overrides -----------------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"X-HTTP-Method-Override": "GET"}, ""),
        ({"X-HTTP-Method-Override": "DELETE"}, ""),
        ({"x-http-method": "GET"}, ""),
        ({"X-Method-Override": "DELETE"}, ""),
        ({}, "?$httpMethod=GET"),
        ({}, "?%24httpMethod=DELETE"),
        ({}, "?httpMethod=GET"),
    ],
    ids=["xhmo-get", "xhmo-delete", "x-http-method", "x-method-override", "$q", "%24q", "q"],
)
async def test_method_overrides_are_refused_for_everyone(
    make_stack: StackFactory,
    recording_upstream: RecordingUpstream,
    headers: dict[str, str],
    query: str,
):
    stack, iid = await _stack_with_interaction(make_stack, recording_upstream)
    for user in ("bob", "alice"):
        status, _, body = await raw(
            "POST",
            stack.url(f"{INTERACTIONS}/{iid}{query}"),
            headers=stack.headers(user, **headers),
        )
        assert status == 400, user
        assert "method override" in gemini_error(body, 400, "INVALID_ARGUMENT")
    assert recording_upstream.received == []
    # the owner's plain GET still works
    status, _, _ = await raw(
        "GET", stack.url(f"{INTERACTIONS}/{iid}"), headers=stack.headers("alice")
    )
    assert status == 200
    assert recording_upstream.paths() == [f"{INTERACTIONS}/{iid}"]


# --- every method and custom-method suffix ---------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("DELETE", ""), ("POST", "/cancel"), ("POST", ":cancel")],
)
async def test_every_known_method_is_checked_against_the_owner(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, method: str, suffix: str
):
    stack, iid = await _stack_with_interaction(make_stack, recording_upstream)
    path = f"{INTERACTIONS}/{iid}{suffix}"
    for user in ("bob", "carol"):  # carol shares alice's team; sharing is by owner
        status, _, body = await raw(method, stack.url(path), headers=stack.headers(user))
        assert status == 404, user
        gemini_error(body, 404, "NOT_FOUND")
    assert recording_upstream.received == []
    status, _, _ = await raw(method, stack.url(path), headers=stack.headers("alice"))
    assert status == 200
    assert [(r.method, r.raw_path) for r in recording_upstream.received] == [(method, path)]


@sqlite_only
@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("PATCH", ""),
        ("PUT", ""),
        ("HEAD", ""),
        ("POST", ""),
        ("OPTIONS", ""),
        ("PROPFIND", ""),
        ("GET", "/cancel"),
        ("POST", ":resume"),
        ("GET", "/steps"),
        ("DELETE", "/cancel/extra"),
    ],
)
async def test_unknown_methods_on_an_interaction_are_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, method: str, suffix: str
):
    stack, iid = await _stack_with_interaction(make_stack, recording_upstream)
    for user in ("bob", "alice"):
        status, body = await raw_target(stack, method, f"{INTERACTIONS}/{iid}{suffix}", user)
        assert status == 405, (user, method)
        if method != "HEAD":
            gemini_error(body, 405, "INVALID_ARGUMENT")
    # listing the collection would show everyone's interactions behind the shared key
    status, _, _ = await raw("GET", stack.url(INTERACTIONS), headers=stack.headers("alice"))
    assert status == 405
    assert recording_upstream.received == []


# --- paths -----------------------------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize(
    "template",
    [
        "/v1beta/./interactions/{iid}",
        "/v1beta//interactions/{iid}",
        "/v1beta/interactions//{iid}",
        "/v1beta/models/../interactions/{iid}",
        "/v1beta/interactions/{iid}/.",
        "/v1beta/interactions/x/../{iid}",
        "/v1beta/%2e/interactions/{iid}",
        "/v1beta/models/%2E%2E/interactions/{iid}",
        "/v1beta/interactions%2F{iid}",
        "/v1beta/interactions%2f{iid}%2fcancel",
        "/v1beta\\interactions\\{iid}",
        "/v1beta/interactions%5C{iid}",
        "/v1beta/interactions%252F{iid}",
        "/admin/../v1beta/interactions/{iid}",
    ],
)
async def test_ambiguous_paths_are_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, template: str
):
    stack, iid = await _stack_with_interaction(make_stack, recording_upstream)
    target = template.format(iid=iid)
    for user in ("bob", "alice"):
        status, body = await raw_target(stack, "GET", target, user)
        assert status in (400, 404), (user, target)
        if status == 400:
            assert "canonical" in gemini_error(body, 400, "INVALID_ARGUMENT")
        else:
            gemini_error(body, 404, "NOT_FOUND")
    assert recording_upstream.received == []
    status, _ = await raw_target(stack, "GET", f"{INTERACTIONS}/{iid}", "alice")
    assert status == 200
    assert recording_upstream.paths() == [f"{INTERACTIONS}/{iid}"]


@sqlite_only
async def test_the_query_is_forwarded_byte_for_byte_without_the_key(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack, iid = await _stack_with_interaction(make_stack, recording_upstream)
    key = stack.keys["alice"]
    target = f"{INTERACTIONS}/{iid}?a=%2F%2e&key={key}&b=x+y&%24key={key}&c"
    status, _ = await raw_target(stack, "GET", target, "alice")
    assert status == 200
    [seen] = recording_upstream.received
    assert seen.raw_path == f"{INTERACTIONS}/{iid}?a=%2F%2e&b=x+y&c"
    assert key not in json.dumps(seen.headers)


# --- previous_interaction_id -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "query"),
    [
        ({"previous_interaction_id": "{iid}"}, ""),
        ({"previousInteractionId": "{iid}"}, ""),
        ({}, "?previous_interaction_id={iid}"),
        ({}, "?previousInteractionId={iid}"),
        ({"previous_interaction_id": "int-nonexistent"}, "?previousInteractionId={iid}"),
        ({"previous_interaction_id": None, "previousInteractionId": "{iid}"}, ""),
    ],
    ids=["snake", "camel", "query-snake", "query-camel", "body-and-query", "null-then-camel"],
)
async def test_previous_interaction_is_checked_in_every_spelling(
    make_stack: StackFactory,
    recording_upstream: RecordingUpstream,
    body: dict[str, Any],
    query: str,
):
    stack, iid = await _stack_with_interaction(make_stack, recording_upstream)
    payload = {**SAY_HELLO, **{k: v.format(iid=iid) if v else v for k, v in body.items()}}
    url = stack.url(INTERACTIONS + query.format(iid=iid))
    status, _, answer = await raw("POST", url, headers=stack.headers("bob"), json=payload)
    assert status == 404
    gemini_error(answer, 404, "NOT_FOUND")
    assert recording_upstream.received == []
    camel = {**SAY_HELLO, "previousInteractionId": iid}
    status, _, _ = await raw(
        "POST", stack.url(INTERACTIONS), headers=stack.headers("alice"), json=camel
    )
    assert status == 200
    [seen] = recording_upstream.received
    assert json.loads(seen.body)["previousInteractionId"] == iid
    [*_, record] = await stack.records()
    assert record["previous_interaction_id"] == iid


@sqlite_only
@pytest.mark.parametrize(
    "template",
    [
        '{{"model": "m", "previous_interaction_id": "int-0", "previous_interaction_id": "{iid}"}}',
        '{{"model": "m", "previous_interaction_id": "{iid}", "previous_interaction_id": "int-0"}}',
        '{{"model": "m", "input": [{{"type": "text", "text": "a", "text": "b"}}]}}',
        '{{"previous_\\u0069nteraction_id": "{iid}", "previous_interaction_id": "0"}}',
    ],
    ids=["dup-last", "dup-first", "dup-nested", "dup-escaped"],
)
async def test_bodies_with_duplicate_keys_are_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, template: str
):
    stack, iid = await _stack_with_interaction(make_stack, recording_upstream)
    for user in ("bob", "alice"):
        status, body = await raw_target(
            stack, "POST", INTERACTIONS, user, template.format(iid=iid).encode()
        )
        assert status == 400
        assert "twice" in gemini_error(body, 400, "INVALID_ARGUMENT")
    assert recording_upstream.received == []
    assert len(await stack.records()) == 1  # alice's create, nothing since


@sqlite_only
@pytest.mark.parametrize(
    ("path", "body", "why"),
    [
        (INTERACTIONS, b'{"model": "m", "previous_interaction_id": ', "not valid JSON"),
        (INTERACTIONS, b'{"model": "m"} {"previous_interaction_id": "x"}', "not valid JSON"),
        (INTERACTIONS, b'{"model": "\xff\xfe"}', "not valid JSON"),
        (INTERACTIONS, b'{"input": ' + b"[" * 200 + b"]" * 200 + b"}", "nests too deeply"),
        (INTERACTIONS, b'{"model": "m", "previous_interaction_id": 7}', "non-empty string"),
        (INTERACTIONS, b'{"model": "m", "previousInteractionId": ["a"]}', "non-empty string"),
        ("/v1beta/models/m:generateContent", b"{contents: []}", "not valid JSON"),
        ("/v1beta/models/m:streamGenerateContent", b"\x1f\x8b\x08garbage", "not valid JSON"),
    ],
)
async def test_metered_bodies_the_proxy_cannot_check_are_refused(
    make_stack: StackFactory,
    recording_upstream: RecordingUpstream,
    path: str,
    body: bytes,
    why: str,
):
    stack = await make_stack(upstream=recording_upstream.url)
    status, answer = await raw_target(stack, "POST", path, "alice", body)
    assert status == 400
    assert why in gemini_error(answer, 400, "INVALID_ARGUMENT")
    assert recording_upstream.received == []
    assert await stack.records() == []


# --- the owner, on every replica at once -------------------------------------------------


async def test_the_owner_is_known_on_another_replica_at_once(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, proxy_server: Any
):
    # A writer that would not flush for a minute: only the commit-before-release can help.
    stack = await make_stack(upstream=recording_upstream.url, writer_flush_interval_seconds=60)
    replica_app = create_app(stack.settings, registry=CollectorRegistry())
    replica = await proxy_server(replica_app)
    keys_b = await issue_keys(replica_app)

    status, _, body = await raw(
        "POST", stack.url(INTERACTIONS), headers=stack.headers(), json=SAY_HELLO
    )
    assert status == 200
    iid = json.loads(body)["id"]
    # the row is in the database the moment the response has arrived
    async with stack.app[sessionmaker_key]() as session:
        owner_row = await session.get(Interaction, iid)
    assert owner_row is not None
    assert owner_row.user_id == await stack.user_id("alice")
    # That commit makes the row visible without waiting for a sync (storage.bulk.OwnerCommits):
    # the row is journaled as well, whose group commit makes it durable, as for a record.
    assert stack.settings.journal_dir is not None
    journaled = [
        dict(zip(names, values, strict=True))
        for segment in sorted(stack.settings.journal_dir.glob("*/*.seg"))
        for kind, names, values in decode_frames(segment.read_bytes())[0]
        if kind == "owner"
    ]
    # the very row committed, built once (its time of creation included)
    assert [(row["id"], row["user_id"], row["created_at"]) for row in journaled] == [
        (iid, owner_row.user_id, owner_row.created_at)
    ]

    via_b = str(replica.make_url(f"{INTERACTIONS}/{iid}"))
    mine, _, _ = await raw("GET", via_b, headers={"x-goog-api-key": keys_b["alice"]})
    theirs, _, answer = await raw("GET", via_b, headers={"x-goog-api-key": keys_b["bob"]})
    assert (mine, theirs) == (200, 404)
    gemini_error(answer, 404, "NOT_FOUND")
    # also through the key alice used on A: keys live in the shared database
    again, _, _ = await raw("GET", via_b, headers=stack.headers("alice"))
    assert again == 200
    assert [r.method for r in recording_upstream.received] == ["POST", "GET", "GET"]


async def test_a_streamed_create_commits_its_owner_before_naming_the_id(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, aiohttp_server: Any
):
    # The proxy's own stream path: the id is in the first event; the owner row must
    # be in the database by the time the client can read that event.
    from aiohttp import web

    async def create(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        created = {"id": "int-streamed", "status": "in_progress", "model": "gemini-3.5-flash"}
        event = {"event_type": "interaction.created", "interaction": created, "event_id": "1"}
        await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        done = {**created, "status": "completed", "usage": {"total_tokens": 3}}
        event = {"event_type": "interaction.completed", "interaction": done, "event_id": "2"}
        await response.write(b"data: " + json.dumps(event).encode() + b"\n\ndata: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post(INTERACTIONS, create)
    upstream = await aiohttp_server(app)
    stack = await make_stack(
        upstream=str(upstream.make_url("")).rstrip("/"), writer_flush_interval_seconds=60
    )
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.url(INTERACTIONS), headers=stack.headers(), json={**SAY_HELLO, "stream": True}
        ) as response,
    ):
        first = await response.content.readuntil(b"\n\n")
        assert b"int-streamed" in first
        async with stack.app[sessionmaker_key]() as db:
            owners = (await db.scalars(select(Interaction.id))).all()
        await response.read()
    assert owners == ["int-streamed"]


@sqlite_only
async def test_an_owner_the_database_cannot_take_in_time_falls_back_to_the_writer(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, database_url: str
):
    import sqlite3

    stack = await make_stack(upstream=recording_upstream.url, owner_commit_timeout_seconds=0.1)
    for user in ("alice", "bob"):  # their keys are cached from here on
        status, _, _ = await raw(
            "POST", stack.url(INTERACTIONS), headers=stack.headers(user), json=SAY_HELLO
        )
        assert status == 200
    # Another process holds SQLite's write lock: the owner row cannot be committed.
    blocker = sqlite3.connect(database_url.removeprefix("sqlite+aiosqlite:///"))
    blocker.isolation_level = None
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        status, _, body = await raw(
            "POST", stack.url(INTERACTIONS), headers=stack.headers("alice"), json=SAY_HELLO
        )
        assert status == 200  # the call is not failed for it
        iid = json.loads(body)["id"]
        assert stack.app[metrics_key].owner_commit_fallbacks._value.get() == 1
        # this process knows the owner from memory meanwhile
        mine, _, _ = await raw("GET", stack.url(f"{INTERACTIONS}/{iid}"), headers=stack.headers())
        theirs, _, _ = await raw(
            "GET", stack.url(f"{INTERACTIONS}/{iid}"), headers=stack.headers("bob")
        )
        assert (mine, theirs) == (200, 404)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # and the batching writer stores the row once the database is back
    await stack.records()
    async with stack.app[sessionmaker_key]() as session:
        row = await session.get(Interaction, iid)
    assert row is not None and row.user_id == await stack.user_id("alice")
