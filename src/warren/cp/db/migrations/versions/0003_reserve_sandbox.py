"""reserve a sandbox: the pending insert checks the team's quotas and the host's capacity.

One function, so a create stays one round trip while its check holds under concurrency. Plain
SQL cannot do it: a statement sees the rows committed before it started, so two creates that
both wait for the same row lock would each count the other's sandbox as absent. In a VOLATILE
PL/pgSQL function each statement takes a fresh snapshot, so once the team's and the host's row
locks are held, the sums below include every create that got there first.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Outcome: 'ok' (inserted), 'no_team', 'host_gone', 'quota_sandboxes', 'quota_vcpus',
# 'quota_memory_mb' or 'no_capacity'; plus the team's usage before this sandbox, for the message.
# Active = every sandbox not stopped or errored: pending, starting, running, paused (a paused
# sandbox keeps its memory on this runtime) and missing (its host is unreachable; it may be back).
# A host that reported no capacity (0) is not bounded on that resource.
_CREATE = """
CREATE FUNCTION warren_reserve_sandbox(
    p_id uuid, p_team uuid, p_host uuid, p_template text, p_vcpus int, p_memory_mb int,
    p_timeout_sec int, p_disk_size_mb int, p_internet bool, p_now timestamptz,
    p_template_id uuid, p_template_team uuid,
    p_quota_sandboxes int, p_quota_vcpus int, p_quota_memory_mb int,
    p_cpu_ratio float8, p_memory_ratio float8,
    OUT outcome text, OUT used_sandboxes bigint, OUT used_vcpus bigint, OUT used_memory_mb bigint
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    h record;
    host_vcpus bigint;
    host_memory_mb bigint;
BEGIN
    used_sandboxes := 0; used_vcpus := 0; used_memory_mb := 0;
    -- Team first, then host (one order everywhere). The team lock serialises the team's creates
    -- (a team delete takes it too); the host lock serialises the host's reservations.
    PERFORM 1 FROM teams WHERE id = p_team AND deleted_at IS NULL FOR NO KEY UPDATE;
    IF NOT FOUND THEN outcome := 'no_team'; RETURN; END IF;
    SELECT cpu_cores, memory_mb INTO h FROM hosts
        WHERE id = p_host AND status = 'online' FOR NO KEY UPDATE;
    IF NOT FOUND THEN outcome := 'host_gone'; RETURN; END IF;

    SELECT count(*), coalesce(sum(vcpus), 0), coalesce(sum(memory_mb), 0)
        INTO used_sandboxes, used_vcpus, used_memory_mb
        FROM sandboxes WHERE team_id = p_team AND status NOT IN ('stopped', 'error');
    IF used_sandboxes + 1 > p_quota_sandboxes THEN outcome := 'quota_sandboxes'; RETURN; END IF;
    IF used_vcpus + p_vcpus > p_quota_vcpus THEN outcome := 'quota_vcpus'; RETURN; END IF;
    IF used_memory_mb + p_memory_mb > p_quota_memory_mb THEN outcome := 'quota_memory_mb'; RETURN; END IF;

    SELECT coalesce(sum(vcpus), 0), coalesce(sum(memory_mb), 0) INTO host_vcpus, host_memory_mb
        FROM sandboxes WHERE host_id = p_host AND status NOT IN ('stopped', 'error');
    IF (h.cpu_cores > 0 AND host_vcpus + p_vcpus > h.cpu_cores * p_cpu_ratio)
       OR (h.memory_mb > 0 AND host_memory_mb + p_memory_mb > h.memory_mb * p_memory_ratio) THEN
        outcome := 'no_capacity'; RETURN;
    END IF;

    INSERT INTO sandboxes (id, team_id, host_id, template, status, vcpus, memory_mb, timeout_sec,
                           disk_size_mb, internet, created_at, last_updated, template_id,
                           template_team_id)
    VALUES (p_id, p_team, p_host, p_template, 'pending', p_vcpus, p_memory_mb, p_timeout_sec,
            p_disk_size_mb, p_internet, p_now, p_now, p_template_id, p_template_team);
    outcome := 'ok';
END
$$
"""

_DROP = """
DROP FUNCTION IF EXISTS warren_reserve_sandbox(
    uuid, uuid, uuid, text, int, int, int, int, bool, timestamptz, uuid, uuid, int, int, int,
    float8, float8)
"""


def upgrade() -> None:
    op.execute(_CREATE)


def downgrade() -> None:
    op.execute(_DROP)
