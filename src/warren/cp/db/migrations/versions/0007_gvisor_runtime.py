"""The gVisor tier (issue 16): a sandbox's runtime, the runtimes a host offers, paused-to-disk
state, memory snapshots.

A snapshot's kind (``templates.snapshot_kind``: 'filesystem' or 'memory') exists since 0001;
a memory snapshot is one a gVisor sandbox took with its processes' memory.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # What a host offers ('runc', 'crun', 'gvisor'), as it reported at registration and with its
    # last heartbeat. Hosts registered before they reported it run runc.
    op.add_column(
        "hosts",
        sa.Column(
            "runtimes",
            postgresql.ARRAY(sa.Text()),
            nullable=False,
            server_default=sa.text("'{runc}'::text[]"),
        ),
    )
    # The runtime a sandbox runs on, and how a paused one is paused: 'memory' (frozen in place)
    # or 'disk' (checkpointed, its memory freed); NULL unless paused.
    op.add_column(
        "sandboxes", sa.Column("runtime", sa.Text(), nullable=False, server_default=sa.text("'runc'"))
    )
    op.add_column("sandboxes", sa.Column("paused_state", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("sandboxes", "paused_state")
    op.drop_column("sandboxes", "runtime")
    op.drop_column("hosts", "runtimes")
