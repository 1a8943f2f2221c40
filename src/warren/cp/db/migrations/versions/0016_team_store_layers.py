"""A team's layers in the template store (session 14): what its snapshots, builds and imports
wrote, counted until the layer collector removes them.

The snapshot size quota counted live snapshots only, a layer leaves the store an hour or more
after the last thing naming it went (``WARREN_LAYER_GC_GRACE_S``), and a build's step layers
stay in the team's build cache for 7 days: snapshot/delete and build/delete loops filled the
store far past any quota. Each row is a layer a team wrote (or, with no digest yet, the room a
snapshot export in flight holds); it counts while the layer is in the ``layers`` index
(services/team_store.py).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = postgresql.TIMESTAMP(timezone=True)
_UUID = postgresql.UUID(as_uuid=True)


def upgrade() -> None:
    op.create_table(
        "team_store_layers",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("team_id", _UUID, nullable=False),
        sa.Column("digest", sa.Text(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("written_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("id", name="pk_team_store_layers"),
        sa.UniqueConstraint("team_id", "digest", name="uq_team_store_layers_team_id"),
    )


def downgrade() -> None:
    op.drop_table("team_store_layers")
