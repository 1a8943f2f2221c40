"""interactive and networked sandboxes: preview-port access (a traffic token per sandbox, public
ports, auto-resume) and per-sandbox egress rules (issue 14).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Only its sha256 is kept: the token is shown at create, and a rotation shows a new one.
    op.add_column(
        "sandboxes", sa.Column("traffic_token_hash", sa.Text(), nullable=False, server_default=sa.text("''"))
    )
    op.add_column(
        "sandboxes",
        sa.Column(
            "public_ports",
            postgresql.ARRAY(sa.Integer()),
            nullable=False,
            server_default=sa.text("'{}'::int[]"),
        ),
    )
    op.add_column(
        "sandboxes", sa.Column("auto_resume", sa.Boolean(), nullable=False, server_default=sa.text("false"))
    )
    op.add_column(
        "sandboxes",
        sa.Column(
            "egress",
            postgresql.JSONB(),
            nullable=False,
            server_default=sa.text("""'{"allow_out": [], "deny_out": []}'::jsonb"""),
        ),
    )


def downgrade() -> None:
    for column in ("egress", "auto_resume", "public_ports", "traffic_token_hash"):
        op.drop_column("sandboxes", column)
