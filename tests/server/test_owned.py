"""Ownership of interactions (``server.owned``, checked at admission) over real HTTP on
both databases."""

from __future__ import annotations

import json

from proxy.server.typedefs import authenticator_key
from tests.factories import (
    INTERACTIONS,
    SAY_HELLO,
    Stack,
    StackFactory,
    gemini_error,
    raw,
)


async def test_interactions_are_served_only_to_their_owner(stack: Stack):
    status, _, body = await raw(
        "POST", stack.url(INTERACTIONS), headers=stack.headers("alice"), json=SAY_HELLO
    )
    assert status == 200
    iid = json.loads(body)["id"]
    before = len(stack.upstream.requests)
    for method, path, payload in (
        ("GET", f"{INTERACTIONS}/{iid}", None),
        ("POST", f"{INTERACTIONS}/{iid}/cancel", None),
        ("DELETE", f"{INTERACTIONS}/{iid}", None),
        ("POST", INTERACTIONS, {**SAY_HELLO, "previous_interaction_id": iid}),
    ):
        status, _, body = await raw(
            method, stack.url(path), headers=stack.headers("bob"), json=payload
        )
        assert status == 404, (method, path)
        gemini_error(body, 404, "NOT_FOUND")
    # carol shares alice's team, but sharing is by owner by default
    status, _, _ = await raw(
        "GET", stack.url(f"{INTERACTIONS}/{iid}"), headers=stack.headers("carol")
    )
    assert status == 404
    assert len(stack.upstream.requests) == before
    status, _, _ = await raw(
        "GET", stack.url(f"{INTERACTIONS}/{iid}"), headers=stack.headers("alice")
    )
    assert status == 200


async def test_team_sharing_lets_teammates_continue_an_interaction(make_stack: StackFactory):
    stack = await make_stack(interaction_sharing="team")
    _, _, body = await raw(
        "POST", stack.url(INTERACTIONS), headers=stack.headers("alice"), json=SAY_HELLO
    )
    iid = json.loads(body)["id"]
    follow = {**SAY_HELLO, "previous_interaction_id": iid}
    ok, _, _ = await raw(
        "POST", stack.url(INTERACTIONS), headers=stack.headers("carol"), json=follow
    )
    refused, _, _ = await raw(
        "POST", stack.url(INTERACTIONS), headers=stack.headers("bob"), json=follow
    )
    assert (ok, refused) == (200, 404)


async def test_ownership_survives_a_restart_through_the_database(stack: Stack):
    _, _, body = await raw(
        "POST", stack.url(INTERACTIONS), headers=stack.headers("alice"), json=SAY_HELLO
    )
    iid = json.loads(body)["id"]
    await stack.records()  # the writer has stored the owner
    # a fresh authenticator (another process) knows nothing in memory
    auth = stack.app[authenticator_key]
    auth._owners = type(auth._owners)(10)
    status, _, _ = await raw(
        "GET", stack.url(f"{INTERACTIONS}/{iid}"), headers=stack.headers("bob")
    )
    assert status == 404
    status, _, _ = await raw(
        "GET", stack.url(f"{INTERACTIONS}/{iid}"), headers=stack.headers("alice")
    )
    assert status == 200
