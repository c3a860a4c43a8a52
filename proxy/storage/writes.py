"""The write path: a finished ``UsageRecord`` (or an interaction's owner) as a row.

``storage.writer`` turns what it is handed into rows with ``usage_row`` and
``owner_row``: plain tuples in the order of ``USAGE_COLUMNS`` and ``OWNER_COLUMNS``,
which the journal encodes and ``storage.bulk`` binds as they are. ``usage_values`` and
``owner_values`` are the same rows by column name, for the ORM statements
``insert_usage_rows`` / ``insert_interaction_owners`` (the writer's fallback for an
in-memory database, and the tests'). ``storage.bulk`` compiles its statements from the
same constructs. All are idempotent, so a batch retried after an unclear failure (a
COMMIT whose reply was lost) or replayed from the journal is stored once:

- a usage row is keyed by its ``request_id`` (unique) and, for an interaction,
  by its ``interaction_id`` (unique: one row per interaction);
- a row without an interaction is an upsert on its ``request_id``, and an
  interaction's row one on the interaction id; either only ever replaces a
  *provisional* row (the partial usage of a cut stream, or of a Live session
  still running): by the final record, or by a later provisional one that saw
  at least as many tokens. A final row is never overwritten.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, and_, or_
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert

from ..metering.records import Cost, Principal, UsageRecord
from .schema import Interaction, UsageRow

if TYPE_CHECKING:
    # Imported where a PostgreSQL statement is built: the dialect's package costs a
    # good part of an SQLite server's start-up.
    from sqlalchemy.dialects import postgresql

__all__ = [
    "OWNER_COLUMNS",
    "USAGE_COLUMNS",
    "cost_values",
    "insert_ignoring",
    "insert_ignoring_in",
    "insert_interaction_owners",
    "insert_usage_rows",
    "owner_row",
    "owner_values",
    "replaces",
    "storable",
    "table_of",
    "usage_row",
    "usage_values",
]


def table_of(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


def insert_ignoring(session: AsyncSession, table: Table, *conflict_columns: str) -> Insert:
    """INSERT ... ON CONFLICT (columns) DO NOTHING in the session's dialect."""
    return insert_ignoring_in(session.get_bind().dialect.name, table, *conflict_columns)


def insert_ignoring_in(dialect: str, table: Table, *conflict_columns: str) -> Insert:
    """INSERT ... ON CONFLICT (columns) DO NOTHING in the dialect named ``dialect``."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table).on_conflict_do_nothing(index_elements=conflict_columns)
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=conflict_columns)
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")


# The columns of a ``usage_row`` tuple, in its order (the order of the journal's
# frames, layout 1: ``storage.journal`` keeps it for replay if it ever changes).
USAGE_COLUMNS: tuple[str, ...] = (
    "request_id",
    "created_at",
    "user_id",
    "team_id",
    "key_id",
    "model",
    "endpoint",
    "streamed",
    "upstream_status",
    "latency_seconds",
    "ttfb_seconds",
    "interaction_id",
    "resource",
    "response_id",
    "previous_interaction_id",
    "requested_service_tier",
    "effective_service_tier",
    "labels",
    "input_tokens",
    "cached_tokens",
    "intermediate_tokens",
    "output_tokens",
    "thinking_tokens",
    "total_tokens",
    "total_mismatch",
    "modalities",
    "grounding",
    "images",
    "video_seconds",
    "storage_token_seconds",
    "code_execution_calls",
    "code_execution_errors",
    "parse_error",
    "client_disconnected",
    "provisional",
    "estimated",
    "unmetered_route",
    "cost_usd",
    "cost_input_usd",
    "cost_cached_usd",
    "cost_intermediate_usd",
    "cost_output_usd",
    "cost_thinking_usd",
    "cost_grounding_usd",
    "cost_media_usd",
    "cost_storage_usd",
    "catalog_version",
    "unpriced",
)
# The columns of an ``owner_row`` tuple, in its order.
OWNER_COLUMNS: tuple[str, ...] = ("id", "user_id", "team_id", "key_id", "model", "created_at")


def usage_row(record: UsageRecord) -> tuple[Any, ...]:
    """A ``UsageRecord`` as a ``usage_records`` row: its values in ``USAGE_COLUMNS``'
    order, what the writer journals and queues (``submit`` builds it on the event loop).

    Copies the mutable parts (labels, modality maps), so the row is a snapshot
    of the record at the time of the call. One tuple expression: a dict of the
    same values cost twice as much to build, and its keys made up half a
    journal frame. Text that came from a client or the upstream (the model, ids,
    tiers, labels, modality and tool names) is stored with each NUL character and
    lone surrogate as U+FFFD (``storable``): a database refuses them (PostgreSQL's
    text and jsonb a NUL, both databases a surrogate), and a record must not be lost
    to a character in a label.
    """
    usage, cost, principal = record.usage, record.cost, record.principal
    return (
        record.request_id,
        record.created_at,
        principal.user_id,
        principal.team_id,
        principal.key_id,
        storable(record.model),
        str(record.endpoint),
        record.streamed,
        record.upstream_status,
        record.latency_seconds,
        record.ttfb_seconds,
        storable(record.interaction_id),
        storable(record.resource),
        storable(record.response_id),
        storable(record.previous_interaction_id),
        storable(record.requested_service_tier),
        storable(record.effective_service_tier),
        _storable_map(record.labels),
        usage.input_tokens,
        usage.cached_tokens,
        usage.intermediate_tokens,
        usage.output_tokens,
        usage.thinking_tokens,
        usage.total_tokens,
        usage.total_mismatch,
        _storable_modalities(usage.modalities_json()),
        _storable_map(usage.grounding),
        usage.images,
        usage.video_seconds,
        usage.storage_token_seconds,
        record.code_execution_calls,
        record.code_execution_errors,
        record.parse_error,
        record.client_disconnected,
        record.provisional,
        record.estimated,
        record.unmetered_route,
        cost.total,
        cost.input,
        cost.cached,
        cost.intermediate,
        cost.output,
        cost.thinking,
        cost.grounding,
        cost.media,
        cost.storage,
        cost.catalog_version,
        cost.unpriced,
    )


def usage_values(record: UsageRecord) -> dict[str, Any]:
    """A ``UsageRecord`` as a ``usage_records`` row (column name -> value), for the ORM
    statements below: ``usage_row`` by name."""
    return dict(zip(USAGE_COLUMNS, usage_row(record), strict=True))


def cost_values(cost: Cost) -> dict[str, Any]:
    return {
        "cost_usd": cost.total,
        "cost_input_usd": cost.input,
        "cost_cached_usd": cost.cached,
        "cost_intermediate_usd": cost.intermediate,
        "cost_output_usd": cost.output,
        "cost_thinking_usd": cost.thinking,
        "cost_grounding_usd": cost.grounding,
        "cost_media_usd": cost.media,
        "cost_storage_usd": cost.storage,
        "catalog_version": cost.catalog_version,
        "unpriced": cost.unpriced,
    }


def owner_row(
    interaction_id: str, principal: Principal, model: str | None, created_at: datetime
) -> tuple[Any, ...]:
    """An ``interactions`` row, ``principal`` owns ``interaction_id``, in
    ``OWNER_COLUMNS``' order."""
    return (
        storable(interaction_id),
        principal.user_id,
        principal.team_id,
        principal.key_id,
        storable(model),
        created_at,
    )


_NUL = "\x00"
_REPLACEMENT = "\ufffd"


def _clean(text: str) -> str:
    """``text`` itself, unless it holds what a database cannot store: a NUL (PostgreSQL's
    text and jsonb refuse it) or a lone surrogate (not UTF-8; a JSON escape or an
    undecodable path can make one), each then U+FFFD."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = "".join(_REPLACEMENT if "\ud800" <= c <= "\udfff" else c for c in text)
    return text.replace(_NUL, _REPLACEMENT) if _NUL in text else text


def storable(text: str | None) -> str | None:
    """``text`` as both databases store it: a NUL or a lone surrogate as U+FFFD, the
    replacement character."""
    return None if text is None else _clean(text)


def _storable_map(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a JSON column's flat map (labels; modalities' or tools' counts), its text
    storable. Two names that become one keep the last label, or the sum of their counts."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = _clean(key)
        if type(value) is str:
            out[name] = _clean(value)
        elif name in out:
            out[name] += value
        else:
            out[name] = value
    return out


def _storable_modalities(modalities: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """The per-modality counts, each map a storable copy."""
    return {kind: _storable_map(counts) for kind, counts in modalities.items()}


def owner_values(
    interaction_id: str, principal: Principal, model: str | None, created_at: datetime
) -> dict[str, Any]:
    """An ``interactions`` row (column name -> value): ``owner_row`` by name."""
    return dict(
        zip(OWNER_COLUMNS, owner_row(interaction_id, principal, model, created_at), strict=True)
    )


def replaces(provisional: bool, total: int, old_provisional: bool, old_total: int) -> bool:
    """Whether a row supersedes an earlier one for the same request or interaction (the
    upsert's rule): only a provisional row is replaced, by a final one or by a provisional
    one that saw at least as many tokens."""
    return old_provisional and (not provisional or total >= old_total)


def _replaces(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    return replaces(
        new["provisional"], new["total_tokens"], old["provisional"], old["total_tokens"]
    )


def collapse_interactions(
    rows: Sequence[Mapping[str, Any]],
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """Split ``rows`` into one row per request without an interaction and one row per
    interaction (each the one the upsert would keep), in order. PostgreSQL refuses an
    upsert that touches one row twice in a statement, so a batch never holds two."""
    plain: dict[str, Mapping[str, Any]] = {}
    by_interaction: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        iid = row["interaction_id"]
        kept, key = (plain, row["request_id"]) if iid is None else (by_interaction, iid)
        if key not in kept or _replaces(row, kept[key]):
            kept[key] = row
    return list(plain.values()), list(by_interaction.values())


def _upsert_rows(
    session: AsyncSession, table: Table, names: Iterable[str], key: str = "interaction_id"
) -> Insert:
    return upsert_replacing_provisional(_insert(session, table), table, names, key)


def upsert_replacing_provisional(
    stmt: postgresql.Insert | sqlite.Insert,
    table: Table,
    names: Iterable[str],
    key: str = "interaction_id",
) -> Insert:
    """``stmt`` made an upsert on ``key`` that replaces only a provisional row (the rule
    ``_replaces`` applies in memory)."""
    new, old = stmt.excluded, table.c
    updated = {name: new[name] for name in names}
    return stmt.on_conflict_do_update(
        index_elements=[key],
        set_=updated,
        where=and_(
            old.provisional,
            or_(~new.provisional, new.total_tokens >= old.total_tokens),
        ),
    )


async def insert_usage_rows(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``usage_values`` rows, idempotently (see the module docstring)."""
    if not rows:
        return
    table = table_of(UsageRow)
    plain, interactions = collapse_interactions(rows)
    if plain:
        # Keyed by request_id: a replayed row changes nothing, and a provisional one (a
        # Live session's usage so far) is replaced by its session's later records.
        await session.execute(_upsert_rows(session, table, plain[0].keys(), "request_id"), plain)
    if interactions:
        stmt = _upsert_rows(session, table, interactions[0].keys())
        await session.execute(stmt, interactions)


def _insert(session: AsyncSession, table: Table) -> postgresql.Insert | sqlite.Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")


async def insert_interaction_owners(
    session: AsyncSession, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Insert ``owner_values`` rows; the first owner recorded for an interaction stays."""
    if rows:
        stmt = insert_ignoring(session, table_of(Interaction), "id")
        await session.execute(stmt, list(rows))
