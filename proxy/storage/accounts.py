"""Who is who: teams, users, virtual keys, principals and interaction owners.

Every helper in ``storage`` takes the session first and leaves the transaction to its
caller: helpers execute and flush but never commit, so several compose into one
transaction and the caller decides when it ends::

    async with sessionmaker.begin() as session:      # commits on success
        info, key = await create_key(session, secret, "alice", "ml")

The CLI (on the database) and the admin API (``admin.routes``, which the CLI's
``--url`` goes through) both create, list, rename and move users and teams here, and
create, list and revoke keys, so the two behave alike: a rename carries the budgets
that name the user or team along, a move takes along the keys that followed the home
team, and a missing name is ``NoSuchAccount`` (404), a taken one ``NameTaken`` (409).
``server.auth`` resolves keys and interaction owners here on a cache miss only,
and writes keys' last use here in the background (``record_key_use``), never on a
request's path.

Users and teams are made with INSERT ... ON CONFLICT DO NOTHING followed by a
SELECT, so several proxy processes resolving the same new name at once all end
up with the one row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import GeminiMeterError
from ..metering.records import Principal
from ..server.keys import KEY_PREFIX, hash_key, new_key
from .schema import (
    ApiKey,
    BudgetRow,
    Interaction,
    Resource,
    ResourceKind,
    Team,
    UploadSession,
    User,
    utcnow,
)
from .writes import insert_ignoring, table_of

__all__ = [
    "AccountError",
    "OwnedResource",
    "ActiveKey",
    "KeyInfo",
    "NameTaken",
    "NoSuchAccount",
    "TeamInfo",
    "UserInfo",
    "active_key",
    "create_key",
    "create_team",
    "create_user",
    "get_or_create_team",
    "get_key",
    "get_or_create_user",
    "get_team",
    "get_user",
    "interaction_owner",
    "key_label",
    "list_keys",
    "list_teams",
    "list_users",
    "move_user",
    "principal_for_key_hash",
    "principal_for_user",
    "record_key_use",
    "record_upload",
    "rename_team",
    "rename_user",
    "revoke_key",
    "upload_owner",
]


class AccountError(GeminiMeterError):
    """A user or team that should exist does not, or a name that should be free is taken."""


class NoSuchAccount(AccountError):
    """No user (or team) of that name; the admin API answers 404."""


class NameTaken(AccountError):
    """Another user (or team) already has that name; the admin API answers 409."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A virtual key as listed: never the key, only its display label."""

    id: int
    label: str
    user_id: int
    user: str
    team_id: int | None
    # The team calls with this key are billed to (not necessarily the user's).
    team: str | None
    created_at: datetime
    revoked_at: datetime | None
    # None: never expires. Past it the proxy refuses the key.
    expires_at: datetime | None = None
    # Coarse: written at most once a minute per key, off the request path.
    last_used_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > utcnow())


@dataclass(frozen=True, slots=True)
class UserInfo:
    id: int
    name: str
    # The user's home team: what keys are billed to unless made for another team.
    team: str | None
    created_at: datetime
    active_keys: int


@dataclass(frozen=True, slots=True)
class TeamInfo:
    id: int
    name: str
    created_at: datetime
    users: int


@dataclass(frozen=True, slots=True)
class ActiveKey:
    """What an active key resolves to: who it bills, and until when it is valid."""

    principal: Principal
    expires_at: datetime | None


# ---------------------------------------------------------------- users and teams


async def get_or_create_team(session: AsyncSession, name: str) -> Team:
    """The team called ``name``, made if it does not exist yet."""
    query = select(Team).where(Team.name == name)
    team = await session.scalar(query)
    if team is None:
        await session.execute(
            insert_ignoring(session, table_of(Team), "name").values(name=name, created_at=utcnow())
        )
        team = (await session.scalars(query)).one()
    return team


async def get_or_create_user(session: AsyncSession, name: str, team: str | None) -> User:
    """The user called ``name``, made (in ``team``, if given) if it does not exist yet.

    An existing user keeps the team it has: a key carries its own team (see
    ``create_key``), so a user's home team only matters in passthrough mode.
    """
    query = select(User).where(User.name == name)
    user = await session.scalar(query)
    if user is None:
        team_id = (await get_or_create_team(session, team)).id if team is not None else None
        await session.execute(
            insert_ignoring(session, table_of(User), "name").values(
                name=name, team_id=team_id, created_at=utcnow()
            )
        )
        user = (await session.scalars(query)).one()
    return user


async def _team_id(session: AsyncSession, name: str) -> int:
    team_id = await session.scalar(select(Team.id).where(Team.name == name))
    if team_id is None:
        raise NoSuchAccount(f"no team {name!r}")
    return team_id


async def _user_row(session: AsyncSession, name: str) -> User:
    user = await session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NoSuchAccount(f"no user {name!r}")
    return user


async def create_team(session: AsyncSession, name: str) -> TeamInfo:
    """A new team; ``NameTaken`` when the name is taken."""
    if await session.scalar(select(Team.id).where(Team.name == name)) is not None:
        raise NameTaken(f"team {name!r} exists already")
    await get_or_create_team(session, name)
    return await get_team(session, name)


async def create_user(session: AsyncSession, name: str, team: str | None) -> UserInfo:
    """A new user in ``team`` (made if needed); ``NameTaken`` when the name is taken."""
    if await session.scalar(select(User.id).where(User.name == name)) is not None:
        raise NameTaken(f"user {name!r} exists already")
    await get_or_create_user(session, name, team)
    return await get_user(session, name)


def _team_query() -> Any:
    members = func.count(User.id)
    return (
        select(Team.id, Team.name, Team.created_at, members)
        .outerjoin(User, User.team_id == Team.id)
        .group_by(Team.id, Team.name, Team.created_at)
    )


async def list_teams(session: AsyncSession) -> list[TeamInfo]:
    """Every team, by name, with how many users call it home."""
    teams = [TeamInfo(*row) for row in await session.execute(_team_query())]
    return sorted(teams, key=lambda t: t.name)


async def get_team(session: AsyncSession, name: str) -> TeamInfo:
    """The team called ``name``; ``NoSuchAccount`` if there is none."""
    row = (await session.execute(_team_query().where(Team.name == name))).first()
    if row is None:
        raise NoSuchAccount(f"no team {name!r}")
    return TeamInfo(*row)


def _user_query() -> Any:
    now = utcnow()
    active = func.count(ApiKey.id)
    return (
        select(User.id, User.name, Team.name, User.created_at, active)
        .outerjoin(Team, User.team_id == Team.id)
        .outerjoin(
            ApiKey,
            (ApiKey.user_id == User.id)
            & ApiKey.revoked_at.is_(None)
            & or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        )
        .group_by(User.id, User.name, Team.name, User.created_at)
    )


async def list_users(session: AsyncSession, *, team: str | None = None) -> list[UserInfo]:
    """Every user (or the users whose home team is ``team``), by name."""
    query = _user_query()
    if team is not None:
        query = query.where(Team.name == team)
    users = [UserInfo(*row) for row in await session.execute(query)]
    return sorted(users, key=lambda u: u.name)


async def get_user(session: AsyncSession, name: str) -> UserInfo:
    """The user called ``name``; ``NoSuchAccount`` if there is none."""
    row = (await session.execute(_user_query().where(User.name == name))).first()
    if row is None:
        raise NoSuchAccount(f"no user {name!r}")
    return UserInfo(*row)


async def _rename(
    session: AsyncSession, model: type[User] | type[Team], old: str, new: str
) -> None:
    kind = "user" if model is User else "team"
    if old != new and await session.scalar(select(model.id).where(model.name == new)) is not None:
        raise NameTaken(f"{kind} {new!r} exists already")
    result = await session.execute(
        update(model)
        .where(model.name == old)
        .values(name=new)
        .execution_options(synchronize_session=False)
    )
    if cast(CursorResult[Any], result).rowcount != 1:
        raise NoSuchAccount(f"no {kind} {old!r}")
    if old != new:
        # Budgets name their user or team scope by name (records and keys hold ids):
        # without this, a renamed user's budget would cap a name nobody has.
        await session.execute(
            update(BudgetRow)
            .where(BudgetRow.scope_kind == kind, BudgetRow.scope_name == old)
            .values(scope_name=new, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )


async def rename_user(session: AsyncSession, old: str, new: str) -> None:
    """Rename a user; records and keys follow (they hold the id, not the name), and so do
    the budgets whose scope is ``user:OLD``.

    Proxies that cached one of the user's keys report the old name until the cache
    entry expires (``key_cache_ttl_seconds``); their budget counters pick up the new
    scope when they next load the budgets.
    """
    await _rename(session, User, old, new)


async def rename_team(session: AsyncSession, old: str, new: str) -> None:
    """Rename a team; records, users and keys follow (they hold the id), and so do the
    budgets whose scope is ``team:OLD``."""
    await _rename(session, Team, old, new)


async def move_user(session: AsyncSession, name: str, team: str | None) -> int:
    """Make ``team`` (which must exist; None: no team) the user's home team; returns how
    many keys moved.

    The user's keys that billed to the old home team move with the user, since they
    followed it; a key made for another team explicitly stays with that team. Records
    already stored keep the team they were billed to. Proxies pick up the change when
    their cache entry for a key expires (``key_cache_ttl_seconds``).
    """
    user = await _user_row(session, name)
    team_id = await _team_id(session, team) if team is not None else None
    old_team_id = user.team_id
    await session.execute(
        update(User)
        .where(User.id == user.id)
        .values(team_id=team_id)
        .execution_options(synchronize_session=False)
    )
    if old_team_id == team_id:
        return 0
    same_team = ApiKey.team_id.is_(None) if old_team_id is None else ApiKey.team_id == old_team_id
    moved = await session.execute(
        update(ApiKey)
        .where(ApiKey.user_id == user.id, same_team, ApiKey.revoked_at.is_(None))
        .values(team_id=team_id)
        .execution_options(synchronize_session=False)
    )
    return cast(CursorResult[Any], moved).rowcount


# ------------------------------------------------------------------------- keys


def key_label(key: str) -> str:
    """The display id stored for ``key``: its prefix and first four random characters."""
    return key[: len(KEY_PREFIX) + 4] + "..."


def _key_info_query() -> Any:
    return (
        select(
            ApiKey.id,
            ApiKey.label,
            ApiKey.user_id,
            User.name,
            ApiKey.team_id,
            Team.name,
            ApiKey.created_at,
            ApiKey.revoked_at,
            ApiKey.expires_at,
            ApiKey.last_used_at,
        )
        .join(User, ApiKey.user_id == User.id)
        .outerjoin(Team, ApiKey.team_id == Team.id)
        .order_by(ApiKey.id)
    )


async def create_key(
    session: AsyncSession,
    secret: bytes,
    user: str,
    team: str | None,
    *,
    expires_at: datetime | None = None,
) -> tuple[KeyInfo, str]:
    """A new virtual key for ``user``, and the key itself, which is never stored.

    The user (and team) are made if needed. Calls with the key are billed to
    ``team`` when given, else to the user's home team. Past ``expires_at`` (an
    aware datetime; None: never) the proxy refuses the key.
    """
    if expires_at is not None and expires_at.utcoffset() is None:
        raise ValueError("expires_at must be a timezone-aware datetime")
    user_row = await get_or_create_user(session, user, team)
    team_id = (await get_or_create_team(session, team)).id if team is not None else user_row.team_id
    key = new_key()
    row = ApiKey(
        key_hash=hash_key(secret, key),
        label=key_label(key),
        user_id=user_row.id,
        team_id=team_id,
        created_at=utcnow(),
        expires_at=expires_at,
    )
    session.add(row)
    await session.flush()
    result = await session.execute(_key_info_query().where(ApiKey.id == row.id))
    return KeyInfo(*result.one()), key


async def list_keys(session: AsyncSession, *, include_revoked: bool = True) -> list[KeyInfo]:
    """Every key (or every active key), oldest first."""
    query = _key_info_query()
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return [KeyInfo(*row) for row in await session.execute(query)]


async def get_key(session: AsyncSession, key_id: int) -> KeyInfo | None:
    """The key with id ``key_id`` (active or not), or None."""
    row = (await session.execute(_key_info_query().where(ApiKey.id == key_id))).first()
    return KeyInfo(*row) if row is not None else None


async def revoke_key(session: AsyncSession, key_id: int) -> bool:
    """Revoke a key; False when there is no such active key.

    Processes that cached the key keep accepting it until their cache entry
    expires (``key_cache_ttl_seconds``).
    """
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return cast(CursorResult[Any], result).rowcount == 1


# ------------------------------------------------------------------- principals


async def active_key(session: AsyncSession, key_hash: str) -> ActiveKey | None:
    """Who an active key bills to and when it expires; None for unknown, revoked and
    expired keys."""
    result = await session.execute(
        select(ApiKey.user_id, User.name, ApiKey.team_id, Team.name, ApiKey.id, ApiKey.expires_at)
        .join(User, ApiKey.user_id == User.id)
        .outerjoin(Team, ApiKey.team_id == Team.id)
        .where(
            ApiKey.key_hash == key_hash,
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > utcnow()),
        )
    )
    row = result.first()
    if row is None:
        return None
    user_id, user_name, team_id, team_name, key_id, expires_at = row
    return ActiveKey(Principal(user_id, user_name, team_id, team_name, key_id), expires_at)


async def principal_for_key_hash(session: AsyncSession, key_hash: str) -> Principal | None:
    """Who an active key bills to, or None for unknown, revoked and expired keys."""
    found = await active_key(session, key_hash)
    return None if found is None else found.principal


async def record_key_use(session: AsyncSession, used: dict[int, datetime]) -> None:
    """Write keys' last use (key id -> when), never moving a key's time backwards.

    Called by ``server.auth`` in the background, at most once a minute, with every
    key used since the last write: one statement for the lot.
    """
    if not used:
        return
    # Core, not ORM: an executemany UPDATE with extra WHERE criteria.
    keys = table_of(ApiKey)
    await session.execute(
        update(keys)
        .where(
            keys.c.id == bindparam("key_id"),
            or_(keys.c.last_used_at.is_(None), keys.c.last_used_at < bindparam("used_at")),
        )
        .values(last_used_at=bindparam("used_at")),
        [{"key_id": key_id, "used_at": at} for key_id, at in used.items()],
    )


async def principal_for_user(session: AsyncSession, name: str) -> Principal:
    """Passthrough mode: the principal for a user name, made on first sight."""
    query = (
        select(User.id, User.name, User.team_id, Team.name)
        .outerjoin(Team, User.team_id == Team.id)
        .where(User.name == name)
    )
    row = (await session.execute(query)).first()
    if row is None:
        await get_or_create_user(session, name, None)
        row = (await session.execute(query)).one()
    user_id, user_name, team_id, team_name = row
    return Principal(user_id, user_name, team_id, team_name)


async def interaction_owner(session: AsyncSession, interaction_id: str) -> Principal | None:
    """Who created an upstream interaction, or None when this proxy never saw it."""
    result = await session.execute(
        select(Interaction.user_id, User.name, Interaction.team_id, Team.name, Interaction.key_id)
        .join(User, Interaction.user_id == User.id)
        .outerjoin(Team, Interaction.team_id == Team.id)
        .where(Interaction.id == interaction_id)
    )
    row = result.first()
    if row is None:
        return None
    user_id, user_name, team_id, team_name, key_id = row
    return Principal(user_id, user_name, team_id, team_name, key_id)


# ------------------------------------------------------------------------ uploads


async def record_upload(
    session: AsyncSession, upload_hash: str, principal: Principal, ttl: timedelta
) -> None:
    """Store that ``principal`` started the resumable upload whose id hashes to ``upload_hash``.

    The keyed hash, never the id: the id is the upload's only credential.
    """
    now = utcnow()
    await session.execute(
        insert_ignoring(session, table_of(UploadSession), "upload_hash").values(
            upload_hash=upload_hash,
            user_id=principal.user_id,
            team_id=principal.team_id,
            key_id=principal.key_id,
            created_at=now,
            expires_at=now + ttl,
        )
    )


async def upload_owner(session: AsyncSession, upload_hash: str) -> Principal | None:
    """Who started an unexpired upload through this proxy, or None."""
    result = await session.execute(
        select(
            UploadSession.user_id, User.name, UploadSession.team_id, Team.name, UploadSession.key_id
        )
        .join(User, UploadSession.user_id == User.id)
        .outerjoin(Team, UploadSession.team_id == Team.id)
        .where(UploadSession.upload_hash == upload_hash, UploadSession.expires_at > utcnow())
    )
    row = result.first()
    if row is None:
        return None
    user_id, user_name, team_id, team_name, key_id = row
    return Principal(user_id, user_name, team_id, team_name, key_id)


# ---------------------------------------------------------------------- resources


@dataclass(frozen=True, slots=True)
class OwnedResource:
    """An upstream resource made through the proxy: who owns it and what its metering keeps."""

    owner: Principal
    model: str | None
    state: dict[str, Any]


async def record_resource(
    session: AsyncSession,
    kind: ResourceKind,
    name: str,
    principal: Principal,
    model: str | None,
    state: dict[str, Any] | None = None,
) -> None:
    """Store "``principal`` owns ``name``"; the first owner stored stays."""
    await session.execute(
        insert_ignoring(session, table_of(Resource), "kind", "name").values(
            kind=str(kind),
            name=name,
            user_id=principal.user_id,
            team_id=principal.team_id,
            key_id=principal.key_id,
            model=model,
            created_at=utcnow(),
            state=dict(state or {}),
        )
    )


async def resource(session: AsyncSession, kind: ResourceKind, name: str) -> OwnedResource | None:
    """An owned resource, or None when this proxy never saw it made."""
    result = await session.execute(
        select(
            Resource.user_id,
            User.name,
            Resource.team_id,
            Team.name,
            Resource.key_id,
            Resource.model,
            Resource.state,
        )
        .join(User, Resource.user_id == User.id)
        .outerjoin(Team, Resource.team_id == Team.id)
        .where(Resource.kind == str(kind), Resource.name == name)
    )
    row = result.first()
    if row is None:
        return None
    user_id, user_name, team_id, team_name, key_id, model, state = row
    return OwnedResource(
        Principal(user_id, user_name, team_id, team_name, key_id), model, dict(state or {})
    )


async def update_resource_state(
    session: AsyncSession, kind: ResourceKind, name: str, state: dict[str, Any]
) -> None:
    await session.execute(
        update(Resource)
        .where(Resource.kind == str(kind), Resource.name == name)
        .values(state=dict(state))
    )


async def resources_of(
    session: AsyncSession,
    kind: ResourceKind,
    names: set[str],
    user_id: int,
    team_id: int | None = None,
) -> set[str]:
    """Which of ``names`` (of one kind) the user owns, or, with ``team_id``, their team."""
    if not names:
        return set()
    owner = Resource.user_id == user_id
    if team_id is not None:
        owner = or_(owner, Resource.team_id == team_id)
    result = await session.execute(
        select(Resource.name).where(
            Resource.kind == str(kind), Resource.name.in_(sorted(names)), owner
        )
    )
    return set(result.scalars())
