"""Query helpers over the ``_db`` models: keys, users, ownership, reports, repricing.

Every helper takes the session first and leaves the transaction to its caller:
helpers execute and flush but never commit, so several compose into one
transaction and the caller decides when it ends::

    async with sessionmaker.begin() as session:      # commits on success
        info, key = await create_key(session, secret, "alice", "ml")

Who calls what:

- ``_cli``: ``create_key``, ``list_keys``, ``revoke_key``, ``usage_report`` and,
  for ``reprice``, ``records_for_repricing`` + ``update_record_costs``.
- ``_auth`` (on a cache miss only): ``principal_for_key_hash``,
  ``principal_for_user`` (passthrough mode) and ``interaction_owner``.
- ``_writer``: ``usage_values`` / ``owner_values`` turn what it is handed into
  rows, ``insert_usage_rows`` / ``insert_interaction_owners`` write a batch.

Users and teams are made with INSERT ... ON CONFLICT DO NOTHING followed by a
SELECT, so several proxy processes resolving the same new name at once all end
up with the one row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import BigInteger, ColumnElement, CursorResult, Table, case, func, select, update
from sqlalchemy import cast as cast_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert

from ._db import ApiKey, Interaction, Team, UsageRow, User, utc_day, utcnow
from ._keys import KEY_PREFIX, hash_key, new_key
from ._records import Cost, Principal, Usage, UsageRecord

__all__ = [
    "GROUP_KEYS",
    "KeyInfo",
    "RepricingRow",
    "create_key",
    "get_or_create_team",
    "get_or_create_user",
    "insert_interaction_owners",
    "insert_usage_rows",
    "interaction_owner",
    "key_label",
    "list_keys",
    "owner_values",
    "principal_for_key_hash",
    "principal_for_user",
    "records_for_repricing",
    "revoke_key",
    "update_record_costs",
    "usage_report",
    "usage_values",
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


@dataclass(frozen=True, slots=True)
class RepricingRow:
    """What repricing needs of one stored record: its usage and its current cost."""

    id: int
    created_at: datetime
    model: str | None
    endpoint: str
    requested_service_tier: str | None
    effective_service_tier: str | None
    code_execution_calls: int
    usage: Usage
    cost: Cost


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


def _insert_ignoring(session: AsyncSession, table: Table, *conflict_columns: str) -> Insert:
    """INSERT ... ON CONFLICT (columns) DO NOTHING in the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=conflict_columns)
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=conflict_columns)
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")


def _require_aware(value: datetime | None, name: str) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{name} must be a timezone-aware datetime")


# ---------------------------------------------------------------- users and teams


async def get_or_create_team(session: AsyncSession, name: str) -> Team:
    """The team called ``name``, made if it does not exist yet."""
    query = select(Team).where(Team.name == name)
    team = await session.scalar(query)
    if team is None:
        await session.execute(
            _insert_ignoring(session, _table(Team), "name").values(name=name, created_at=utcnow())
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
            _insert_ignoring(session, _table(User), "name").values(
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


# --------------------------------------------------------------------- writing


def usage_values(record: UsageRecord) -> dict[str, Any]:
    """A ``UsageRecord`` as a ``usage_records`` row (column name -> value).

    Copies the mutable parts (labels, modality maps), so the row is a snapshot
    of the record at the time of the call.
    """
    usage, cost, principal = record.usage, record.cost, record.principal
    return {
        "request_id": record.request_id,
        "created_at": record.created_at,
        "user_id": principal.user_id,
        "team_id": principal.team_id,
        "key_id": principal.key_id,
        "model": record.model,
        "endpoint": str(record.endpoint),
        "streamed": record.streamed,
        "upstream_status": record.upstream_status,
        "latency_seconds": record.latency_seconds,
        "ttfb_seconds": record.ttfb_seconds,
        "interaction_id": record.interaction_id,
        "response_id": record.response_id,
        "previous_interaction_id": record.previous_interaction_id,
        "requested_service_tier": record.requested_service_tier,
        "effective_service_tier": record.effective_service_tier,
        "labels": dict(record.labels),
        "input_tokens": usage.input_tokens,
        "cached_tokens": usage.cached_tokens,
        "intermediate_tokens": usage.intermediate_tokens,
        "output_tokens": usage.output_tokens,
        "thinking_tokens": usage.thinking_tokens,
        "total_tokens": usage.total_tokens,
        "total_mismatch": usage.total_mismatch,
        "modalities": {k: dict(v) for k, v in usage.modalities_json().items()},
        "grounding": dict(usage.grounding),
        "code_execution_calls": record.code_execution_calls,
        "code_execution_errors": record.code_execution_errors,
        "parse_error": record.parse_error,
        "client_disconnected": record.client_disconnected,
        **_cost_values(cost),
    }


def _cost_values(cost: Cost) -> dict[str, Any]:
    return {
        "cost_usd": cost.total,
        "cost_input_usd": cost.input,
        "cost_cached_usd": cost.cached,
        "cost_intermediate_usd": cost.intermediate,
        "cost_output_usd": cost.output,
        "cost_thinking_usd": cost.thinking,
        "cost_grounding_usd": cost.grounding,
        "catalog_version": cost.catalog_version,
        "unpriced": cost.unpriced,
    }


def owner_values(
    interaction_id: str, principal: Principal, model: str | None, created_at: datetime
) -> dict[str, Any]:
    """An ``interactions`` row: ``principal`` owns ``interaction_id``."""
    return {
        "id": interaction_id,
        "user_id": principal.user_id,
        "team_id": principal.team_id,
        "key_id": principal.key_id,
        "model": model,
        "created_at": created_at,
    }


async def insert_usage_rows(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``usage_values`` rows in one statement; an interaction already recorded
    (or recorded twice in ``rows``) is skipped, which makes retries safe."""
    if rows:
        stmt = _insert_ignoring(session, _table(UsageRow), "interaction_id")
        await session.execute(stmt, list(rows))


async def insert_interaction_owners(
    session: AsyncSession, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Insert ``owner_values`` rows; the first owner recorded for an interaction stays."""
    if rows:
        stmt = _insert_ignoring(session, _table(Interaction), "id")
        await session.execute(stmt, list(rows))


# --------------------------------------------------------------------- reports

GROUP_KEYS: tuple[str, ...] = ("user", "team", "model", "day")

# The measures of a usage report row, besides ``requests`` and ``unpriced_requests``.
TOKEN_COLUMNS = (
    "input_tokens",
    "cached_tokens",
    "intermediate_tokens",
    "output_tokens",
    "thinking_tokens",
    "total_tokens",
)
COST_COLUMNS = (
    "cost_usd",
    "cost_input_usd",
    "cost_cached_usd",
    "cost_intermediate_usd",
    "cost_output_usd",
    "cost_thinking_usd",
    "cost_grounding_usd",
)


def _group_expression(key: str) -> ColumnElement[Any]:
    if key == "user":
        return User.name.expression
    if key == "team":
        return Team.name.expression
    if key == "model":
        return UsageRow.model.expression
    return utc_day(UsageRow.created_at)


def _int_sum(column: ColumnElement[Any]) -> ColumnElement[int]:
    # PostgreSQL's SUM(bigint) is NUMERIC; the cast keeps ints ints everywhere.
    return cast_(func.coalesce(func.sum(column), 0), BigInteger)


async def usage_report(
    session: AsyncSession,
    *,
    user: str | None = None,
    team: str | None = None,
    model: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    group_by: Sequence[str] = ("user",),
) -> list[dict[str, object]]:
    """Token and cost totals per group, over records with ``since <= created_at < until``.

    ``group_by`` is a subset of ``GROUP_KEYS``: ``user`` and ``team`` are names
    (``team`` is None for records billed to no team), ``day`` is the UTC date as
    ``YYYY-MM-DD``. Each row holds the group keys, ``requests``, the token sums
    (ints), the cost sums (``Decimal``; None when every record in the group is
    unpriced, since SQL's SUM skips NULLs) and ``unpriced_requests``. Rows are
    ordered by the group keys, None first. With an empty ``group_by`` the one
    row is the grand total (no row when nothing matched).
    """
    keys = list(dict.fromkeys(group_by))
    unknown = [k for k in keys if k not in GROUP_KEYS]
    if unknown:
        raise ValueError(f"cannot group by {unknown}; choose from {list(GROUP_KEYS)}")
    _require_aware(since, "since")
    _require_aware(until, "until")

    groups = [_group_expression(k).label(k) for k in keys]
    measures: list[ColumnElement[Any]] = [func.count().label("requests")]
    measures += [_int_sum(getattr(UsageRow, c)).label(c) for c in TOKEN_COLUMNS]
    measures += [func.sum(getattr(UsageRow, c)).label(c) for c in COST_COLUMNS]
    measures.append(_int_sum(case((UsageRow.unpriced, 1), else_=0)).label("unpriced_requests"))

    query = (
        select(*groups, *measures)
        .select_from(UsageRow)
        .join(User, UsageRow.user_id == User.id)
        .outerjoin(Team, UsageRow.team_id == Team.id)
    )
    if user is not None:
        query = query.where(User.name == user)
    if team is not None:
        query = query.where(Team.name == team)
    if model is not None:
        query = query.where(UsageRow.model == model)
    if since is not None:
        query = query.where(UsageRow.created_at >= since)
    if until is not None:
        query = query.where(UsageRow.created_at < until)
    if keys:
        query = query.group_by(*(_group_expression(k) for k in keys))

    rows: list[dict[str, object]] = [dict(r._mapping) for r in await session.execute(query)]
    if not keys:
        rows = [r for r in rows if r["requests"]]
    # Sorted here rather than by ORDER BY: PostgreSQL's locale collation and
    # SQLite's byte order disagree on text, and NULLs sort differently too.
    rows.sort(key=lambda r: tuple((r[k] is not None, r[k] or "") for k in keys))
    return rows


# ------------------------------------------------------------------- repricing


def _usage_from_row(row: UsageRow) -> Usage:
    modalities = row.modalities or {}
    return Usage(
        input_tokens=row.input_tokens,
        cached_tokens=row.cached_tokens,
        intermediate_tokens=row.intermediate_tokens,
        output_tokens=row.output_tokens,
        thinking_tokens=row.thinking_tokens,
        total_tokens=row.total_tokens,
        input_by_modality=dict(modalities.get("input", {})),
        cached_by_modality=dict(modalities.get("cached", {})),
        intermediate_by_modality=dict(modalities.get("intermediate", {})),
        output_by_modality=dict(modalities.get("output", {})),
        grounding=dict(row.grounding or {}),
    )


def _cost_from_row(row: UsageRow) -> Cost:
    return Cost(
        total=row.cost_usd,
        input=row.cost_input_usd,
        cached=row.cost_cached_usd,
        intermediate=row.cost_intermediate_usd,
        output=row.cost_output_usd,
        thinking=row.cost_thinking_usd,
        grounding=row.cost_grounding_usd,
        catalog_version=row.catalog_version,
    )


async def records_for_repricing(
    session: AsyncSession,
    since: datetime | None = None,
    model: str | None = None,
    *,
    batch_size: int = 1000,
) -> AsyncIterator[list[RepricingRow]]:
    """Stored records (created at or after ``since``, of ``model``), in batches by id.

    Pages by primary key rather than holding a cursor open, so the caller may
    ``update_record_costs`` (and commit) between batches.
    """
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    _require_aware(since, "since")
    last_id = 0
    while True:
        query = select(UsageRow).where(UsageRow.id > last_id)
        if since is not None:
            query = query.where(UsageRow.created_at >= since)
        if model is not None:
            query = query.where(UsageRow.model == model)
        rows = (await session.scalars(query.order_by(UsageRow.id).limit(batch_size))).all()
        if not rows:
            return
        last_id = rows[-1].id
        yield [
            RepricingRow(
                id=row.id,
                created_at=row.created_at,
                model=row.model,
                endpoint=row.endpoint,
                requested_service_tier=row.requested_service_tier,
                effective_service_tier=row.effective_service_tier,
                code_execution_calls=row.code_execution_calls,
                usage=_usage_from_row(row),
                cost=_cost_from_row(row),
            )
            for row in rows
        ]


async def update_record_costs(session: AsyncSession, updates: Iterable[tuple[int, Cost]]) -> int:
    """Replace the cost columns of records by id; returns how many ids were given."""
    params = [{"id": record_id, **_cost_values(cost)} for record_id, cost in updates]
    if params:
        await session.execute(update(UsageRow), params)
    return len(params)
