"""Owned resources; units billed other than by the token.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 00:00:00+00:00

- ``resources``: who owns each upstream resource (file, context cache, batch, video
  operation, ephemeral Live token) made through the proxy, so only they reach it, and
  the state its metering needs between calls (a cache's tokens and expiry).
- ``usage_records.resource``: the batch, cache, operation or Live session a line
  belongs to.
- ``usage_records.images``, ``video_seconds``, ``storage_token_seconds``: Imagen
  images, Veo seconds and cache storage (tokens x seconds, negative for a refund), with
  their charges ``cost_media_usd`` and ``cost_storage_usd``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _money() -> sa.types.TypeEngine[Any]:
    return sa.Numeric(28, 12).with_variant(sa.BigInteger(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=True),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "state", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name="fk_resources_key_id_api_keys"),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_resources_team_id_teams"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_resources_user_id_users"),
        sa.PrimaryKeyConstraint("kind", "name", name="pk_resources"),
    )
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("resource", sa.Text(), nullable=True))
        for column in ("images", "video_seconds", "storage_token_seconds"):
            batch.add_column(sa.Column(column, sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("cost_media_usd", _money(), nullable=True))
        batch.add_column(sa.Column("cost_storage_usd", _money(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        for column in (
            "cost_storage_usd",
            "cost_media_usd",
            "storage_token_seconds",
            "video_seconds",
            "images",
            "resource",
        ):
            batch.drop_column(column)
    op.drop_table("resources")
