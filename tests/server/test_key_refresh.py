"""A key in steady use is read again in the background, never on a call's path.

``Authenticator`` caches who a key is for ``key_cache_ttl_seconds`` (30 here). Half-way
through, the next call starts a read of the key in the background and goes on with the
cached answer. The database's reads are gated here: a call that returns while the read
it started is held cannot have waited on it. Both databases, real rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.errors import Unauthenticated
from proxy.metering.records import Principal
from proxy.server import auth as auth_module
from proxy.server.auth import Authenticator, PresentedKey
from proxy.server.keys import hash_key
from proxy.settings import Secret, Settings
from proxy.storage import accounts

TTL = 30.0
SECRET = "refresh-test-secret"


class GatedSessions:
    """The real sessionmaker, with each session's start counted and held until ``gate`` opens."""

    def __init__(self, real: async_sessionmaker[AsyncSession]) -> None:
        self.real = real
        self.gate = asyncio.Event()
        self.gate.set()
        self.reads = 0
        self.failing = False

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncSession]:
        self.reads += 1
        await self.gate.wait()
        if self.failing:
            raise ConnectionRefusedError("the database is away")
        async with self.real() as session:
            yield session


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def issued(sessionmaker: async_sessionmaker[AsyncSession]) -> tuple[int, str]:
    async with sessionmaker() as session:
        info, key = await accounts.create_key(session, SECRET.encode(), "alice", "red")
        await session.commit()
    return info.id, key


@dataclass
class Gated:
    """An ``Authenticator`` over gated sessions, on a clock the test moves."""

    auth: Authenticator
    sessions: GatedSessions
    clock: Clock


@pytest.fixture
def gated(sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path) -> Gated:
    sessions, clock = GatedSessions(sessionmaker), Clock()
    settings = Settings(
        key_secret=Secret(SECRET), key_cache_ttl_seconds=TTL, journal_dir=tmp_path / "j"
    )
    gated = cast(async_sessionmaker[AsyncSession], sessions)
    return Gated(Authenticator(settings, gated, SECRET.encode(), clock=clock), sessions, clock)


async def _settled(auth: Authenticator) -> None:
    """Every background read finished (the test's own wait, not the call's)."""
    for _ in range(200):
        if not auth._refreshes:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a background read never finished")


async def _call(auth: Authenticator, key: str) -> Principal:
    # A call that waited on a held read would never return: bound it.
    return await asyncio.wait_for(auth.authenticate(PresentedKey(key, "header")), timeout=5)


async def test_a_key_in_use_is_read_again_in_the_background(
    sessionmaker: async_sessionmaker[AsyncSession], issued: tuple[int, str], gated: Gated
):
    key_id, key = issued
    auth, sessions, clock = gated.auth, gated.sessions, gated.clock
    first = await _call(auth, key)
    assert (first.user_name, sessions.reads) == ("alice", 1)

    # Revoked by another process; this one still holds the key as alice's.
    async with sessionmaker() as session:
        assert await accounts.revoke_key(session, key_id)
        await session.commit()

    clock.now += TTL / 2 - 1  # before half the TTL: the cached answer, no read
    assert await _call(auth, key) == first
    assert sessions.reads == 1

    sessions.gate.clear()
    clock.now += 2  # past half the TTL: the call starts a read, and does not wait for it
    assert await _call(auth, key) == first
    assert sessions.reads == 2
    clock.now += 1  # a read under way: no second one
    assert await _call(auth, key) == first
    assert sessions.reads == 2

    sessions.gate.set()
    await _settled(auth)
    # The read saw the revocation: refused now, 15 s before the entry would have expired.
    with pytest.raises(Unauthenticated):
        await _call(auth, key)
    assert sessions.reads == 2


async def test_a_failed_background_read_keeps_the_answer_and_is_tried_once_per_interval(
    issued: tuple[int, str], gated: Gated, caplog: pytest.LogCaptureFixture
):
    _, key = issued
    auth, sessions, clock = gated.auth, gated.sessions, gated.clock
    first = await _call(auth, key)

    sessions.failing = True
    clock.now += TTL / 2 + 1
    with caplog.at_level(logging.WARNING, logger="gemini_meter.auth"):
        assert await _call(auth, key) == first
        await _settled(auth)
        assert sessions.reads == 2
        # Not again on every call while the database is away: once per tenth of the TTL.
        for _ in range(5):
            clock.now += 0.5
            assert await _call(auth, key) == first
        assert sessions.reads == 2
        clock.now += 1  # 3.5 s after the failed read: tried again, and failing again
        assert await _call(auth, key) == first
        await _settled(auth)
        assert sessions.reads == 3
    # One report for both failures, within a minute; no key material in it.
    reports = [r.getMessage() for r in caplog.records if "key refresh failed" in r.getMessage()]
    assert reports == [
        "key refresh failed (ConnectionRefusedError; 1 since the last report); cached "
        "answers hold until their TTL ends"
    ]
    assert key not in caplog.text

    sessions.failing = False
    clock.now += 3.5  # 8.5 s into the retries, still inside the TTL
    assert await _call(auth, key) == first
    await _settled(auth)
    assert sessions.reads == 4
    # That read succeeded: the entry runs a fresh TTL from it.
    clock.now += TTL - 1
    assert await _call(auth, key) == first
    assert sessions.reads == 4 + 1  # due again at half of it, read in the background
    await _settled(auth)


async def test_an_unknown_key_is_not_read_in_the_background(gated: Gated):
    auth, sessions, clock = gated.auth, gated.sessions, gated.clock
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            await _call(auth, "gm-never-issued")
        clock.now += 1.5  # within the 5 s a refusal is remembered
    assert sessions.reads == 1
    assert not auth._refreshes


async def test_close_stops_a_background_read_under_way(issued: tuple[int, str], gated: Gated):
    _, key = issued
    auth, sessions, clock = gated.auth, gated.sessions, gated.clock
    first = await _call(auth, key)
    sessions.gate.clear()
    clock.now += TTL / 2 + 1
    assert await _call(auth, key) == first  # its read is held
    (refresh,) = auth._refreshes
    await asyncio.wait_for(auth.close(timeout=1), timeout=5)
    await asyncio.wait([refresh], timeout=5)
    assert refresh.cancelled()
    assert not auth._refreshes and not auth._inflight
    # the answer it had stays until its TTL ends
    assert await _call(auth, key) == first


async def test_a_key_naming_a_principal_is_hashed_once_and_revocation_still_holds(
    sessionmaker: async_sessionmaker[AsyncSession],
    issued: tuple[int, str],
    gated: Gated,
    monkeypatch: pytest.MonkeyPatch,
):
    hashed: list[str] = []

    def counting(secret: bytes, key: str) -> str:
        hashed.append(key)
        return hash_key(secret, key)

    monkeypatch.setattr(auth_module, "hash_key", counting)
    monkeypatch.setattr(auth_module, "_HASHES_KEPT", 2)
    key_id, key = issued
    auth, clock = gated.auth, gated.clock
    first = await _call(auth, key)
    for _ in range(3):
        assert await _call(auth, key) == first
    assert hashed == [key]
    # A key that names no one is hashed at every call: it is never kept.
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await _call(auth, "gm-never-issued")
    assert hashed == [key, "gm-never-issued", "gm-never-issued"]

    # Two more keys in use: the first key's hash, the oldest kept, goes.
    others = []
    async with sessionmaker() as session:
        for user in ("bob", "carol"):
            _, other = await accounts.create_key(session, SECRET.encode(), user, "red")
            others.append(other)
        await session.commit()
    for other in others:
        await _call(auth, other)
    hashed.clear()
    assert (await _call(auth, key)).user_name == "alice"
    assert hashed == [key]

    # Revoked: the key's hash is kept, and the key is refused once its entry is read again.
    async with sessionmaker() as session:
        assert await accounts.revoke_key(session, key_id)
        await session.commit()
    clock.now += TTL + 1
    with pytest.raises(Unauthenticated):
        await _call(auth, key)
    assert hashed == [key]
