"""Trustworthy metering: idempotent records, provisional and estimated usage, upload owners.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 00:00:00+00:00

- ``usage_records.request_id`` becomes unique: a batch whose COMMIT reply was lost
  and that is written again (from the writer's retry or the journal's replay) is
  skipped row by row instead of doubled.
- ``usage_records.provisional``: the usage of a streamed interaction cut before it
  was terminal; the terminal usage seen later replaces it (still one row).
- ``usage_records.estimated``: tokens counted by the proxy, not reported upstream.
- ``usage_records.unmetered_route``: a call on a route Google bills that the meter
  does not understand yet; recorded with zero tokens so totals never omit it.
- ``upload_sessions``: resumable uploads an authenticated principal started through
  the proxy; only their keyless byte legs are forwarded. The upload id is a
  credential, so only its keyed hash is stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FLAGS = ("provisional", "estimated", "unmetered_route")


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        for name in _FLAGS:
            batch.add_column(
                sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.false())
            )
    op.create_index("uq_usage_records_request_id", "usage_records", ["request_id"], unique=True)
    op.create_table(
        "upload_sessions",
        sa.Column("upload_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=True),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name="fk_upload_sessions_key_id_api_keys"
        ),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_upload_sessions_team_id_teams"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_upload_sessions_user_id_users"),
        sa.PrimaryKeyConstraint("upload_hash", name="pk_upload_sessions"),
    )
    op.create_index("ix_upload_sessions_expires_at", "upload_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_upload_sessions_expires_at", table_name="upload_sessions")
    op.drop_table("upload_sessions")
    op.drop_index("uq_usage_records_request_id", table_name="usage_records")
    with op.batch_alter_table("usage_records") as batch:
        for name in reversed(_FLAGS):
            batch.drop_column(name)
