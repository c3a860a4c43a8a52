"""One interaction's owner, committed at once outside the ORM (``storage.bulk.owner_commits``),
on both databases: stored as the ORM's statement stores it, committed when ``commit``
returns (a connection of the ORM's pool reads it), the first owner kept."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.metering.records import Principal
from proxy.storage.accounts import create_key, interaction_owner, principal_for_user
from proxy.storage.bulk import (
    PostgresOwners,
    SessionOwners,
    SqliteOwners,
    owner_commits,
)
from proxy.storage.schema import Interaction, make_engine
from proxy.storage.writes import owner_row
from tests.factories import sqlite_only

SECRET = b"owner-commit-secret"


async def test_an_owner_is_committed_on_its_own_and_the_first_one_stays(
    sessionmaker: async_sessionmaker[AsyncSession], db_kind: str
):
    async with sessionmaker.begin() as session:
        info, _ = await create_key(session, SECRET, "alice", "ml")
        alice = Principal(info.user_id, "alice", info.team_id, "ml", info.id)
        bob = await principal_for_user(session, "bob")
    owners = owner_commits(sessionmaker)
    # The database's own path, not the ORM's session.
    assert type(owners) is {"sqlite": SqliteOwners, "postgresql": PostgresOwners}[db_kind]
    now = datetime.now(UTC)
    try:
        await owners.commit(owner_row("int-1", alice, "gemini-2.5-pro", now))
        # Committed: another connection reads it the moment commit returns.
        async with sessionmaker() as session:
            assert await interaction_owner(session, "int-1") == alice
        await owners.commit(owner_row("int-1", bob, None, now))  # the first owner stays
        await owners.commit(owner_row("int-2", bob, None, now))
    finally:
        await owners.close()
    # The fallback for other databases (the writer's ORM store, a batch of one) the same.
    fallback = SessionOwners(sessionmaker)
    await fallback.commit(owner_row("int-3", alice, None, now))
    await fallback.commit(owner_row("int-3", bob, None, now))
    async with sessionmaker() as session:
        assert await interaction_owner(session, "int-1") == alice
        assert await interaction_owner(session, "int-2") == bob
        assert await interaction_owner(session, "int-3") == alice
        stored = await session.get(Interaction, "int-1")
        assert stored is not None
        assert (stored.model, stored.created_at) == ("gemini-2.5-pro", now)


async def test_an_owner_the_database_refuses_raises_and_the_next_one_is_stored(
    sessionmaker: async_sessionmaker[AsyncSession],
):
    async with sessionmaker.begin() as session:
        bob = await principal_for_user(session, "bob")
    nobody = Principal(10_000, "nobody", None, None, None)  # no such user: a foreign key fails
    owners = owner_commits(sessionmaker)
    try:
        with pytest.raises(Exception, match="(?i)foreign key"):
            await owners.commit(owner_row("int-x", nobody, None, datetime.now(UTC)))
        await owners.commit(owner_row("int-y", bob, None, datetime.now(UTC)))
    finally:
        await owners.close()
    async with sessionmaker() as session:
        ids = (await session.scalars(select(Interaction.id))).all()
    assert ids == ["int-y"]


async def test_a_database_no_other_connection_can_open_goes_through_the_session():
    engine = make_engine("sqlite+aiosqlite:///:memory:")
    try:
        owners = owner_commits(async_sessionmaker(engine))
        assert type(owners) is SessionOwners
        await owners.close()
    finally:
        await engine.dispose()


async def test_the_owners_commit_leaves_each_connection_as_it_found_it(
    migrated_url: str, db_kind: str
):
    """The commit does not wait for a sync (``OwnerCommits``): on PostgreSQL the statement
    turns ``synchronous_commit`` off for its own transaction alone, so the pooled
    connection's next user (here the same one: a pool of one) has the server's setting;
    on SQLite the owners' connection syncs less, and no other connection is touched."""
    engine = make_engine(migrated_url, pool_size=1, max_overflow=0)
    sessionmaker = async_sessionmaker(engine)
    show = "SHOW synchronous_commit" if db_kind == "postgresql" else "PRAGMA synchronous"
    try:
        async with engine.connect() as connection:
            before = (await connection.exec_driver_sql(show)).scalar()
        async with sessionmaker.begin() as session:
            bob = await principal_for_user(session, "bob")
        owners = owner_commits(sessionmaker)
        try:
            await owners.commit(owner_row("int-1", bob, None, datetime.now(UTC)))
        finally:
            await owners.close()
        async with engine.connect() as connection:
            assert (await connection.exec_driver_sql(show)).scalar() == before
            assert await interaction_owner(AsyncSession(connection), "int-1") == bob
    finally:
        await engine.dispose()
    assert before == ("on" if db_kind == "postgresql" else 2)  # the defaults: FULL is 2


@sqlite_only
async def test_on_sqlite_the_owner_is_inserted_on_the_loop_unless_the_lock_is_taken(
    migrated_url: str,
):
    """With SQLite's write lock free the insert runs on the event loop itself: ``commit_now``
    commits it there and then (no hop to a thread and back). With the lock held by another
    connection it never waits on the loop, not even to open its connection: it leaves the
    row to ``commit``, whose thread waits for the lock while the loop goes on."""
    engine = make_engine(migrated_url)
    sessionmaker = async_sessionmaker(engine)
    async with sessionmaker.begin() as session:
        bob = await principal_for_user(session, "bob")
    owners = owner_commits(sessionmaker)
    holder = sqlite3.connect(migrated_url.removeprefix("sqlite+aiosqlite:///"))
    holder.isolation_level = None
    try:
        holder.execute("BEGIN EXCLUSIVE")  # another writer holds the lock from the start
        assert owners.commit_now(owner_row("int-later", bob, None, datetime.now(UTC))) is False
        waiting = asyncio.ensure_future(
            owners.commit(owner_row("int-held", bob, None, datetime.now(UTC)))
        )
        await asyncio.sleep(0.2)
        assert not waiting.done()  # in the thread, waiting for the lock; the loop is free
        holder.execute("COMMIT")
        await asyncio.wait_for(waiting, 10)

        # The lock is free: committed on the loop, there and then (no await).
        assert owners.commit_now(owner_row("int-free", bob, None, datetime.now(UTC))) is True
        async with sessionmaker() as session:
            assert await interaction_owner(session, "int-free") == bob
            assert await interaction_owner(session, "int-held") == bob
            assert await interaction_owner(session, "int-later") is None  # left as it was
    finally:
        holder.close()
        await owners.close()
        await engine.dispose()
