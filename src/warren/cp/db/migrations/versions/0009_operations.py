"""Operations (issue 18): host disk state and per-team egress usage.

* ``hosts.disk_free_bytes``: the free space of the host's data directory, as its agent last
  reported it with a heartbeat (0: it cannot write there); NULL until an agent reports it. The
  scheduler skips a host below ``WARREN_HOST_MIN_FREE_DISK_MB``.
* ``sandboxes.egress_bytes``: the bytes the sandbox sent out through its host (docs/operations.md,
  "Metrics"), accumulated from the agent's counter by the host monitor; ``egress_counter`` is
  that counter's last reading, so each pass adds only what is new, and a counter that started
  over is noticed (its reading went down) instead of counted twice.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("hosts", sa.Column("disk_free_bytes", sa.BigInteger(), nullable=True))
    for column in ("egress_bytes", "egress_counter"):
        op.add_column(
            "sandboxes", sa.Column(column, sa.BigInteger(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    op.drop_column("sandboxes", "egress_counter")
    op.drop_column("sandboxes", "egress_bytes")
    op.drop_column("hosts", "disk_free_bytes")
