"""``users.email_verified_at`` (session 14): whether the account's holder proved they own its
email address. Accepting a team invitation requires it (services/team_invitations.py), so an
account registered on someone else's address gains nothing from the invitations sent to it.

Existing rows stay NULL (unverified) and no email is rewritten: an operator verifies older
accounts with ``warren admin user verify EMAIL`` (docs/operations.md).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("email_verified_at", postgresql.TIMESTAMP(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "email_verified_at")
