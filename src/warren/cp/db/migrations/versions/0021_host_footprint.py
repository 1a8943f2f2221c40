"""A host's memory counts each sandbox at its footprint (session 21), not at its bare limit.

A sandbox can hold host memory outside its memory cgroup's limit (``warren/footprint.py``):
a runc/crun sandbox its socket buffers up to the agent's socket ceiling (twice a sixteenth of
its memory, 32-512 MiB), a gVisor sandbox the 96 MiB headroom of its host cgroup. Counted at
their limits, the sandboxes of a host filled to its memory could together push it past its RAM.

``warren_sandbox_footprint(memory_mb, runtime)`` is ``footprint.footprint_mb`` in SQL (IMMUTABLE,
LANGUAGE sql: inlined into the sums; tests/unit/cp/hosts/test_footprint_sql.py checks the two
agree). ``warren_host_usage`` now sums footprints: a sandbox's at its ``runtime`` column, a
running build step's at its host's default runtime (the agent runs build steps on its default;
runc's rule when the host never said). ``warren_reserve_sandbox`` (its 0020 body) and
``warren_reserve_build`` check the new sandbox's or step's footprint. The host's active-rows
index gains ``runtime`` so the per-host sum stays an index-only scan. Team quotas are unchanged:
they bound what the tenant asked for (``memory_mb``).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from warren.cp.db.migrations.earlier import revision_module

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# footprint.footprint_mb: gVisor 96 MiB on top; any other runtime twice its socket bound, which
# is memory/16 between 16 and 256 MiB (memory_mb * 64 KiB is whole pages: no rounding), i.e.
# ceil(memory_mb / 8) between 32 and 512 MiB. Not STRICT (that would stop the inlining). In
# bigint: a size near int32's top (an operator's WARREN_MAX_SANDBOX_MEMORY_MB is unbounded)
# overflowed int ("integer out of range", a 500).
_FOOTPRINT = """
CREATE FUNCTION warren_sandbox_footprint(p_memory_mb int, p_runtime text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_memory_mb::bigint + CASE WHEN p_runtime = 'gvisor' THEN 96
                                      ELSE least(512, greatest(32, (p_memory_mb::bigint + 7) / 8)) END
$$
"""

# The build's runtime: its host's default (hosts.default_runtime; NULL or '': runc).
_BUILD_RUNTIME = "coalesce(nullif(h.default_runtime, ''), 'runc')"

_USAGE = f"""
CREATE OR REPLACE FUNCTION warren_host_usage(p_host uuid, OUT vcpus bigint, OUT memory_mb bigint)
RETURNS SETOF record LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(x.vcpus), 0)::bigint, coalesce(sum(x.memory_mb), 0)::bigint
    FROM (
        SELECT s.vcpus, warren_sandbox_footprint(s.memory_mb, s.runtime) AS memory_mb FROM sandboxes s
        WHERE s.host_id = p_host AND s.status NOT IN ('stopped', 'error')
        UNION ALL
        SELECT b.reserved_vcpus, warren_sandbox_footprint(b.reserved_memory_mb, {_BUILD_RUNTIME})
        FROM template_builds b JOIN hosts h ON h.id = b.reserved_host_id
        WHERE b.reserved_host_id = p_host AND b.status = 'running'
    ) x
$$
"""  # noqa: S608 - constants of this module, no input

# 0020's check, and the same with the new step's footprint at its host's default runtime.
_BUILD_HOST_0020 = "SELECT cpu_cores, memory_mb INTO h FROM hosts"
_BUILD_HOST = "SELECT cpu_cores, memory_mb, default_runtime INTO h FROM hosts"
_BUILD_FIT_0020 = "used.memory_mb + p_memory_mb > h.memory_mb * p_memory_ratio"
_BUILD_FIT = (
    f"used.memory_mb + warren_sandbox_footprint(p_memory_mb, {_BUILD_RUNTIME}) > h.memory_mb * p_memory_ratio"
)

# warren_reserve_sandbox's host check as 0011 wrote it (0020 kept it), and with the footprint.
_RESERVE_FIT_0011 = "host_memory_mb + p_memory_mb > h.memory_mb * p_memory_ratio"
_RESERVE_FIT = (
    "host_memory_mb + warren_sandbox_footprint(p_memory_mb, p_runtime) > h.memory_mb * p_memory_ratio"
)

_INDEX = "ix_sandboxes_active_host"
_ACTIVE = sa.text("status NOT IN ('stopped', 'error')")


def _bodies_0020() -> tuple[str, str, str]:
    """0020's warren_host_usage, warren_reserve_build and warren_reserve_sandbox, as
    CREATE OR REPLACE statements."""
    m = revision_module("0020_build_reservations")
    reserve = m._reserve_0011()
    assert m._HOST_SUM_0011 in reserve, "0011's host sum moved: update 0020 and this migration"
    reserve = reserve.replace(m._HOST_SUM_0011, m._HOST_SUM)

    def replace(sql: str) -> str:
        return str(sql).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)

    return replace(m._USAGE), replace(m._RESERVE_BUILD), reserve


def _swap(body: str, old: str, new: str) -> str:
    assert body.count(old) == 1, f"expected one {old!r} in the earlier body: update this migration"
    return body.replace(old, new)


def _active_host_index(summed: list[str]) -> None:
    op.drop_index(_INDEX, table_name="sandboxes")
    op.create_index(_INDEX, "sandboxes", ["host_id"], postgresql_where=_ACTIVE, postgresql_include=summed)


def upgrade() -> None:
    _, build, reserve = _bodies_0020()
    op.execute(_FOOTPRINT)
    op.execute(_USAGE)
    op.execute(_swap(_swap(build, _BUILD_HOST_0020, _BUILD_HOST), _BUILD_FIT_0020, _BUILD_FIT))
    op.execute(_swap(reserve, _RESERVE_FIT_0011, _RESERVE_FIT))
    _active_host_index(["vcpus", "memory_mb", "runtime"])


def downgrade() -> None:
    usage, build, reserve = _bodies_0020()
    _active_host_index(["vcpus", "memory_mb"])
    op.execute(reserve)
    op.execute(build)
    op.execute(usage)
    op.execute("DROP FUNCTION IF EXISTS warren_sandbox_footprint(int, text)")
