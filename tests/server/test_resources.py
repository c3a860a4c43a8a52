"""Owned resources (``Authenticator.commit_resource`` and friends): only the owner reaches one.

The routes that create files, caches, batches and operations build on these; here the
ownership store itself is checked on both databases, across a second replica that
shares the database but none of the first one's memory.
"""

from __future__ import annotations

import pytest

from proxy.errors import NotFound
from proxy.metering.records import Principal
from proxy.server.auth import Authenticator, PresentedKey
from proxy.server.typedefs import authenticator_key, sessionmaker_key, settings_key
from proxy.settings import InteractionSharing
from proxy.storage.schema import ResourceKind
from tests.factories import Stack, StackFactory


async def _principals(auth: Authenticator, stack: Stack) -> dict[str, Principal]:
    return {
        user: await auth.authenticate(PresentedKey(key, "header"))
        for user, key in stack.keys.items()
    }


def _replica(stack: Stack) -> Authenticator:
    """A second proxy process: the same database, empty caches."""
    app = stack.app
    settings = app[settings_key]
    return Authenticator(settings, app[sessionmaker_key], settings.secret_bytes())


async def test_only_the_owner_reaches_a_resource_on_every_replica(stack: Stack):
    auth = stack.app[authenticator_key]
    who = await _principals(auth, stack)
    name = "batches/b-123"
    assert await auth.commit_resource(ResourceKind.BATCH, name, who["alice"], "gemini-2.5-flash")

    for replica in (auth, _replica(stack)):
        found = await replica.check_resource(ResourceKind.BATCH, name, who["alice"])
        assert found is not None
        assert found.owner.user_id == who["alice"].user_id
        assert found.model == "gemini-2.5-flash"
        # another user, a teammate included (sharing is per owner by default), and a
        # name never made here all get the same 404
        for principal, asked in ((who["bob"], name), (who["carol"], name), (who["alice"], "x")):
            with pytest.raises(NotFound) as refused:
                await replica.check_resource(ResourceKind.BATCH, asked, principal)
            assert refused.value.message == f"Batch {asked!r} was not found."
        # the kind is part of the name: a file called like the batch is not the batch
        with pytest.raises(NotFound):
            await replica.check_resource(ResourceKind.FILE, name, who["alice"])


async def test_the_first_owner_stays(stack: Stack):
    auth = stack.app[authenticator_key]
    who = await _principals(auth, stack)
    await auth.commit_resource(ResourceKind.FILE, "files/f1", who["alice"])
    # a second claim on the same name (a replayed or forged response) changes nothing stored
    await _replica(stack).commit_resource(ResourceKind.FILE, "files/f1", who["bob"])
    with pytest.raises(NotFound):
        await _replica(stack).check_resource(ResourceKind.FILE, "files/f1", who["bob"])


async def test_a_listing_is_filtered_to_the_callers_own(stack: Stack):
    auth = stack.app[authenticator_key]
    who = await _principals(auth, stack)
    for user, name in (("alice", "files/a1"), ("alice", "files/a2"), ("carol", "files/c1")):
        await auth.commit_resource(ResourceKind.FILE, name, who[user])
    listed = {"files/a1", "files/a2", "files/c1", "files/unknown"}
    assert await auth.owned_names(ResourceKind.FILE, who["alice"], listed) == {
        "files/a1",
        "files/a2",
    }
    assert await auth.owned_names(ResourceKind.FILE, who["bob"], listed) == set()
    assert await auth.owned_names(ResourceKind.CACHED_CONTENT, who["alice"], listed) == set()


async def test_team_sharing_opens_a_resource_to_the_team(make_stack: StackFactory):
    stack = await make_stack(interaction_sharing=InteractionSharing.TEAM)
    auth = stack.app[authenticator_key]
    who = await _principals(auth, stack)  # alice and carol are in "research", bob is not
    await auth.commit_resource(ResourceKind.CACHED_CONTENT, "cachedContents/c", who["alice"])
    assert await auth.check_resource(ResourceKind.CACHED_CONTENT, "cachedContents/c", who["carol"])
    with pytest.raises(NotFound):
        await auth.check_resource(ResourceKind.CACHED_CONTENT, "cachedContents/c", who["bob"])
    assert await auth.owned_names(
        ResourceKind.CACHED_CONTENT, who["carol"], {"cachedContents/c"}
    ) == {"cachedContents/c"}


async def test_state_is_kept_between_calls_and_read_fresh_across_replicas(stack: Stack):
    auth = stack.app[authenticator_key]
    who = await _principals(auth, stack)
    name = "cachedContents/c1"
    await auth.commit_resource(
        ResourceKind.CACHED_CONTENT, name, who["alice"], state={"tokens": 10, "expire": "t1"}
    )
    other = _replica(stack)
    before = await other.check_resource(ResourceKind.CACHED_CONTENT, name, who["alice"])
    assert before is not None and before.state == {"tokens": 10, "expire": "t1"}

    await auth.update_resource_state(
        ResourceKind.CACHED_CONTENT, name, {"tokens": 10, "expire": "t2"}
    )
    mine = await auth.check_resource(ResourceKind.CACHED_CONTENT, name, who["alice"])
    assert mine is not None and mine.state["expire"] == "t2"
    # the other replica's cache still holds t1; a fresh read sees what was stored
    fresh = await other.check_resource(ResourceKind.CACHED_CONTENT, name, who["alice"], fresh=True)
    assert fresh is not None and fresh.state["expire"] == "t2"


async def test_passthrough_mode_checks_nothing(make_stack: StackFactory):
    stack = await make_stack(auth_mode="passthrough")
    auth = stack.app[authenticator_key]
    anyone = Principal(user_id=1, user_name="fp-x")
    assert await auth.check_resource(ResourceKind.BATCH, "batches/never-seen", anyone) is None
    assert await auth.owned_names(ResourceKind.BATCH, anyone, {"batches/a"}) == {"batches/a"}
