"""Who is who: teams, users, virtual keys, principals and interaction owners.

Every helper in ``storage`` takes the session first and leaves the transaction to its
caller: helpers execute and flush but never commit, so several compose into one
transaction and the caller decides when it ends::

    async with sessionmaker.begin() as session:      # commits on success
        info, key = await create_key(session, secret, "alice", "ml")

The CLI creates, lists and revokes keys here; ``server.auth`` resolves keys and
interaction owners here on a cache miss only.

Users and teams are made with INSERT ... ON CONFLICT DO NOTHING followed by a
SELECT, so several proxy processes resolving the same new name at once all end
up with the one row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..metering.records import Principal
from ..server.keys import KEY_PREFIX, hash_key, new_key
from .schema import ApiKey, Interaction, Team, UploadSession, User, utcnow
from .writes import insert_ignoring, insert_interaction_owners, owner_values, table_of

__all__ = [
    "KeyInfo",
    "create_key",
    "get_or_create_team",
    "get_or_create_user",
    "interaction_owner",
    "key_label",
    "list_keys",
    "principal_for_key_hash",
    "principal_for_user",
    "record_owner",
    "record_upload",
    "revoke_key",
    "upload_owner",
]


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

    @property
    def active(self) -> bool:
        return self.revoked_at is None


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
        )
        .join(User, ApiKey.user_id == User.id)
        .outerjoin(Team, ApiKey.team_id == Team.id)
        .order_by(ApiKey.id)
    )


async def create_key(
    session: AsyncSession, secret: bytes, user: str, team: str | None
) -> tuple[KeyInfo, str]:
    """A new virtual key for ``user``, and the key itself, which is never stored.

    The user (and team) are made if needed. Calls with the key are billed to
    ``team`` when given, else to the user's home team.
    """
    user_row = await get_or_create_user(session, user, team)
    team_id = (await get_or_create_team(session, team)).id if team is not None else user_row.team_id
    key = new_key()
    row = ApiKey(
        key_hash=hash_key(secret, key),
        label=key_label(key),
        user_id=user_row.id,
        team_id=team_id,
        created_at=utcnow(),
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


async def principal_for_key_hash(session: AsyncSession, key_hash: str) -> Principal | None:
    """Who an active key bills to, or None for unknown and revoked keys."""
    result = await session.execute(
        select(ApiKey.user_id, User.name, ApiKey.team_id, Team.name, ApiKey.id)
        .join(User, ApiKey.user_id == User.id)
        .outerjoin(Team, ApiKey.team_id == Team.id)
        .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    )
    row = result.first()
    if row is None:
        return None
    user_id, user_name, team_id, team_name, key_id = row
    return Principal(user_id, user_name, team_id, team_name, key_id)


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


async def record_owner(
    session: AsyncSession, interaction_id: str, principal: Principal, model: str | None
) -> None:
    """Store "``principal`` owns ``interaction_id``"; the first owner stored stays."""
    await insert_interaction_owners(
        session, [owner_values(interaction_id, principal, model, utcnow())]
    )


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
