"""The lifetime sweeper's index holds running sandboxes only (session 31).

``ix_sandboxes_end_at`` covered running and paused rows. Only the sweeper reads it, for running
rows whose ``end_at`` has passed; a sandbox it paused (``on_end = 'pause'``) keeps its past
``end_at``, so every pass of every replica walked past all of them: with 5000 such rows the claim
read ~5000 buffers a second instead of a handful. A missing sandbox's branch of the claim reads
``ix_sandboxes_status``.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _end_at_index(statuses: str) -> None:
    op.drop_index("ix_sandboxes_end_at", table_name="sandboxes")
    op.create_index(
        "ix_sandboxes_end_at",
        "sandboxes",
        ["end_at"],
        postgresql_where=sa.text(f"end_at IS NOT NULL AND status IN ({statuses})"),
    )


def upgrade() -> None:
    _end_at_index("'running'")


def downgrade() -> None:
    _end_at_index("'running', 'paused'")
