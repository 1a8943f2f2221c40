"""The pending row in one insert (issue 17, a cheaper create): ``warren_reserve_sandbox`` with
the sandbox's runtime and egress rules.

A create used to write its pending row in up to three statements: the reservation (migration
0003, then 0010's overload updating the row again with its replica), then the runtime and the
egress rules, each an UPDATE of their own. The 20-argument function below inserts the row with
its replica and runtime at once (its egress rules, rare, by an UPDATE in the same call), and now
holds the reservation's rules: the 17- and 18-argument functions become wrappers around it, so
replicas still running older code keep working during a rolling upgrade and every rule stays in
one place. The checks are 0003's, unchanged (its docstring says why this must be PL/pgSQL).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from warren.cp.db.migrations.earlier import revision_module

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Outcomes and usage as in 0003: 'ok' (inserted), 'no_team', 'host_gone', 'quota_sandboxes',
# 'quota_vcpus', 'quota_memory_mb' or 'no_capacity'; plus the team's usage before this sandbox.
_RESERVE = """
CREATE FUNCTION warren_reserve_sandbox(
    p_id uuid, p_team uuid, p_host uuid, p_template text, p_vcpus int, p_memory_mb int,
    p_timeout_sec int, p_disk_size_mb int, p_internet bool, p_now timestamptz,
    p_template_id uuid, p_template_team uuid,
    p_quota_sandboxes int, p_quota_vcpus int, p_quota_memory_mb int,
    p_cpu_ratio float8, p_memory_ratio float8, p_replica uuid, p_runtime text, p_egress jsonb,
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
                           template_team_id, replica_id, runtime)
    VALUES (p_id, p_team, p_host, p_template, 'pending', p_vcpus, p_memory_mb, p_timeout_sec,
            p_disk_size_mb, p_internet, p_now, p_now, p_template_id, p_template_team, p_replica,
            p_runtime);
    -- Rules are rare on a create; without them the column keeps its default.
    IF p_egress IS NOT NULL THEN
        UPDATE sandboxes SET egress = p_egress WHERE id = p_id;
    END IF;
    outcome := 'ok';
END
$$
"""

# The older signatures, as wrappers: the runtime they never wrote is the column's default.
_WRAPPER_0010 = """
CREATE OR REPLACE FUNCTION warren_reserve_sandbox(
    p_id uuid, p_team uuid, p_host uuid, p_template text, p_vcpus int, p_memory_mb int,
    p_timeout_sec int, p_disk_size_mb int, p_internet bool, p_now timestamptz,
    p_template_id uuid, p_template_team uuid,
    p_quota_sandboxes int, p_quota_vcpus int, p_quota_memory_mb int,
    p_cpu_ratio float8, p_memory_ratio float8, p_replica uuid,
    OUT outcome text, OUT used_sandboxes bigint, OUT used_vcpus bigint, OUT used_memory_mb bigint
) LANGUAGE sql VOLATILE AS $$
    SELECT * FROM warren_reserve_sandbox(
        p_id, p_team, p_host, p_template, p_vcpus, p_memory_mb, p_timeout_sec, p_disk_size_mb,
        p_internet, p_now, p_template_id, p_template_team, p_quota_sandboxes, p_quota_vcpus,
        p_quota_memory_mb, p_cpu_ratio, p_memory_ratio, p_replica, 'runc', NULL::jsonb)
$$
"""
_WRAPPER_0003 = """
CREATE OR REPLACE FUNCTION warren_reserve_sandbox(
    p_id uuid, p_team uuid, p_host uuid, p_template text, p_vcpus int, p_memory_mb int,
    p_timeout_sec int, p_disk_size_mb int, p_internet bool, p_now timestamptz,
    p_template_id uuid, p_template_team uuid,
    p_quota_sandboxes int, p_quota_vcpus int, p_quota_memory_mb int,
    p_cpu_ratio float8, p_memory_ratio float8,
    OUT outcome text, OUT used_sandboxes bigint, OUT used_vcpus bigint, OUT used_memory_mb bigint
) LANGUAGE sql VOLATILE AS $$
    SELECT * FROM warren_reserve_sandbox(
        p_id, p_team, p_host, p_template, p_vcpus, p_memory_mb, p_timeout_sec, p_disk_size_mb,
        p_internet, p_now, p_template_id, p_template_team, p_quota_sandboxes, p_quota_vcpus,
        p_quota_memory_mb, p_cpu_ratio, p_memory_ratio, NULL::uuid, 'runc', NULL::jsonb)
$$
"""

_DROP = """
DROP FUNCTION IF EXISTS warren_reserve_sandbox(
    uuid, uuid, uuid, text, int, int, int, int, bool, timestamptz, uuid, uuid, int, int, int,
    float8, float8, uuid, text, jsonb)
"""


def upgrade() -> None:
    op.execute(_RESERVE)
    op.execute(_WRAPPER_0010)
    op.execute(_WRAPPER_0003)


def downgrade() -> None:
    # 0003's text is a plain CREATE: the wrappers are dropped and the earlier bodies (0003's,
    # then 0010's overload calling it) created again.
    op.execute(_DROP.replace("uuid, text, jsonb)", "uuid)"))
    op.execute(_DROP.replace(", uuid, text, jsonb)", ")"))
    op.execute(revision_module("0003_reserve_sandbox")._CREATE)
    op.execute(revision_module("0010_replica_leases")._RESERVE_OWNED)
    op.execute(_DROP)
