"""Budgets and alerts; key expiry and last use.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 00:00:00+00:00

- ``budgets``: a spending cap on a scope (``user``, ``team``, ``key`` or ``global``), in USD
  or in tokens (optionally of one category), over a calendar window in an IANA time zone
  (or ``total``), with alert thresholds and a mode (``alert`` or ``enforce``). The webhook
  URL can hold a secret (Slack's do), so it is stored sealed under the server secret.
- ``budget_alerts``: the alert outbox. One row per (budget, window start, threshold),
  inserted before anything is sent, so a restart neither loses nor repeats an alert.
- ``api_keys.expires_at`` and ``api_keys.last_used_at``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _money() -> sa.types.TypeEngine[Any]:
    return sa.Numeric(28, 12).with_variant(sa.BigInteger(), "sqlite")


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope_kind", sa.Text(), nullable=False),
        sa.Column("scope_name", sa.Text(), nullable=True),
        sa.Column("limit_usd", _money(), nullable=True),
        sa.Column("limit_tokens", sa.BigInteger(), nullable=True),
        sa.Column("category", sa.Text(), nullable=True),
        sa.Column("window", sa.Text(), nullable=False),
        sa.Column("timezone", sa.Text(), nullable=False),
        sa.Column("thresholds", _json(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("webhook_sealed", sa.Text(), nullable=True),
        sa.Column("webhook_format", sa.Text(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_budgets"),
    )
    op.create_index("ix_budgets_scope", "budgets", ["scope_kind", "scope_name"])
    op.create_table(
        "budget_alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("budget_id", sa.Integer(), nullable=False),
        sa.Column("window_start", _timestamp(), nullable=False),
        sa.Column("threshold", sa.Text(), nullable=False),
        sa.Column("spend", sa.Text(), nullable=False),
        sa.Column("payload", _json(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", _timestamp(), nullable=True),
        sa.Column("sent_at", _timestamp(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["budget_id"],
            ["budgets.id"],
            name="fk_budget_alerts_budget_id_budgets",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_budget_alerts"),
        sa.UniqueConstraint("budget_id", "window_start", "threshold", name="uq_budget_alerts_once"),
    )
    op.create_index("ix_budget_alerts_sent_at", "budget_alerts", ["sent_at"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", _timestamp(), nullable=True))
        batch.add_column(sa.Column("last_used_at", _timestamp(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("expires_at")
    op.drop_index("ix_budget_alerts_sent_at", table_name="budget_alerts")
    op.drop_table("budget_alerts")
    op.drop_index("ix_budgets_scope", table_name="budgets")
    op.drop_table("budgets")
