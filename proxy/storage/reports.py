"""Reading records back: usage reports and the rows repricing revisits.

The CLI's ``usage`` and the demo call ``usage_report``; ``pricing.reprice`` walks
``records_for_repricing`` and writes with ``update_record_costs``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, case, func, select, update
from sqlalchemy import cast as cast_
from sqlalchemy.ext.asyncio import AsyncSession

from ..metering.records import Cost, Usage
from .columns import COST_COLUMNS, GROUP_KEYS, LABEL_PREFIX, TOKEN_COLUMNS
from .schema import Team, UsageRow, User, utc_day
from .writes import cost_values

__all__ = [
    "COST_COLUMNS",
    "GROUP_KEYS",
    "LABEL_PREFIX",
    "TOKEN_COLUMNS",
    "RepricingRow",
    "recent_records",
    "records_for_repricing",
    "update_record_costs",
    "usage_report",
]


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


def _require_aware(value: datetime | None, name: str) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{name} must be a timezone-aware datetime")


# --------------------------------------------------------------------- reports


def _group_expression(key: str) -> ColumnElement[Any]:
    if key == "user":
        return User.name.expression
    if key == "team":
        return Team.name.expression
    if key == "key":
        return UsageRow.key_id.expression
    if key == "model":
        return UsageRow.model.expression
    if key == "endpoint":
        return UsageRow.endpoint.expression
    if key.startswith(LABEL_PREFIX):
        # JSON_EXTRACT on SQLite, ->> on PostgreSQL: the label's value as text.
        label: ColumnElement[Any] = UsageRow.labels[key.removeprefix(LABEL_PREFIX)].as_string()
        return label
    return utc_day(UsageRow.created_at)


def _is_group_key(key: str) -> bool:
    return key in GROUP_KEYS or (key.startswith(LABEL_PREFIX) and len(key) > len(LABEL_PREFIX))


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

    ``group_by`` holds names of ``GROUP_KEYS`` and ``label:NAME``: ``user`` and
    ``team`` are names (``team`` is None for records billed to no team), ``key``
    the key id (None in passthrough mode), ``endpoint`` the route's name, ``day``
    the UTC date as ``YYYY-MM-DD``, ``label:NAME`` the request label's value (None
    for records without it). Each row holds the group keys, ``requests``, the token sums
    (ints), the cost sums (``Decimal``; None when every record in the group is
    unpriced, since SQL's SUM skips NULLs) and ``unpriced_requests``. Rows are
    ordered by the group keys, None first. With an empty ``group_by`` the one
    row is the grand total (no row when nothing matched).
    """
    keys = list(dict.fromkeys(group_by))
    unknown = [k for k in keys if not _is_group_key(k)]
    if unknown:
        raise ValueError(f"cannot group by {unknown}; choose from {list(GROUP_KEYS)} or label:NAME")
    _require_aware(since, "since")
    _require_aware(until, "until")

    # Positional labels: a label's name may hold any character.
    groups = [_group_expression(k).label(f"g{i}") for i, k in enumerate(keys)]
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
        # By the output labels: a label's JSON path is a bound parameter, and
        # PostgreSQL does not see two binds of one value as the same expression.
        query = query.group_by(*groups)

    rows: list[dict[str, object]] = []
    for r in await session.execute(query):
        row = dict(r._mapping)
        rows.append({**{k: row.pop(f"g{i}") for i, k in enumerate(keys)}, **row})
    if not keys:
        rows = [r for r in rows if r["requests"]]
    # Sorted here rather than by ORDER BY: PostgreSQL's locale collation and
    # SQLite's byte order disagree on text, and NULLs sort differently too.
    rows.sort(key=lambda r: tuple((r[k] is not None, _sortable(r[k])) for k in keys))
    return rows


RECENT_COLUMNS = (
    "id",
    "created_at",
    "model",
    "endpoint",
    "streamed",
    "upstream_status",
    "provisional",
    "code_execution_calls",
    *TOKEN_COLUMNS,
    "cost_usd",
)


async def recent_records(session: AsyncSession, limit: int) -> list[dict[str, object]]:
    """The ``limit`` most recent records, newest first, with user and team names.

    Each row holds ``RECENT_COLUMNS`` plus ``user`` and ``team`` (None for a record billed
    to no team). Ordered by ``created_at`` then ``id``, both descending: the writer
    batches records, so ids alone need not follow the time a call was made.
    """
    query = (
        select(
            *(getattr(UsageRow, c) for c in RECENT_COLUMNS),
            User.name.label("user"),
            Team.name.label("team"),
        )
        .join(User, UsageRow.user_id == User.id)
        .outerjoin(Team, UsageRow.team_id == Team.id)
        .order_by(UsageRow.created_at.desc(), UsageRow.id.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in await session.execute(query)]


def _sortable(value: object) -> tuple[int, str]:
    # Key ids sort as numbers, everything else as text.
    if isinstance(value, int):
        return (value, "")
    return (0, "" if value is None else str(value))


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
        images=row.images,
        video_seconds=row.video_seconds,
        storage_token_seconds=row.storage_token_seconds,
        video_seconds_by_resolution=dict(modalities.get("video_seconds", {})),
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
    params = [{"id": record_id, **cost_values(cost)} for record_id, cost in updates]
    if params:
        await session.execute(update(UsageRow), params)
    return len(params)
