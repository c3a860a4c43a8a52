"""Running totals of usage by quarter hour, kept by the database itself.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 00:00:00+00:00

- ``usage_rollups``: per quarter hour (UTC, every time zone's hour and half and quarter
  hour falls on one) and per (user, team, key), the sums of ``usage_records``' cost and
  token columns. Budgets read a window's spend from here (a few thousand rows a month at
  most) rather than summing every record of the window (``budgets.engine``,
  ``budgets.alerts``). ``team_id`` and ``key_id`` are 0 for none: a primary key has no
  NULL.
- Triggers on ``usage_records`` keep it: every insert adds, every delete subtracts, every
  update (a provisional row replaced, a repricing) does both, in the same transaction as
  the change itself, whichever path made it (the writer's COPY or multi-row INSERTs, the
  ORM, SQL by hand). On PostgreSQL one statement-level trigger per operation adds each
  statement's rows grouped by bucket (transition tables); SQLite has row-level triggers
  only.
- The rows already stored are summed into it here.

A later migration that rebuilds ``usage_records`` on SQLite (``batch_alter_table``
copies the table) drops its triggers: it must create them again (``_sqlite_triggers``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = (
    "cost_usd",
    "cost_input_usd",
    "cost_cached_usd",
    "cost_intermediate_usd",
    "cost_output_usd",
    "cost_thinking_usd",
    "cost_grounding_usd",
    "cost_media_usd",
    "cost_storage_usd",
)
TOKENS = (
    "total_tokens",
    "input_tokens",
    "cached_tokens",
    "intermediate_tokens",
    "output_tokens",
    "thinking_tokens",
)
KEY = ("bucket", "user_id", "team_id", "key_id")

# The quarter hour a stored created_at falls in. SQLite keeps it as the text
# 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC), which compares as the time does.
_SQLITE_BUCKET = (
    "substr({t}.created_at, 1, 14)"
    " || printf('%02d', CAST(substr({t}.created_at, 15, 2) AS INTEGER) / 15 * 15)"
    " || ':00.000000'"
)
_POSTGRES_BUCKET = "date_bin('15 minutes', created_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')"


def _execute(sql: str) -> None:
    """``sql`` as written: its colons (times, a PL/pgSQL body) are not bind parameters."""
    op.execute(sa.text(sql.replace(":", "\\:")))


def _money() -> sa.types.TypeEngine[Any]:
    # Sums: on PostgreSQL without a precision, which a sum of NUMERIC(28, 12) can outgrow.
    return sa.Numeric().with_variant(sa.BigInteger(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "usage_rollups",
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        *(sa.Column(name, _money(), nullable=False, server_default="0") for name in MONEY),
        *(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0") for name in TOKENS),
        sa.PrimaryKeyConstraint(*KEY, name="pk_usage_rollups"),
    )
    for scope in ("user_id", "team_id", "key_id"):
        op.create_index(f"ix_usage_rollups_{scope}_bucket", "usage_rollups", [scope, "bucket"])
    if op.get_bind().dialect.name == "postgresql":
        _postgres_triggers()
        bucket = _POSTGRES_BUCKET
    else:
        _sqlite_triggers()
        bucket = _SQLITE_BUCKET.format(t="usage_records")
    sums = ", ".join(f"COALESCE(SUM({name}), 0)" for name in (*MONEY, *TOKENS))
    _execute(
        f"INSERT INTO usage_rollups ({', '.join((*KEY, *MONEY, *TOKENS))})"
        f" SELECT {bucket}, user_id, COALESCE(team_id, 0), COALESCE(key_id, 0), {sums}"
        " FROM usage_records GROUP BY 1, 2, 3, 4"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for operation in ("insert", "update", "delete"):
            _execute(f"DROP TRIGGER usage_rollups_{operation} ON usage_records")
        _execute("DROP FUNCTION usage_rollups_apply()")
    else:
        for operation in ("insert", "update", "delete"):
            _execute(f"DROP TRIGGER usage_rollups_{operation}")
    op.drop_table("usage_rollups")


def _upsert(values: str) -> str:
    """An INSERT into usage_rollups adding ``values`` (a SELECT or VALUES giving the key,
    then every column's amount, negative to subtract) to what the row holds."""
    columns = (*MONEY, *TOKENS)
    return (
        f"INSERT INTO usage_rollups ({', '.join((*KEY, *columns))}) {values}"
        f" ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET "
        + ", ".join(f"{name} = usage_rollups.{name} + excluded.{name}" for name in columns)
    )


def _sqlite_triggers() -> None:
    def change(row: str, sign: str) -> str:
        amounts = ", ".join(f"{sign}COALESCE({row}.{name}, 0)" for name in (*MONEY, *TOKENS))
        bucket = _SQLITE_BUCKET.format(t=row)
        values = (
            f"VALUES ({bucket}, {row}.user_id, COALESCE({row}.team_id, 0),"
            f" COALESCE({row}.key_id, 0), {amounts})"
        )
        return _upsert(values) + ";"

    _execute(
        "CREATE TRIGGER usage_rollups_insert AFTER INSERT ON usage_records BEGIN "
        + change("NEW", "")
        + " END"
    )
    _execute(
        "CREATE TRIGGER usage_rollups_delete AFTER DELETE ON usage_records BEGIN "
        + change("OLD", "-")
        + " END"
    )
    _execute(
        "CREATE TRIGGER usage_rollups_update AFTER UPDATE ON usage_records BEGIN "
        + change("OLD", "-")
        + " "
        + change("NEW", "")
        + " END"
    )


def _postgres_triggers() -> None:
    def change(rows: str, sign: str) -> str:
        amounts = ", ".join(f"{sign}COALESCE(SUM({name}), 0)" for name in (*MONEY, *TOKENS))
        select = (
            f"SELECT {_POSTGRES_BUCKET}, user_id, COALESCE(team_id, 0), COALESCE(key_id, 0),"
            f" {amounts} FROM {rows} GROUP BY 1, 2, 3, 4"
            # one order for every writer: two transactions never wait on each other's rows
            " ORDER BY 1, 2, 3, 4"
        )
        return _upsert(select) + ";"

    _execute(
        "CREATE FUNCTION usage_rollups_apply() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF TG_OP IN ('UPDATE', 'DELETE') THEN "
        + change("old_rows", "-")
        + " END IF; IF TG_OP IN ('INSERT', 'UPDATE') THEN "
        + change("new_rows", "")
        + " END IF; RETURN NULL; END $$"
    )
    for operation, tables in (
        ("insert", "NEW TABLE AS new_rows"),
        ("update", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        ("delete", "OLD TABLE AS old_rows"),
    ):
        _execute(
            f"CREATE TRIGGER usage_rollups_{operation} AFTER {operation.upper()}"
            f" ON usage_records REFERENCING {tables}"
            " FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_apply()"
        )
