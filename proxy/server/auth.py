"""Who is calling: the key a request presents, resolved to a ``Principal``.

Two modes (``Settings.auth_mode``):

- ``virtual_keys``: clients hold proxy-issued keys. The key is hashed (HMAC
  under the server secret) and looked up; the proxy then swaps it for the
  upstream key from settings, so the upstream never sees a virtual key.
- ``passthrough``: clients send their own Google key, which goes upstream
  untouched; the user is the alias configured for the key's fingerprint, or the
  fingerprint itself (never the key).

Lookups are cached in memory for ``key_cache_ttl_seconds`` so the hot path does
not query the database on every call; concurrent misses for one key share one
query. Revocation therefore takes effect within the TTL; expiry exactly, since
a key's cache entry never outlives its ``expires_at``. A key in use is read again
in the background once its entry is half its TTL old (``_REFRESH_AT``; a failed read is
tried again a tenth of the TTL later): calls go on with the cached answer meanwhile, so
only a key's first call, or its first after a TTL without calls, waits on the database,
never a key in steady use.

Each call notes its key's use in memory (``note_use``); ``flush_key_use``,
run once a minute by a background task in ``server.app`` and at shutdown,
writes the last use of every key seen since, in one statement.

Interaction ownership is resolved here too: behind one shared upstream key
every user could read, continue, cancel or delete anyone's interaction by id,
so ``check_owner`` answers 404 for anyone but the owner (or the owner's team).
``commit_owner`` stores a new interaction's owner in the database before its
id is released to the client, so every replica knows the owner at once.

Every other resource a user makes through the proxy (files, context caches, batches,
video operations, minted Live tokens) the same way: ``commit_resource`` stores its
owner before its name reaches the client, ``check_resource`` answers 404 for anyone
but the owner (or the team), and ``owned_names`` filters a listing to the caller's own.

Resumable uploads likewise: the byte legs carry no key, only the upload id the
first (keyed) leg obtained; ``remember_upload`` stores its keyed hash, and
``upload_principal`` admits a keyless leg only for an id started here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from multidict import CIMultiDict
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..errors import NotFound, ServiceUnavailable, Unauthenticated
from ..metering.records import Principal
from ..settings import AuthMode, InteractionSharing, Settings
from ..storage import accounts
from ..storage.accounts import OwnedResource
from ..storage.bulk import owner_commits
from ..storage.schema import ResourceKind
from .keys import fingerprint, hash_key, seal, unseal

log = logging.getLogger("gemini_meter.auth")

# Unknown keys are remembered briefly too, so a client hammering with a bad key
# costs one query per few seconds rather than one per request.
_NEGATIVE_TTL_SECONDS = 5.0
_CACHE_LIMIT = 50_000
# A known key's entry is read again in the background when this share of its TTL has
# passed; a failed read is tried again after _RETRY_AFTER of it, until the TTL ends.
_REFRESH_AT = 0.5
_RETRY_AFTER = 0.1
# Failed background reads are reported at most once per this many seconds, with their count.
_REFRESH_REPORT_SECONDS = 60.0
# Keys whose hash is kept, of those that named a principal: the HMAC costs 1 µs on a warm
# core but 30 µs or more on the first call after a pause, before the call's first byte.
_HASHES_KEPT = 4096


K = TypeVar("K")
V = TypeVar("V")


class _TTLCache(Generic[K, V]):
    """A bounded LRU whose entries expire; the clock is injectable for tests."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        # key -> (expires, due for a refresh, value)
        self._data: OrderedDict[K, tuple[float, float, V]] = OrderedDict()
        self._limit = limit
        self._clock = clock

    def get(self, key: K) -> tuple[bool, V | None]:
        hit, value, _ = self.lookup(key)
        return hit, value

    def lookup(self, key: K) -> tuple[bool, V | None, bool]:
        """``(hit, value, due)``: ``due`` once the entry has passed its refresh time."""
        item = self._data.get(key)
        if item is None:
            return False, None, False
        expires, due, value = item
        now = self._clock()
        if expires < now:
            del self._data[key]
            return False, None, False
        self._data.move_to_end(key)
        return True, value, due <= now

    def put(self, key: K, value: V, ttl: float, refresh: float | None = None) -> None:
        """Keep ``value`` for ``ttl`` seconds, due for a refresh after ``refresh`` (default: never
        before it expires)."""
        now = self._clock()
        self._data[key] = (now + ttl, now + (ttl if refresh is None else refresh), value)
        self._data.move_to_end(key)
        while len(self._data) > self._limit:
            self._data.popitem(last=False)

    def postpone(self, key: K, seconds: float) -> None:
        """Make the entry due for a refresh ``seconds`` from now; its expiry stays."""
        item = self._data.get(key)
        if item is not None:
            self._data[key] = (item[0], self._clock() + seconds, item[2])


@dataclass(frozen=True, slots=True)
class EphemeralGrant:
    """An ephemeral-token handle resolved: who pays, the upstream token, a locked model."""

    owner: Principal
    token: str
    model: str | None


@dataclass(frozen=True, slots=True)
class PresentedKey:
    """The key a request carried, and where, so it can be removed or swapped."""

    value: str
    source: str  # "header" | "query" | "bearer"


def presented_key(headers: Mapping[str, str], query: Mapping[str, str]) -> PresentedKey | None:
    """The client's key from ``x-goog-api-key``, ``?key=`` or ``Authorization: Bearer``."""
    value = headers.get("x-goog-api-key")
    if value:
        return PresentedKey(value.strip(), "header")
    # "$key" is the system-parameter spelling Google accepts for the same thing.
    value = query.get("key") or query.get("$key")
    if value:
        return PresentedKey(value.strip(), "query")
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return PresentedKey(token.strip(), "bearer")
    return None


def key_carriers(headers: Mapping[str, str]) -> set[str]:
    """The headers that carry the client's key: ``x-goog-api-key``, and ``Authorization``
    when it holds a bearer key."""
    names = {"x-goog-api-key"}
    if headers.get("authorization", "").lower().startswith("bearer "):
        names.add("authorization")
    return names


def swap_key(headers: Mapping[str, str], upstream_key: str) -> CIMultiDict[str]:
    """Headers with every client key carrier replaced by the upstream key.

    The upstream key always travels as ``x-goog-api-key``, which keeps it out of
    URLs (and so out of access logs along the way); a ``?key=`` parameter is
    removed from the query by the forwarder, which keeps the raw query bytes.
    """
    out = CIMultiDict(headers)
    for name in key_carriers(headers):
        out.popall(name, None)
    out["x-goog-api-key"] = upstream_key
    return out


# A loader answers who a key is, and until when the answer holds (None: no limit).
Loader = Callable[[AsyncSession], Awaitable[tuple[Principal | None, datetime | None]]]


async def _virtual_key(
    session: AsyncSession, key_hash: str
) -> tuple[Principal | None, datetime | None]:
    found = await accounts.active_key(session, key_hash)
    return (None, None) if found is None else (found.principal, found.expires_at)


async def _passthrough_user(
    session: AsyncSession, name: str
) -> tuple[Principal | None, datetime | None]:
    return await accounts.principal_for_user(session, name), None


def _settle_commit(task: asyncio.Task[None]) -> None:
    # A commit that failed after its caller stopped waiting was already logged as a
    # fallback; retrieving the error keeps asyncio from reporting it again.
    if not task.cancelled():
        task.exception()


_RESOURCE_NOUNS = {
    ResourceKind.FILE: "File",
    ResourceKind.CACHED_CONTENT: "Cached content",
    ResourceKind.BATCH: "Batch",
    ResourceKind.OPERATION: "Operation",
    ResourceKind.AUTH_TOKEN: "Token",
    ResourceKind.FILE_SEARCH_STORE: "File Search store",
}


class Authenticator:
    """Resolves keys to principals and checks interaction owners, with caches."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        secret: bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._secret = secret
        self._ttl = settings.key_cache_ttl_seconds
        self._principals: _TTLCache[str, Principal | None] = _TTLCache(_CACHE_LIMIT, clock)
        self._owners: _TTLCache[str, Principal] = _TTLCache(_CACHE_LIMIT, clock)
        self._uploads: _TTLCache[str, Principal] = _TTLCache(_CACHE_LIMIT, clock)
        self._resources: _TTLCache[tuple[ResourceKind, str], OwnedResource] = _TTLCache(
            _CACHE_LIMIT, clock
        )
        self._inflight: dict[str, asyncio.Future[Principal | None]] = {}
        # An owner is committed on its own, outside the ORM's session (storage.bulk).
        self._owner_commits = owner_commits(sessionmaker)
        self._commits: set[asyncio.Task[None]] = set()
        self._refreshes: set[asyncio.Task[Principal | None]] = set()
        self._clock = clock
        self._refresh_failures = 0
        self._refresh_reported = -float("inf")
        # key id -> when it was last used, since the last flush_key_use
        self._used: dict[int, datetime] = {}
        # presented key -> its hash (virtual keys) or fingerprint (passthrough), for keys
        # that named a principal; the oldest goes first past _HASHES_KEPT
        self._hashes: dict[str, str] = {}

    @property
    def mode(self) -> AuthMode:
        return self._settings.auth_mode

    async def authenticate(self, key: PresentedKey | None) -> Principal:
        """The principal a key belongs to, or ``Unauthenticated``. Never echoes the key."""
        if key is None:
            raise Unauthenticated(
                "Missing API key: send a Gemini Meter key in the x-goog-api-key header."
            )
        kept = self._hashes.get(key.value)
        if self._settings.auth_mode is AuthMode.VIRTUAL_KEYS:
            key_hash = kept or hash_key(self._secret, key.value)
            principal = await self._cached(key_hash, lambda s: _virtual_key(s, key_hash))
            if principal is None:
                raise Unauthenticated("API key not valid. Please pass a valid Gemini Meter key.")
            self.note_use(principal)
        else:
            fp = kept or fingerprint(self._secret, key.value)
            name = self._settings.passthrough_aliases.get(fp, fp)
            principal = await self._cached(fp, lambda s: _passthrough_user(s, name))
            assert principal is not None  # get-or-create never misses
            key_hash = fp
        if kept is None:
            self._keep_hash(key.value, key_hash)
        return principal

    def _keep_hash(self, key: str, key_hash: str) -> None:
        """Remember a key's hash: a pure function of the key, so it never goes stale (a key
        revoked is still refused by the principal cache's answer for the hash).

        The key itself is then held in this process's memory, as the upstream key and the
        server secret are; it is never written anywhere. With virtual keys only keys that
        named a principal get here, so a flood of made-up keys cannot push the real ones
        out; in passthrough mode every key is its own user, and is kept like any other.
        """
        if len(self._hashes) >= _HASHES_KEPT:
            del self._hashes[next(iter(self._hashes))]
        self._hashes[key] = key_hash

    async def _cached(self, cache_key: str, load: Loader) -> Principal | None:
        hit, principal, due = self._principals.lookup(cache_key)
        if hit:
            if due and cache_key not in self._inflight:
                self._refresh(cache_key, load)
            return principal
        pending = self._inflight.get(cache_key)
        if pending is not None:
            return await asyncio.shield(pending)
        return await self._load(cache_key, load)

    def _refresh(self, cache_key: str, load: Loader) -> None:
        """Read a key again in the background; the calls meanwhile keep its cached answer."""
        # Not due again until this read has had its chance: a database that is away costs
        # one attempt per interval, not one per call.
        self._principals.postpone(cache_key, self._ttl * _RETRY_AFTER)
        task = asyncio.create_task(self._load(cache_key, load))
        self._refreshes.add(task)
        task.add_done_callback(self._refreshed)

    def _refreshed(self, task: asyncio.Task[Principal | None]) -> None:
        self._refreshes.discard(task)
        if task.cancelled() or (exc := task.exception()) is None:
            return
        # The entry holds until its TTL ends; a call after that reads the key itself. With
        # the database away every key in use fails in turn: one report per interval.
        self._refresh_failures += 1
        now = self._clock()
        if now - self._refresh_reported >= _REFRESH_REPORT_SECONDS:
            log.warning(
                "key refresh failed (%s; %d since the last report); cached answers hold "
                "until their TTL ends",
                type(exc).__name__,
                self._refresh_failures,
            )
            self._refresh_failures = 0
            self._refresh_reported = now

    async def _load(self, cache_key: str, load: Loader) -> Principal | None:
        """Read a key from the database and cache the answer; concurrent misses share it."""
        future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._inflight[cache_key] = future
        try:
            async with self._sessionmaker() as session:
                principal, valid_until = await load(session)
                await session.commit()
        except BaseException as exc:
            future.set_exception(exc)
            # The waiters re-raise it; mark it retrieved so a lone failure is not logged twice.
            future.exception()
            raise
        else:
            future.set_result(principal)
            if principal is None:
                # An unknown key is not refreshed: it is read again only when it is asked for.
                self._principals.put(cache_key, None, min(self._ttl, _NEGATIVE_TTL_SECONDS))
                return None
            ttl = self._ttl
            if valid_until is not None:
                # Never cache a key past its expiry.
                ttl = max(0.0, min(ttl, (valid_until - datetime.now(UTC)).total_seconds()))
            self._principals.put(cache_key, principal, ttl, refresh=self._ttl * _REFRESH_AT)
            return principal
        finally:
            del self._inflight[cache_key]

    def note_use(self, principal: Principal) -> None:
        """Remember that ``principal``'s key was used now; a dict write, no I/O."""
        if principal.key_id is not None:
            self._used[principal.key_id] = datetime.now(UTC)

    async def flush_key_use(self) -> int:
        """Write the keys used since the last flush (``api_keys.last_used_at``).

        Runs in the background, never on a call's path. On failure the notes are
        kept (newer ones win) for the next flush. Returns how many keys were written.
        """
        used, self._used = self._used, {}
        if not used:
            return 0
        try:
            async with self._sessionmaker.begin() as session:
                await accounts.record_key_use(session, used)
        except Exception:
            for key_id, at in used.items():
                self._used.setdefault(key_id, at)
            raise
        return len(used)

    def remember_owner(self, interaction_id: str, principal: Principal) -> None:
        """Called when this process sees an interaction created: later checks need no query."""
        # Owners never change, so the entry lives as long as the LRU keeps it.
        self._owners.put(interaction_id, principal, float("inf"))

    async def commit_owner(
        self, interaction_id: str, principal: Principal, row: tuple[Any, ...]
    ) -> bool:
        """Store an interaction's owner now, before the client learns its id.

        One short transaction, only on interaction creates: it is what lets a
        second replica answer the owner at once. Visible, not synced: the caller
        has journaled and queued ``row`` already (``owned.register_owner``), the
        owner row committed here as it is.
        False when the database did not take it in time; this process still knows
        the owner, and the writer stores it.
        """
        self.remember_owner(interaction_id, principal)
        try:
            # On SQLite with its write lock free, done at once: no task, no hop.
            if not self._owner_commits.commit_now(row):
                await self._commit(self._owner_commits.commit(row))
        except Exception as exc:  # any failure: fall back, never fail the call
            log.warning(
                "interaction owner not committed (%s); left to the writer", type(exc).__name__
            )
            return False
        return True

    async def _commit(self, work: Coroutine[Any, Any, None]) -> None:
        """Run one short write, waiting at most ``owner_commit_timeout_seconds`` for it.

        The write is its own task, waited on through a shield: a database that
        hangs (a held lock, a dead connection) costs the call the timeout, not
        the driver's; the write itself may still land later.
        """
        commit = asyncio.create_task(work)
        self._commits.add(commit)
        commit.add_done_callback(_settle_commit)
        commit.add_done_callback(self._commits.discard)
        await asyncio.wait_for(asyncio.shield(commit), self._settings.owner_commit_timeout_seconds)

    async def close(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for owner commits that outlived their calls, and stop
        the key refreshes under way (nothing waits on them)."""
        for refresh in self._refreshes:
            refresh.cancel()
        if self._commits:
            await asyncio.wait(set(self._commits), timeout=timeout)
        await self._owner_commits.close()

    def _upload_hash(self, upload_id: str) -> str:
        return hash_key(self._secret, "upload:" + upload_id)

    async def remember_upload(self, upload_id: str, principal: Principal) -> None:
        """Record that ``principal`` started the upload ``upload_id``, before its URL is released.

        Raises when the database does not take it within the commit timeout: an
        upload whose id was not stored would be refused on every other replica,
        so the start is failed (503) rather than released.
        """
        upload_hash = self._upload_hash(upload_id)
        ttl = self._settings.upload_session_ttl_seconds
        self._uploads.put(upload_hash, principal, ttl)
        await self._commit(self._store_upload(upload_hash, principal, timedelta(seconds=ttl)))

    async def _store_upload(self, upload_hash: str, principal: Principal, ttl: timedelta) -> None:
        async with self._sessionmaker.begin() as session:
            await accounts.record_upload(session, upload_hash, principal, ttl)

    async def upload_principal(self, upload_id: str) -> Principal:
        """Who started the upload ``upload_id`` through this proxy, or ``NotFound``."""
        upload_hash = self._upload_hash(upload_id)
        hit, principal = self._uploads.get(upload_hash)
        if not hit:
            async with self._sessionmaker() as session:
                principal = await accounts.upload_owner(session, upload_hash)
            if principal is not None:
                # Short: the row's own expiry is the authority.
                self._uploads.put(upload_hash, principal, self._ttl)
        if principal is None:
            # Never the id itself in the message: it is the upload's credential.
            raise NotFound("No upload session with that id was started through Gemini Meter.")
        return principal

    async def check_owner(self, interaction_id: str, principal: Principal) -> Principal | None:
        """The interaction's owner, or ``NotFound`` unless ``principal`` may use it.

        In passthrough mode every client brings its own Google key, which
        already scopes what it can reach upstream, so nothing is checked and
        ``None`` is returned.
        """
        if self._settings.auth_mode is AuthMode.PASSTHROUGH:
            return None
        hit, owner = self._owners.get(interaction_id)
        if not hit:
            async with self._sessionmaker() as session:
                owner = await accounts.interaction_owner(session, interaction_id)
            if owner is not None:
                self.remember_owner(interaction_id, owner)
        if owner is None or not self._may_use(owner, principal):
            # The same answer as for an id that does not exist: no probing of others' ids.
            raise NotFound(f"Interaction {interaction_id!r} was not found.")
        return owner

    async def commit_resource(
        self,
        kind: ResourceKind,
        name: str,
        principal: Principal,
        model: str | None = None,
        state: dict[str, Any] | None = None,
    ) -> bool:
        """Store that ``principal`` owns the resource ``name``, before the name is released.

        Like ``commit_owner``: one short write, waited on for at most the commit
        timeout. False when it did not land in time (it may still land: the write
        goes on in the background); this process knows the owner either way.
        """
        self._resources.put(
            (kind, name), OwnedResource(principal, model, dict(state or {})), float("inf")
        )
        try:
            await self._commit(self._store_resource(kind, name, principal, model, state))
        except Exception as exc:  # any failure: never fail the call
            log.warning("%s owner not committed in time (%s)", kind, type(exc).__name__)
            return False
        return True

    async def _store_resource(
        self,
        kind: ResourceKind,
        name: str,
        principal: Principal,
        model: str | None,
        state: dict[str, Any] | None,
    ) -> None:
        async with self._sessionmaker.begin() as session:
            await accounts.record_resource(session, kind, name, principal, model, state)

    async def check_resource(
        self, kind: ResourceKind, name: str, principal: Principal, *, fresh: bool = False
    ) -> OwnedResource | None:
        """The resource, or ``NotFound`` unless ``principal`` may use it.

        None in passthrough mode, where the client's own Google key scopes what it
        reaches. ``fresh`` reads the row itself, for a ``state`` another replica may
        have changed; otherwise a cached owner answers (owners never change).
        """
        if self._settings.auth_mode is AuthMode.PASSTHROUGH:
            return None
        found = await self.resource(kind, name, fresh=fresh)
        if found is None or not self._may_use(found.owner, principal):
            # The same answer as for a name that does not exist: no probing of others'.
            raise NotFound(f"{_RESOURCE_NOUNS[kind]} {name!r} was not found.")
        return found

    async def resource(
        self, kind: ResourceKind, name: str, *, fresh: bool = False
    ) -> OwnedResource | None:
        """An owned resource whoever asks (for metering a result to its owner), or None."""
        if not fresh:
            hit, found = self._resources.get((kind, name))
            if hit:
                return found
        async with self._sessionmaker() as session:
            found = await accounts.resource(session, kind, name)
        if found is not None:
            self._resources.put((kind, name), found, float("inf"))
        return found

    async def update_resource_state(
        self, kind: ResourceKind, name: str, state: dict[str, Any]
    ) -> None:
        """Replace what a resource's metering keeps (a cache's expiry, say)."""
        hit, found = self._resources.get((kind, name))
        if hit and found is not None:
            self._resources.put(
                (kind, name), OwnedResource(found.owner, found.model, dict(state)), float("inf")
            )
        async with self._sessionmaker.begin() as session:
            await accounts.update_resource_state(session, kind, name, state)

    async def owned_names(
        self, kind: ResourceKind, principal: Principal, names: set[str]
    ) -> set[str]:
        """Which of ``names`` ``principal`` may reach: for filtering a listing.

        Everything in passthrough mode (no checks there).
        """
        if self._settings.auth_mode is AuthMode.PASSTHROUGH:
            return set(names)
        team = (
            principal.team_id
            if self._settings.interaction_sharing is InteractionSharing.TEAM
            else None
        )
        async with self._sessionmaker() as session:
            return await accounts.resources_of(session, kind, names, principal.user_id, team)

    # --- ephemeral Live API tokens (server.live) ------------------------------------------

    async def commit_ephemeral(
        self, handle: str, principal: Principal, token: str, model: str | None
    ) -> None:
        """Keep the upstream's ephemeral ``token`` sealed, under the keyed hash of the
        proxy's ``handle`` for it, owned by ``principal``; before the handle is released.

        Raises ``ServiceUnavailable`` when the database did not take it in time: a
        handle another replica could not resolve must not be handed out.
        """
        state = {"token": seal(self._secret, token)}
        name = hash_key(self._secret, handle)
        if not await self.commit_resource(ResourceKind.AUTH_TOKEN, name, principal, model, state):
            raise ServiceUnavailable(
                "Gemini Meter could not record the ephemeral token; retry shortly."
            )

    async def remember_minted(self, token: str, principal: Principal, model: str | None) -> None:
        """Passthrough mode: ``principal`` minted the upstream ``token`` with its own key
        (stored under the token's keyed hash, never the token), for attribution only."""
        name = hash_key(self._secret, token)
        await self.commit_resource(ResourceKind.AUTH_TOKEN, name, principal, model)

    async def minted_owner(self, token: str) -> Principal | None:
        """Who minted ``token`` through this proxy in passthrough mode, if anyone did."""
        found = await self.resource(ResourceKind.AUTH_TOKEN, hash_key(self._secret, token))
        return None if found is None else found.owner

    async def ephemeral_grant(self, handle: str, caller: Principal | None = None) -> EphemeralGrant:
        """What a handle stands for: its owner, the upstream token, a model it locks.

        ``Unauthenticated`` for a handle this proxy did not issue; ``NotFound`` when a
        ``caller`` (a key presented beside the handle) may not use it.
        """
        found = await self.resource(ResourceKind.AUTH_TOKEN, hash_key(self._secret, handle))
        if found is not None and caller is not None and not self._may_use(found.owner, caller):
            raise NotFound("That ephemeral token was not found.")
        sealed = found.state.get("token") if found is not None else None
        token = None
        if isinstance(sealed, str):
            with contextlib.suppress(ValueError):  # sealed under another secret: unusable
                token = unseal(self._secret, sealed)
        if found is None or token is None:
            raise Unauthenticated(
                "Ephemeral token not valid. Mint one through Gemini Meter (auth_tokens.create)."
            )
        return EphemeralGrant(found.owner, token, found.model)

    def _may_use(self, owner: Principal, principal: Principal) -> bool:
        if owner.user_id == principal.user_id:
            return True
        return (
            self._settings.interaction_sharing is InteractionSharing.TEAM
            and owner.team_id is not None
            and owner.team_id == principal.team_id
        )
