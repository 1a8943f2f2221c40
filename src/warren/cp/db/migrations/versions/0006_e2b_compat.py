"""E2B compatibility (issue 15, docs/e2b.md §2): sandbox metadata, an absolute lifetime and what
happens when it ends.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Free-form string pairs a client attaches at create and filters the list by.
    op.add_column(
        "sandboxes",
        sa.Column("metadata", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    # An absolute lifetime (E2B's `timeout`): at `end_at` the sandbox is killed, or paused when
    # `on_end` is 'pause'. NULL: no lifetime (Warren's inactivity `timeout_sec` applies).
    op.add_column("sandboxes", sa.Column("end_at", sa.TIMESTAMP(timezone=True), nullable=True))
    op.add_column(
        "sandboxes", sa.Column("on_end", sa.Text(), nullable=False, server_default=sa.text("'kill'"))
    )
    # Every port of the sandbox reachable without its traffic token (E2B's default,
    # allowPublicTraffic); Warren's own API opens ports one by one (public_ports).
    op.add_column(
        "sandboxes",
        sa.Column("all_ports_public", sa.Boolean(), nullable=False, server_default=sa.text("false")),
    )
    # The sweeper reads only live sandboxes with a lifetime, oldest end first.
    op.create_index(
        "ix_sandboxes_end_at",
        "sandboxes",
        ["end_at"],
        postgresql_where=sa.text("end_at IS NOT NULL AND status IN ('running', 'paused')"),
    )


def downgrade() -> None:
    op.drop_index("ix_sandboxes_end_at", table_name="sandboxes")
    for column in ("all_ports_public", "on_end", "end_at", "metadata"):
        op.drop_column("sandboxes", column)
