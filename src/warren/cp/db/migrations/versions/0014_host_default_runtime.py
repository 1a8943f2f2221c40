"""A host's default runtime (issue 17, session 13): what a create that names no runtime runs on.

The CP's ``WARREN_DEFAULT_RUNTIME`` is ``host`` unless set: a create without a runtime runs on the
default its chosen host's agent reports (crun where it works, else runc), at registration and
with each heartbeat. NULL: an agent that never said (older agents), taken to run runc.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("hosts", sa.Column("default_runtime", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("hosts", "default_runtime")
