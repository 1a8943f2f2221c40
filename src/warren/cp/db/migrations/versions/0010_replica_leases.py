"""Operations (issue 18): control-plane replica leases, so the pending creates of a dead
replica settle in one monitor pass.

Each ``warren cp`` process (replica) holds a row in ``replica_leases`` and moves its
``expires_at`` ahead every few seconds (``services/replica_lease.py``); a clean shutdown deletes
it. A ``pending`` sandbox records the replica that is creating it (``sandboxes.replica_id``), so
the host monitor can tell a create whose replica is gone (its lease missing or expired: settle
it now) from one still under way (wait, as before).

``warren_reserve_sandbox`` gains an overload with the owner as an 18th argument. It calls the
17-argument function (migration 0003, or whatever replaced it since) and then writes the owner on
the row it inserted, in the same statement: every rule of the reservation stays in one place, and
replicas still running the previous code keep calling the 17-argument function during a rolling
upgrade (their rows have no owner and settle by the grace rule, as before).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.TIMESTAMP(timezone=True)

_RESERVE_OWNED = """
CREATE OR REPLACE FUNCTION warren_reserve_sandbox(
    p_id uuid, p_team uuid, p_host uuid, p_template text, p_vcpus int, p_memory_mb int,
    p_timeout_sec int, p_disk_size_mb int, p_internet bool, p_now timestamptz,
    p_template_id uuid, p_template_team uuid,
    p_quota_sandboxes int, p_quota_vcpus int, p_quota_memory_mb int,
    p_cpu_ratio float8, p_memory_ratio float8, p_replica uuid,
    OUT outcome text, OUT used_sandboxes bigint, OUT used_vcpus bigint, OUT used_memory_mb bigint
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    SELECT r.outcome, r.used_sandboxes, r.used_vcpus, r.used_memory_mb
        INTO outcome, used_sandboxes, used_vcpus, used_memory_mb
        FROM warren_reserve_sandbox(
            p_id, p_team, p_host, p_template, p_vcpus, p_memory_mb, p_timeout_sec, p_disk_size_mb,
            p_internet, p_now, p_template_id, p_template_team, p_quota_sandboxes, p_quota_vcpus,
            p_quota_memory_mb, p_cpu_ratio, p_memory_ratio) AS r;
    IF outcome = 'ok' AND p_replica IS NOT NULL THEN
        UPDATE sandboxes SET replica_id = p_replica WHERE id = p_id;
    END IF;
END
$$
"""

_DROP_OWNED = """
DROP FUNCTION IF EXISTS warren_reserve_sandbox(
    uuid, uuid, uuid, text, int, int, int, int, bool, timestamptz, uuid, uuid, int, int, int,
    float8, float8, uuid)
"""


def upgrade() -> None:
    op.create_table(
        "replica_leases",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("hostname", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("pid", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("started_at", TS, nullable=False, server_default=sa.text("now()")),
        sa.Column("expires_at", TS, nullable=False),
    )
    # No foreign key: a lease is deleted at shutdown (or purged once long expired) while its
    # replica's rows live on.
    op.add_column("sandboxes", sa.Column("replica_id", postgresql.UUID(as_uuid=True), nullable=True))
    op.execute(_RESERVE_OWNED)


def downgrade() -> None:
    op.execute(_DROP_OWNED)
    op.drop_column("sandboxes", "replica_id")
    op.drop_table("replica_leases")
