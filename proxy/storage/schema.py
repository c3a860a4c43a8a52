"""The database schema as SQLAlchemy models, its column types, and the engine factory.

The tables the proxy stores usage and ownership in:

- ``teams`` and ``users``: who is billed. Users are made when a key is created
  (``gemini-meter keys create``) or, in passthrough mode, the first time a client
  key is seen.
- ``api_keys``: virtual keys, stored as ``server.keys.hash_key(secret, key)`` (never the
  key itself) with a short display ``label``.
- ``interactions``: who owns an upstream interaction, so the proxy can refuse
  other users' GET/cancel/DELETE and ``previous_interaction_id``.
- ``resources``: who owns every other upstream resource made through the proxy (files,
  context caches, batches, video operations, minted Live tokens), and what each kind's
  metering keeps between calls.
- ``usage_records``: one row per billable upstream response, every field of
  ``metering.records.UsageRecord`` flattened. ``interaction_id`` is unique: the writer
  inserts with ``ON CONFLICT DO NOTHING``, so an interaction is recorded once.

The schema is created by Alembic (``migrations/``), never by ``create_all`` in
production; ``tests/storage/test_migrate.py`` checks that these models and the migrations
agree on SQLite and PostgreSQL. Query helpers live in ``storage`` and the batching
writer in ``storage.writer``; this module only describes tables and opens engines.

Two column types carry the portability rules:

- ``Money``: exact US dollars with 12 fractional digits. PostgreSQL stores
  ``NUMERIC(28, 12)``; SQLite, which has no exact decimal type, stores an
  INTEGER count of 1e-12 USD so that ``SUM()`` in SQL stays exact.
- ``UTCDateTime``: timezone-aware UTC ``datetime`` in Python on both databases
  (``timestamptz`` on PostgreSQL, UTC text on SQLite).

Unlike the other modules, this one keeps its annotations evaluated (no ``from
__future__ import annotations``): the declarative mapping reads every ``Mapped[...]``,
and strings it would have to evaluate one by one, at each start.
"""

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    event,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = [
    "MONEY_SCALE",
    "ROLLUP_BUCKET",
    "ApiKey",
    "Base",
    "Interaction",
    "Money",
    "Resource",
    "ResourceKind",
    "RollupMoney",
    "SpendTable",
    "Team",
    "UTCDateTime",
    "UsageRollup",
    "UsageRow",
    "User",
    "make_engine",
    "make_sessionmaker",
    "quantize_money",
    "rollup_table",
    "time_column",
    "utc_day",
    "utcnow",
]

MONEY_SCALE = 12
_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)
# Wide enough that quantizing any value NUMERIC(28, 12) can hold (or a SUM of
# them) never trips the default 28-digit context.
_MONEY_CONTEXT = Context(prec=80, rounding=ROUND_HALF_EVEN)
# NUMERIC(28, 12) leaves 16 digits before the point.
_NUMERIC_LIMIT = Decimal(10) ** (28 - MONEY_SCALE)
# SQLite INTEGER is a signed 64-bit value: with 1e-12 USD units that bounds a
# stored amount (and a SUM, which SQLite reports as "integer overflow" rather than
# wrapping) to about 9.2 million dollars.
_SQLITE_MIN = -(2**63)
_SQLITE_MAX = 2**63 - 1

# Explicit, stable constraint and index names: migrations refer to them by name
# and SQLite's batch mode needs them to recreate tables.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC: the only kind of timestamp stored."""
    return datetime.now(UTC)


def quantize_money(value: Decimal | int) -> Decimal:
    """``value`` rounded half-even to 12 fractional digits, as stored.

    Raises ``TypeError`` for floats (binary fractions are not money) and
    ``ValueError`` for NaN, infinities and values beyond ``NUMERIC(28, 12)``.
    """
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"money must be a Decimal or an int, not {type(value).__name__}")
    amount = Decimal(value)
    if not amount.is_finite():
        raise ValueError(f"money must be finite, not {amount}")
    quantized = amount.quantize(_QUANTUM, context=_MONEY_CONTEXT)
    if abs(quantized) >= _NUMERIC_LIMIT:
        raise ValueError(f"money amount {quantized} exceeds NUMERIC(28, {MONEY_SCALE})")
    return quantized


class Money(TypeDecorator[Decimal]):
    """Exact US dollars, 12 fractional digits, ``Decimal`` in Python on every database.

    PostgreSQL: native ``NUMERIC(28, 12)``. SQLite: an INTEGER count of 1e-12 USD
    (SQLite's NUMERIC affinity would silently turn values into binary floats).
    Because ``func.sum(column)`` takes the column's type, the result processor
    also turns an SQLite integer SUM back into an exact ``Decimal``.
    """

    impl = Numeric(28, MONEY_SCALE, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(28, MONEY_SCALE, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        amount = quantize_money(value)
        if dialect.name != "sqlite":
            return amount
        units = int(amount.scaleb(MONEY_SCALE, context=_MONEY_CONTEXT))
        if not _SQLITE_MIN <= units <= _SQLITE_MAX:
            raise ValueError(f"money amount {amount} exceeds what SQLite can store exactly")
        return units

    def process_result_value(self, value: Any | None, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            if not isinstance(value, int):
                # Only a hand-written row could put REAL or TEXT here; refuse to
                # report a float as an exact amount.
                raise TypeError(f"unexpected SQLite money value {value!r}")
            return Decimal(value).scaleb(-MONEY_SCALE, context=_MONEY_CONTEXT)
        return Decimal(value).quantize(_QUANTUM, context=_MONEY_CONTEXT)


class RollupMoney(Money):
    """``Money`` for sums of stored amounts: on PostgreSQL a ``NUMERIC`` without a
    precision (exact, however many rows add up), on SQLite the same INTEGER units (whose
    sum SQLite would turn into a float past 2**63: read back, that is refused, never taken
    for exact)."""

    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(asdecimal=True))


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC ``datetime`` in and out, whatever the database.

    Naive datetimes are refused on bind: a local-time value silently stored as
    UTC would shift every per-day report. PostgreSQL stores ``timestamptz``;
    SQLite stores the UTC wall time as text (SQLAlchemy's fixed-width format,
    so string comparison orders correctly) and gets its timezone back on load.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(DateTime())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class utc_day(FunctionElement[str]):
    """``utc_day(column)``: the UTC calendar date of a ``UTCDateTime`` as ``YYYY-MM-DD``.

    Compiled per dialect with literal arguments only, so the very same SQL text
    can appear in SELECT and GROUP BY (PostgreSQL refuses to match expressions
    whose bound parameters differ).
    """

    type = String()
    name = "utc_day"
    inherit_cache = True


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    # Values are stored as UTC wall time "YYYY-MM-DD HH:MM:SS.ffffff".
    return f"date({compiler.process(element.clauses, **kw)})"


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    # timezone('UTC', timestamptz) is the UTC wall time whatever the session's
    # TimeZone setting is.
    return f"to_char(timezone('UTC', {compiler.process(element.clauses, **kw)}), 'YYYY-MM-DD')"


class _PostgresJSONB(TypeDecorator[Any]):
    """PostgreSQL's ``JSONB``, its dialect imported only when a PostgreSQL database
    compiles or binds it: importing the dialect costs an SQLite server's start-up a
    good share, and the SQLite path never needs it."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        from sqlalchemy.dialects.postgresql import JSONB

        return dialect.type_descriptor(JSONB())


_JSON = JSON().with_variant(_PostgresJSONB(), "postgresql")
# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
_BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    # The user's home team: what passthrough-mode principals are billed to.
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Hex HMAC-SHA256 of the key under the server secret (``server.keys.hash_key``).
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # A short display id such as "gm-AbCd...", enough to tell keys apart in a
    # listing and nowhere near enough to guess one.
    label: Mapped[str] = mapped_column(Text)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    # The team calls made with this key are billed to.
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Coarse (updated at most once a minute per key, off the request path).
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Interaction(Base):
    __tablename__ = "interactions"

    # The upstream interaction id, as Gemini returned it.
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))
    model: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UsageRow(Base):
    """One ``UsageRecord``, flattened (see ``storage.writes.usage_values``)."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_user_id_created_at", "user_id", "created_at"),
        Index("ix_usage_records_team_id_created_at", "team_id", "created_at"),
        Index("ix_usage_records_created_at", "created_at"),
        Index("ix_usage_records_model_created_at", "model", "created_at"),
        # Idempotent writes: a batch written twice (a lost COMMIT reply, a journal
        # replay) inserts each record once.
        Index("uq_usage_records_request_id", "request_id", unique=True),
    )

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True)
    request_id: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))
    model: Mapped[str | None] = mapped_column(Text)
    endpoint: Mapped[str] = mapped_column(Text)
    streamed: Mapped[bool] = mapped_column(Boolean)
    upstream_status: Mapped[int] = mapped_column(Integer)
    latency_seconds: Mapped[float] = mapped_column(Double)
    ttfb_seconds: Mapped[float | None] = mapped_column(Double)
    # Unique, nullable (NULLs never conflict): the exactly-once guarantee.
    interaction_id: Mapped[str | None] = mapped_column(Text, unique=True)
    response_id: Mapped[str | None] = mapped_column(Text)
    previous_interaction_id: Mapped[str | None] = mapped_column(Text)
    requested_service_tier: Mapped[str | None] = mapped_column(Text)
    effective_service_tier: Mapped[str | None] = mapped_column(Text)
    labels: Mapped[dict[str, str]] = mapped_column(_JSON)

    input_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    intermediate_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    thinking_tokens: Mapped[int] = mapped_column(BigInteger)
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    total_mismatch: Mapped[bool] = mapped_column(Boolean)
    modalities: Mapped[dict[str, dict[str, int]]] = mapped_column(_JSON)
    grounding: Mapped[dict[str, int]] = mapped_column(_JSON)
    code_execution_calls: Mapped[int] = mapped_column(Integer)
    code_execution_errors: Mapped[int] = mapped_column(Integer)
    parse_error: Mapped[bool] = mapped_column(Boolean)
    client_disconnected: Mapped[bool] = mapped_column(Boolean)
    # Partial usage of an interaction cut before it was terminal: replaced later.
    provisional: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # Tokens counted by the proxy, not reported by the upstream.
    estimated: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # A billable route the meter does not understand: recorded with zero tokens.
    unmetered_route: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # The batch, context cache, video operation or Live session the line belongs to.
    resource: Mapped[str | None] = mapped_column(Text)
    # Units billed other than by the token (see ``metering.records.Usage``).
    images: Mapped[int] = mapped_column(BigInteger, server_default="0")
    video_seconds: Mapped[int] = mapped_column(BigInteger, server_default="0")
    storage_token_seconds: Mapped[int] = mapped_column(BigInteger, server_default="0")

    # NULL when the model had no catalog entry: never a guessed price.
    cost_usd: Mapped[Decimal | None] = mapped_column(Money)
    cost_input_usd: Mapped[Decimal | None] = mapped_column(Money)
    cost_cached_usd: Mapped[Decimal | None] = mapped_column(Money)
    cost_intermediate_usd: Mapped[Decimal | None] = mapped_column(Money)
    cost_output_usd: Mapped[Decimal | None] = mapped_column(Money)
    cost_thinking_usd: Mapped[Decimal | None] = mapped_column(Money)
    cost_grounding_usd: Mapped[Decimal | None] = mapped_column(Money)
    cost_media_usd: Mapped[Decimal | None] = mapped_column(Money)
    cost_storage_usd: Mapped[Decimal | None] = mapped_column(Money)
    catalog_version: Mapped[str | None] = mapped_column(Text)
    unpriced: Mapped[bool] = mapped_column(Boolean)


class UsageRollup(Base):
    """``usage_records``' cost and token columns summed per quarter hour (UTC) and per
    (user, team, key): what budgets read a window's spend from.

    Kept by triggers on ``usage_records`` (migration 0005), in the transaction of the
    change: never written by the application. ``team_id`` and ``key_id`` are 0 for none.
    """

    __tablename__ = "usage_rollups"
    __table_args__ = (
        Index("ix_usage_rollups_user_id_bucket", "user_id", "bucket"),
        Index("ix_usage_rollups_team_id_bucket", "team_id", "bucket"),
        Index("ix_usage_rollups_key_id_bucket", "key_id", "bucket"),
    )

    bucket: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cost_usd: Mapped[Decimal] = mapped_column(RollupMoney, server_default="0")
    cost_input_usd: Mapped[Decimal] = mapped_column(RollupMoney, server_default="0")
    cost_cached_usd: Mapped[Decimal] = mapped_column(RollupMoney, server_default="0")
    cost_intermediate_usd: Mapped[Decimal] = mapped_column(RollupMoney, server_default="0")
    cost_output_usd: Mapped[Decimal] = mapped_column(RollupMoney, server_default="0")
    cost_thinking_usd: Mapped[Decimal] = mapped_column(RollupMoney, server_default="0")
    cost_grounding_usd: Mapped[Decimal] = mapped_column(RollupMoney, server_default="0")
    cost_media_usd: Mapped[Decimal] = mapped_column(RollupMoney, server_default="0")
    cost_storage_usd: Mapped[Decimal] = mapped_column(RollupMoney, server_default="0")
    total_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cached_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    intermediate_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    output_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    thinking_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")


# Every time zone's offset is a whole number of quarter hours: a window's bounds fall on
# the rollups' buckets.
ROLLUP_BUCKET = timedelta(minutes=15)
_ROLLUP_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)


# Where a window's spend is read: the records, or their quarter-hour rollups.
SpendTable = type[UsageRow] | type[UsageRollup]


def rollup_table(start: datetime, end: datetime | None) -> SpendTable:
    """Where the spend of ``[start, end)`` is read: ``UsageRollup`` when both bounds are
    on its quarter hours (every window's are), else the records themselves."""
    aligned = all(
        bound is None or (bound - _ROLLUP_ORIGIN) % ROLLUP_BUCKET == timedelta(0)
        for bound in (start, end)
    )
    return UsageRollup if aligned else UsageRow


def time_column(table: SpendTable) -> Any:
    """The column a window's bounds compare with: a record's time, or its bucket."""
    return UsageRollup.bucket if table is UsageRollup else UsageRow.created_at


class ResourceKind(StrEnum):
    """The kinds of upstream resource a user creates through the proxy and alone may reach."""

    FILE = "file"
    CACHED_CONTENT = "cached_content"
    BATCH = "batch"
    # a long-running operation (a Veo video)
    OPERATION = "operation"
    # an ephemeral Live API token the proxy minted and keeps sealed
    AUTH_TOKEN = "auth_token"
    # a File Search store, with everything under it (documents, operations, media)
    FILE_SEARCH_STORE = "file_search_store"


class Resource(Base):
    """Who owns an upstream resource (other than an interaction) made through the proxy.

    ``name`` is the canonical upstream name without a version prefix
    (``batches/abc``, ``cachedContents/xyz``, ``files/abc``,
    ``models/veo-3.0-generate-001/operations/op1``), or a keyed hash where the name is
    itself a credential. ``state`` holds what a kind's metering needs between calls
    (a cache's tokens and expiry, a video's requested seconds).
    """

    __tablename__ = "resources"

    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))
    model: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    state: Mapped[dict[str, Any]] = mapped_column(_JSON)


class UploadSession(Base):
    """A resumable upload an authenticated principal started through the proxy."""

    __tablename__ = "upload_sessions"

    # keyed hash of the upload id: the id is the byte legs' only credential
    upload_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class BudgetRow(Base):
    """A spending cap on a scope over a window (see ``proxy.budgets``)."""

    __tablename__ = "budgets"
    __table_args__ = (Index("ix_budgets_scope", "scope_kind", "scope_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # "user" | "team" | "key" | "global"; scope_name is the user or team name, the key
    # id as text, or None for global
    scope_kind: Mapped[str] = mapped_column(Text)
    scope_name: Mapped[str | None] = mapped_column(Text)
    # exactly one of the two limits is set
    limit_usd: Mapped[Decimal | None] = mapped_column(Money)
    limit_tokens: Mapped[int | None] = mapped_column(BigInteger)
    # a token category ("input", "cached", "intermediate", "output", "thinking") or None
    category: Mapped[str | None] = mapped_column(Text)
    # "daily" | "weekly" | "monthly" | "total", aligned to the calendar in ``timezone``
    window: Mapped[str] = mapped_column(Text)
    timezone: Mapped[str] = mapped_column(Text)
    # fractions of the limit as decimal strings, ascending, e.g. ["0.5", "0.8", "1"]
    thresholds: Mapped[list[str]] = mapped_column(_JSON)
    mode: Mapped[str] = mapped_column(Text)  # "alert" | "enforce"
    # the webhook URL sealed under the server secret (it may itself be a secret)
    webhook_sealed: Mapped[str | None] = mapped_column(Text)
    webhook_format: Mapped[str] = mapped_column(Text)  # "json" | "slack"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BudgetAlert(Base):
    """The alert outbox: one row per (budget, window, threshold), written before sending."""

    __tablename__ = "budget_alerts"
    __table_args__ = (
        UniqueConstraint("budget_id", "window_start", "threshold", name="uq_budget_alerts_once"),
        Index("ix_budget_alerts_sent_at", "sent_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    budget_id: Mapped[int] = mapped_column(ForeignKey("budgets.id", ondelete="CASCADE"))
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    threshold: Mapped[str] = mapped_column(Text)  # the fraction, as in BudgetRow.thresholds
    spend: Mapped[str] = mapped_column(Text)  # exact decimal string (USD or tokens)
    payload: Mapped[dict[str, Any]] = mapped_column(_JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)


# How long an SQLite connection waits for another writer's lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 5_000


def _on_sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers (reports, key lookups) run while the writer commits,
        # and it is persistent, so the first connection sets it for the file.
        cursor.execute("PRAGMA journal_mode=WAL")
        # SQLite ignores foreign keys unless every connection asks for them.
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def make_engine(url: str, **overrides: Any) -> AsyncEngine:
    """An ``AsyncEngine`` for ``sqlite+aiosqlite://`` or ``postgresql+asyncpg://`` URLs.

    SQLite connections get WAL, foreign keys and a busy timeout; PostgreSQL gets
    a pre-pinged, recycled pool and a UTC session time zone. Bound parameters
    are hidden from error messages, which end up in logs. ``overrides`` go to
    ``create_async_engine`` as they are (tests pass ``poolclass=NullPool``).
    The caller disposes the engine.
    """
    options: dict[str, Any] = {"hide_parameters": True}
    if url.startswith("postgresql"):
        options.update(
            pool_size=10,
            max_overflow=20,
            # A proxy outlives database restarts and fail-overs: test a pooled
            # connection before use rather than fail a batch on a dead socket.
            pool_pre_ping=True,
            pool_recycle=1800,
            connect_args={
                "server_settings": {"timezone": "UTC", "application_name": "gemini-meter"}
            },
        )
    options.update(overrides)
    engine = _create_async_engine(url, **options)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay usable after commit (no lazy reloads later)."""
    return async_sessionmaker(engine, expire_on_commit=False)
