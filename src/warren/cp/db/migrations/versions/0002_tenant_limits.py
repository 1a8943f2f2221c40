"""tenant limits: per-team quotas and egress ranges, platform limits, abuse rate limits.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_QUOTA_COLUMNS = ("quota_sandboxes", "quota_vcpus", "quota_memory_mb", "quota_snapshots", "quota_snapshot_mb")


def upgrade() -> None:
    for name in _QUOTA_COLUMNS:
        op.add_column("teams", sa.Column(name, sa.Integer(), nullable=True))
    op.add_column(
        "teams",
        sa.Column(
            "egress_allow",
            postgresql.ARRAY(sa.Text()),
            nullable=False,
            server_default=sa.text("'{}'::text[]"),
        ),
    )
    op.create_table(
        "platform_limits",
        sa.Column("key", sa.Text(), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_table(
        "rate_limits",
        sa.Column("key", sa.Text(), primary_key=True),
        sa.Column("window_start", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_limits")
    op.drop_table("platform_limits")
    op.drop_column("teams", "egress_allow")
    for name in reversed(_QUOTA_COLUMNS):
        op.drop_column("teams", name)
