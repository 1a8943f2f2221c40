"""Retention (``services/retention.py``, docs/operations.md "Retention"): ended sandbox rows and
audit records are deleted once older than their windows.

- ``ix_sandboxes_ended``: the ended rows (``stopped``, ``error``) by ``last_updated``, so a
  retention batch finds its oldest rows without reading the table;
- ``ix_audit_logs_created_at``: audit records by (time, id) across teams, the order a pass walks
  them in (the team index leads with the team and cannot serve ``created_at < cutoff`` alone);
- ``team_usage_retired``: per team, the usage of its deleted sandbox rows (the same sums the
  ``warren_team_*`` counters read from the rows), so a counter never goes down when rows go.

Plain ``CREATE INDEX`` inside the one migration transaction (env.py): writes to the two tables
wait while the indexes build, seconds for millions of rows.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.TIMESTAMP(timezone=True)
_ENDED = sa.text("status IN ('stopped', 'error')")


def upgrade() -> None:
    op.create_index("ix_sandboxes_ended", "sandboxes", ["last_updated"], postgresql_where=_ENDED)
    op.create_index("ix_audit_logs_created_at", "audit_logs", ["created_at", "id"])
    op.create_table(
        "team_usage_retired",
        sa.Column("team_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("sandboxes", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("secs", sa.Numeric(), nullable=False, server_default=sa.text("0")),
        sa.Column("vcpu_secs", sa.Numeric(), nullable=False, server_default=sa.text("0")),
        sa.Column("mem_secs", sa.Numeric(), nullable=False, server_default=sa.text("0")),
        sa.Column("egress", sa.Numeric(), nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("team_id", name="pk_team_usage_retired"),
    )


def downgrade() -> None:
    op.drop_table("team_usage_retired")
    op.drop_index("ix_audit_logs_created_at", table_name="audit_logs")
    op.drop_index("ix_sandboxes_ended", table_name="sandboxes")
