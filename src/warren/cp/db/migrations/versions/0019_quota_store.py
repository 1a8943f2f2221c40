"""``teams.quota_store_mb`` (session 15): the team's own bound on what its layers hold of the
template store (services/team_store.py). Until now the store cap was twice the snapshot storage
quota, so a team whose snapshot quota was 0 could build nothing either.

NULL means the platform default (``WARREN_QUOTA_STORE_MB``, 40960: twice the snapshot default,
the bound such a team had). Where an admin had set a snapshot quota above 0 (a team's, or the
platform default in ``platform_limits``) the store bound it implied is kept: twice that. A
snapshot quota of 0 implied a store bound of 0, which is the defect this fixes: those teams get
the default and may build again (an operator who meant to stop their builds sets ``store_mb``).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("teams", sa.Column("quota_store_mb", sa.Integer(), nullable=True))
    # The bound an admin-set snapshot quota implied (STORE_FACTOR was 2), within int32 as the
    # admin API keeps every quota.
    op.execute(
        "UPDATE teams SET quota_store_mb = LEAST(2::bigint * quota_snapshot_mb, 2147483647) "
        "WHERE quota_snapshot_mb > 0"
    )
    op.execute(
        "INSERT INTO platform_limits (key, value) "
        "SELECT 'quota_store_mb', LEAST(2 * value, 2147483647) FROM platform_limits "
        "WHERE key = 'quota_snapshot_mb' AND value > 0 ON CONFLICT (key) DO NOTHING"
    )


def downgrade() -> None:
    op.execute("DELETE FROM platform_limits WHERE key = 'quota_store_mb'")
    op.drop_column("teams", "quota_store_mb")
