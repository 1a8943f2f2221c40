"""Team invitations (session 13): a user joins a team only by accepting an invitation.

Until now ``POST /v1/teams/{id}/members`` made any registered user a member at once, asking
them nothing. It now records a pending invitation here, which the invitee accepts or declines
(services/team_invitations.py, docs/auth.md "Invitations"). One row per (team, invitee); rows
past ``expires_at`` are dead and deleted by the team's next invite.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = postgresql.TIMESTAMP(timezone=True)
_UUID = postgresql.UUID(as_uuid=True)


def upgrade() -> None:
    op.create_table(
        "team_invitations",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("team_id", _UUID, nullable=False),
        sa.Column("user_id", _UUID, nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("invited_by", _UUID, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.Column("expires_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_team_invitations"),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_team_invitations_team_id_teams"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_team_invitations_user_id_users"),
        sa.ForeignKeyConstraint(["invited_by"], ["users.id"], name="fk_team_invitations_invited_by_users"),
        sa.UniqueConstraint("team_id", "user_id", name="uq_team_invitations_team_id"),
    )
    op.create_index("ix_team_invitations_user_id", "team_invitations", ["user_id"])


def downgrade() -> None:
    op.drop_table("team_invitations")
