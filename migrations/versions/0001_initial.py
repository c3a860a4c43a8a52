"""Initial schema: teams, users, api_keys, interactions, usage_records.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00+00:00

Self-contained on purpose (no imports from ``proxy``): a migration describes
the schema as it was at this revision, whatever the models say later. The
portable column types are spelled out as variants of what ``proxy.storage.schema`` uses:

- money: NUMERIC(28, 12) on PostgreSQL, BIGINT count of 1e-12 USD on SQLite;
- timestamps: timestamptz on PostgreSQL, UTC text on SQLite;
- JSON: jsonb on PostgreSQL;
- usage_records.id: BIGSERIAL on PostgreSQL, INTEGER PRIMARY KEY on SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
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
        "teams",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_teams"),
        sa.UniqueConstraint("name", name="uq_teams_name"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_users_team_id_teams"),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("revoked_at", _timestamp(), nullable=True),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_api_keys_team_id_teams"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_api_keys_user_id_users"),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_table(
        "interactions",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=True),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name="fk_interactions_key_id_api_keys"
        ),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_interactions_team_id_teams"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_interactions_user_id_users"),
        sa.PrimaryKeyConstraint("id", name="pk_interactions"),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=True),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("streamed", sa.Boolean(), nullable=False),
        sa.Column("upstream_status", sa.Integer(), nullable=False),
        sa.Column("latency_seconds", sa.Double(), nullable=False),
        sa.Column("ttfb_seconds", sa.Double(), nullable=True),
        sa.Column("interaction_id", sa.Text(), nullable=True),
        sa.Column("response_id", sa.Text(), nullable=True),
        sa.Column("previous_interaction_id", sa.Text(), nullable=True),
        sa.Column("requested_service_tier", sa.Text(), nullable=True),
        sa.Column("effective_service_tier", sa.Text(), nullable=True),
        sa.Column("labels", _json(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("intermediate_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("thinking_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_mismatch", sa.Boolean(), nullable=False),
        sa.Column("modalities", _json(), nullable=False),
        sa.Column("grounding", _json(), nullable=False),
        sa.Column("code_execution_calls", sa.Integer(), nullable=False),
        sa.Column("code_execution_errors", sa.Integer(), nullable=False),
        sa.Column("parse_error", sa.Boolean(), nullable=False),
        sa.Column("client_disconnected", sa.Boolean(), nullable=False),
        sa.Column("cost_usd", _money(), nullable=True),
        sa.Column("cost_input_usd", _money(), nullable=True),
        sa.Column("cost_cached_usd", _money(), nullable=True),
        sa.Column("cost_intermediate_usd", _money(), nullable=True),
        sa.Column("cost_output_usd", _money(), nullable=True),
        sa.Column("cost_thinking_usd", _money(), nullable=True),
        sa.Column("cost_grounding_usd", _money(), nullable=True),
        sa.Column("catalog_version", sa.Text(), nullable=True),
        sa.Column("unpriced", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name="fk_usage_records_key_id_api_keys"
        ),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_usage_records_team_id_teams"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_usage_records_user_id_users"),
        sa.PrimaryKeyConstraint("id", name="pk_usage_records"),
        sa.UniqueConstraint("interaction_id", name="uq_usage_records_interaction_id"),
    )
    op.create_index("ix_usage_records_created_at", "usage_records", ["created_at"])
    op.create_index("ix_usage_records_model_created_at", "usage_records", ["model", "created_at"])
    op.create_index(
        "ix_usage_records_team_id_created_at", "usage_records", ["team_id", "created_at"]
    )
    op.create_index(
        "ix_usage_records_user_id_created_at", "usage_records", ["user_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_usage_records_user_id_created_at", table_name="usage_records")
    op.drop_index("ix_usage_records_team_id_created_at", table_name="usage_records")
    op.drop_index("ix_usage_records_model_created_at", table_name="usage_records")
    op.drop_index("ix_usage_records_created_at", table_name="usage_records")
    op.drop_table("usage_records")
    op.drop_table("interactions")
    op.drop_table("api_keys")
    op.drop_table("users")
    op.drop_table("teams")
