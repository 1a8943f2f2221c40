"""Build steps reserve room on their host (session 15): a template build's transient sandbox
(``WARREN_BUILD_VCPUS`` / ``WARREN_BUILD_MEMORY_MB``, up to the build's time limit) was in no
host's capacity, so builds could fill a host the scheduler still placed creates on.

``template_builds`` gains the reservation of the step running now: ``reserved_host_id`` (NULL
between steps), ``reserved_vcpus``, ``reserved_memory_mb``. A reservation counts only while its
build is ``running``: a build that ends, fails, or is failed by the stale-heartbeat sweep (its
replica died mid-step) releases it with its status.

One rule for what a host has promised, ``warren_host_usage(host)``: its active sandboxes plus
its running builds' reservations. The scheduler's candidate list (``queries.hosts.candidates``,
an inlined SQL function), ``warren_reserve_sandbox`` and the new ``warren_reserve_build`` (the
step's reservation under the host's row lock, the same fit check) all read it.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from warren.cp.db.migrations.earlier import revision_module

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# LANGUAGE sql, STABLE, one SELECT, not STRICT: PostgreSQL inlines it into the candidates'
# LATERAL join, so the hot path keeps its index-only sums.
_USAGE = """
CREATE FUNCTION warren_host_usage(p_host uuid, OUT vcpus bigint, OUT memory_mb bigint)
RETURNS SETOF record LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(x.vcpus), 0)::bigint, coalesce(sum(x.memory_mb), 0)::bigint
    FROM (
        SELECT s.vcpus, s.memory_mb FROM sandboxes s
        WHERE s.host_id = p_host AND s.status NOT IN ('stopped', 'error')
        UNION ALL
        SELECT b.reserved_vcpus, b.reserved_memory_mb FROM template_builds b
        WHERE b.reserved_host_id = p_host AND b.status = 'running'
    ) x
$$
"""

# 'ok', 'host_gone' (not online), 'no_capacity', or 'no_build' (no longer running).
_RESERVE_BUILD = """
CREATE FUNCTION warren_reserve_build(
    p_build uuid, p_host uuid, p_vcpus int, p_memory_mb int, p_cpu_ratio float8, p_memory_ratio float8
) RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    h record;
    used record;
BEGIN
    -- The host's row lock serialises its reservations with warren_reserve_sandbox's.
    SELECT cpu_cores, memory_mb INTO h FROM hosts
        WHERE id = p_host AND status = 'online' FOR NO KEY UPDATE;
    IF NOT FOUND THEN RETURN 'host_gone'; END IF;
    -- The build's own earlier step does not count against this one.
    UPDATE template_builds SET reserved_host_id = NULL WHERE id = p_build AND reserved_host_id IS NOT NULL;
    SELECT u.vcpus, u.memory_mb INTO used FROM warren_host_usage(p_host) u;
    IF (h.cpu_cores > 0 AND used.vcpus + p_vcpus > h.cpu_cores * p_cpu_ratio)
       OR (h.memory_mb > 0 AND used.memory_mb + p_memory_mb > h.memory_mb * p_memory_ratio) THEN
        RETURN 'no_capacity';
    END IF;
    UPDATE template_builds
        SET reserved_host_id = p_host, reserved_vcpus = p_vcpus, reserved_memory_mb = p_memory_mb
        WHERE id = p_build AND status = 'running';
    IF NOT FOUND THEN RETURN 'no_build'; END IF;
    RETURN 'ok';
END
$$
"""

_ACTIVE_BUILDS = sa.text("status = 'running'")
_SUMMED = ["reserved_vcpus", "reserved_memory_mb"]


def _reserve_0011() -> str:
    return str(revision_module("0011_reserve_in_one")._RESERVE).replace(
        "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1
    )


# 0011's host sum, as written there, and what replaces it.
_HOST_SUM_0011 = (
    "    SELECT coalesce(sum(vcpus), 0), coalesce(sum(memory_mb), 0) INTO host_vcpus, host_memory_mb\n"
    "        FROM sandboxes WHERE host_id = p_host AND status NOT IN ('stopped', 'error');"
)
_HOST_SUM = (
    "    SELECT u.vcpus, u.memory_mb INTO host_vcpus, host_memory_mb\n"
    "        FROM warren_host_usage(p_host) u;"
)


def upgrade() -> None:
    op.add_column("template_builds", sa.Column("reserved_host_id", sa.UUID(as_uuid=True), nullable=True))
    op.add_column(
        "template_builds",
        sa.Column("reserved_vcpus", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.add_column(
        "template_builds",
        sa.Column("reserved_memory_mb", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.create_index(
        "ix_template_builds_reserved",
        "template_builds",
        ["reserved_host_id"],
        postgresql_where=_ACTIVE_BUILDS,
        postgresql_include=_SUMMED,
    )
    op.execute(_USAGE)
    op.execute(_RESERVE_BUILD)
    body = _reserve_0011()
    assert _HOST_SUM_0011 in body, "0011's host sum moved: update this migration's replacement"
    op.execute(body.replace(_HOST_SUM_0011, _HOST_SUM))


def downgrade() -> None:
    op.execute(_reserve_0011())
    op.execute("DROP FUNCTION IF EXISTS warren_reserve_build(uuid, uuid, int, int, float8, float8)")
    op.execute("DROP FUNCTION IF EXISTS warren_host_usage(uuid)")
    op.drop_index("ix_template_builds_reserved", table_name="template_builds")
    for column in ("reserved_memory_mb", "reserved_vcpus", "reserved_host_id"):
        op.drop_column("template_builds", column)
