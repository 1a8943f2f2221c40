"""Warm pools (issue 17): per-host pool targets and what each host reports ready.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # What the agent last reported with its heartbeat: [{"template", "target", "ready"}, …].
    # NULL: the host never reported pools (an older agent, or none yet).
    op.add_column("hosts", sa.Column("warm_pools", postgresql.JSONB(), nullable=True))
    # The sizes set through the API ({template: size}; 0 keeps a pool off). They outlive an
    # agent restart: the CP applies them again when the host reports other targets.
    op.add_column(
        "hosts",
        sa.Column(
            "warm_pool_targets", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
    )


def downgrade() -> None:
    op.drop_column("hosts", "warm_pool_targets")
    op.drop_column("hosts", "warm_pools")
