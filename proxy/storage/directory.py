"""Users, teams and keys as the admin API manages them: list, create, rename, move, expire.

Session first, never committing (see ``storage.accounts``, whose get-or-create helpers
and ``create_key`` these build on). Names are unique: creating or renaming onto a name
in use raises ``NameTaken``; a user, team or key that does not exist is ``None`` or
``False``, for the caller to answer 404. Budgets name their user or team scope by name,
so a rename carries the user's (or team's) budgets along.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .accounts import create_key, get_or_create_team
from .schema import ApiKey, BudgetRow, Team, User, utcnow

__all__ = [
    "KeyListing",
    "NameTaken",
    "TeamInfo",
    "UserInfo",
    "create_team",
    "create_user",
    "issue_key",
    "list_key_listings",
    "list_teams",
    "list_users",
    "rename_team",
    "update_user",
]


class NameTaken(Exception):
    """Another user (or team) already has that name."""


@dataclass(frozen=True, slots=True)
class UserInfo:
    id: int
    name: str
    team: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TeamInfo:
    id: int
    name: str
    users: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class KeyListing:
    """A key as listed by the admin API: its label, never the key."""

    id: int
    label: str
    user: str
    team: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


async def _rename_scope(session: AsyncSession, kind: str, old: str, new: str) -> None:
    await session.execute(
        update(BudgetRow)
        .where(BudgetRow.scope_kind == kind, BudgetRow.scope_name == old)
        .values(scope_name=new, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def _user_query() -> Any:
    return (
        select(User.id, User.name, Team.name, User.created_at)
        .outerjoin(Team, User.team_id == Team.id)
        .order_by(User.id)
    )


async def list_users(session: AsyncSession) -> list[UserInfo]:
    return [UserInfo(*r) for r in await session.execute(_user_query())]


async def _user_info(session: AsyncSession, name: str) -> UserInfo | None:
    row = (await session.execute(_user_query().where(User.name == name))).first()
    return UserInfo(*row) if row is not None else None


async def create_user(session: AsyncSession, name: str, team: str | None) -> UserInfo:
    """A new user (in ``team``, made if needed); ``NameTaken`` if the name is in use."""
    if await session.scalar(select(User.id).where(User.name == name)) is not None:
        raise NameTaken(f"a user called {name!r} exists")
    team_id = (await get_or_create_team(session, team)).id if team is not None else None
    session.add(User(name=name, team_id=team_id, created_at=utcnow()))
    await session.flush()
    info = await _user_info(session, name)
    assert info is not None
    return info


_KEEP: Any = object()


async def update_user(
    session: AsyncSession, name: str, *, new_name: str | None = None, team: Any = _KEEP
) -> UserInfo | None:
    """Rename a user and/or move it to ``team`` (None: no team); None if no such user.

    Moving changes the user's home team only; keys keep the team they bill to.
    """
    user = await session.scalar(select(User).where(User.name == name))
    if user is None:
        return None
    if new_name is not None and new_name != name:
        if await session.scalar(select(User.id).where(User.name == new_name)) is not None:
            raise NameTaken(f"a user called {new_name!r} exists")
        user.name = new_name
        await _rename_scope(session, "user", name, new_name)
    if team is not _KEEP:
        user.team_id = (await get_or_create_team(session, team)).id if team is not None else None
    await session.flush()
    return await _user_info(session, user.name)


def _team_query() -> Any:
    return (
        select(Team.id, Team.name, User.id, Team.created_at)
        .outerjoin(User, User.team_id == Team.id)
        .order_by(Team.id)
    )


async def list_teams(session: AsyncSession) -> list[TeamInfo]:
    """Every team with the number of users whose home team it is."""
    counts: dict[int, list[Any]] = {}
    for team_id, name, user_id, created_at in await session.execute(_team_query()):
        entry = counts.setdefault(team_id, [name, 0, created_at])
        entry[1] += user_id is not None
    return [TeamInfo(i, n, c, t) for i, (n, c, t) in counts.items()]


async def _team_info(session: AsyncSession, name: str) -> TeamInfo | None:
    return next((t for t in await list_teams(session) if t.name == name), None)


async def create_team(session: AsyncSession, name: str) -> TeamInfo:
    if await session.scalar(select(Team.id).where(Team.name == name)) is not None:
        raise NameTaken(f"a team called {name!r} exists")
    session.add(Team(name=name, created_at=utcnow()))
    await session.flush()
    info = await _team_info(session, name)
    assert info is not None
    return info


async def rename_team(session: AsyncSession, name: str, new_name: str) -> TeamInfo | None:
    team = await session.scalar(select(Team).where(Team.name == name))
    if team is None:
        return None
    if new_name != name:
        if await session.scalar(select(Team.id).where(Team.name == new_name)) is not None:
            raise NameTaken(f"a team called {new_name!r} exists")
        team.name = new_name
        await _rename_scope(session, "team", name, new_name)
        await session.flush()
    return await _team_info(session, new_name)


def _key_query() -> Any:
    return (
        select(
            ApiKey.id,
            ApiKey.label,
            User.name,
            Team.name,
            ApiKey.created_at,
            ApiKey.expires_at,
            ApiKey.revoked_at,
            ApiKey.last_used_at,
        )
        .join(User, ApiKey.user_id == User.id)
        .outerjoin(Team, ApiKey.team_id == Team.id)
        .order_by(ApiKey.id)
    )


async def list_key_listings(session: AsyncSession) -> list[KeyListing]:
    """Every key, oldest first, with its expiry and last use."""
    return [KeyListing(*r) for r in await session.execute(_key_query())]


async def issue_key(
    session: AsyncSession, secret: bytes, user: str, team: str | None, expires_at: datetime | None
) -> tuple[KeyListing, str]:
    """A new key (see ``accounts.create_key``) that stops working at ``expires_at``."""
    info, key = await create_key(session, secret, user, team)
    if expires_at is not None:
        await session.execute(
            update(ApiKey)
            .where(ApiKey.id == info.id)
            .values(expires_at=expires_at)
            .execution_options(synchronize_session=False)
        )
    row = (await session.execute(_key_query().where(ApiKey.id == info.id))).one()
    return KeyListing(*row), key
