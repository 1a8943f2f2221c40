"""Every ended sandbox says why it ended (session 30): ``sandboxes.end_reason``.

A nullable text column, set by the statement that moves the sandbox to ``stopped`` or
``error``, from the closed vocabulary of ``warren/cp/db/end_reasons.py``; NULL while active and
on rows that ended before this revision (nothing recorded why those ended).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: a catalog-only change, no table rewrite.
    op.add_column("sandboxes", sa.Column("end_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("sandboxes", "end_reason")
