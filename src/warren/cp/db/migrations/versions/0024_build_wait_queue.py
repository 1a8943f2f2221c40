"""Builds waiting for a host's room take it in turn (session 38).

A build step finding no room polled until its wait ran out, and ``warren_reserve_build`` had no
order between builds: a team resubmitting the moment each build ended took the host's room every
time it was freed, and another team's build failed ``no_capacity`` after its whole wait.

``template_builds`` gains its step's wait: ``wait_since`` (when the step first found no room),
``wait_seen_at`` (its last try: a wait not renewed for 15 s is dropped, so a dead replica's
waiting build holds no turn), and ``wait_host_id`` (the host it waits for: its build host once
its first step ran there; NULL before, any host of its team's pool). While waiting,
``reserved_vcpus`` / ``reserved_memory_mb`` say what the step needs (``reserved_host_id`` stays
NULL, so nothing is counted in a host's usage).

``warren_builds_ahead(build, host)``: the waiting builds that go before ``build`` on ``host``,
and what they need. Each waiting build's turn is its wait's start, or its team's last room
taken (``reserved_at``, kept after the build ends) if later, then its wait's start: a team that
just took a room goes behind every build that was waiting then, so a team with many builds
waiting takes one room in each round, not all of them. A build not waiting yet counts as the
newest. ``warren_reserve_build`` now fits the step beside the host's usage *and* what the
builds ahead of it need: a newcomer (or a build's next step) finding room that an older waiter
needs gets ``no_capacity`` and waits its turn.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from warren.cp.db.migrations.earlier import revision_module

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WAITING = sa.text("status = 'running' AND wait_since IS NOT NULL")

_AHEAD = """
CREATE FUNCTION warren_builds_ahead(
    p_build uuid, p_host uuid, OUT builds bigint, OUT vcpus bigint, OUT memory_mb bigint
) RETURNS SETOF record LANGUAGE sql STABLE AS $$
    WITH host AS (
        SELECT type, team_id, coalesce(nullif(default_runtime, ''), 'runc') AS runtime
        FROM hosts WHERE id = p_host
    ), waiting AS (
        SELECT b.id, b.wait_since, b.reserved_vcpus, b.reserved_memory_mb,
               greatest(b.wait_since, (SELECT max(g.reserved_at) FROM template_builds g
                                       WHERE g.team_id = b.team_id)) AS turn_at
        FROM template_builds b JOIN teams t ON t.id = b.team_id, host
        WHERE b.status = 'running' AND b.reserved_host_id IS NULL AND b.wait_since IS NOT NULL
          AND b.wait_seen_at > now() - interval '15 seconds'
          AND (b.wait_host_id = p_host OR (b.wait_host_id IS NULL AND CASE
                 WHEN t.is_byoc THEN host.type = 'byoc' AND host.team_id = b.team_id
                 ELSE host.type = 'regular' END))
    ), me AS (
        SELECT coalesce(w.turn_at, now()) AS turn_at, coalesce(w.wait_since, now()) AS since
        FROM (SELECT p_build AS id) b LEFT JOIN waiting w ON w.id = b.id
    )
    SELECT count(*), coalesce(sum(w.reserved_vcpus), 0)::bigint,
           coalesce(sum(warren_sandbox_footprint(w.reserved_memory_mb, host.runtime)), 0)::bigint
    FROM waiting w, me, host
    WHERE w.id <> p_build AND (w.turn_at, w.wait_since, w.id) < (me.turn_at, me.since, p_build)
$$
"""

# 'ok', 'host_gone' (not online), 'no_capacity' (no room beside the builds ahead), or 'no_build'
# (no longer running).
_RESERVE_BUILD = """
CREATE OR REPLACE FUNCTION warren_reserve_build(
    p_build uuid, p_host uuid, p_vcpus int, p_memory_mb int, p_cpu_ratio float8, p_memory_ratio float8
) RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    h record;
    used record;
    ahead record;
BEGIN
    -- The host's row lock serialises its reservations with warren_reserve_sandbox's.
    SELECT cpu_cores, memory_mb, default_runtime INTO h FROM hosts
        WHERE id = p_host AND status = 'online' FOR NO KEY UPDATE;
    IF NOT FOUND THEN RETURN 'host_gone'; END IF;
    -- The build's own earlier step does not count against this one.
    UPDATE template_builds SET reserved_host_id = NULL WHERE id = p_build AND reserved_host_id IS NOT NULL;
    SELECT u.vcpus, u.memory_mb INTO used FROM warren_host_usage(p_host) u;
    SELECT a.vcpus, a.memory_mb INTO ahead FROM warren_builds_ahead(p_build, p_host) a;
    IF (h.cpu_cores > 0 AND used.vcpus + ahead.vcpus + p_vcpus > h.cpu_cores * p_cpu_ratio)
       OR (h.memory_mb > 0 AND used.memory_mb + ahead.memory_mb
           + warren_sandbox_footprint(p_memory_mb, coalesce(nullif(h.default_runtime, ''), 'runc'))
           > h.memory_mb * p_memory_ratio) THEN
        RETURN 'no_capacity';
    END IF;
    UPDATE template_builds
        SET reserved_host_id = p_host, reserved_vcpus = p_vcpus, reserved_memory_mb = p_memory_mb,
            reserved_at = now(), wait_since = NULL, wait_seen_at = NULL, wait_host_id = NULL
        WHERE id = p_build AND status = 'running';
    IF NOT FOUND THEN RETURN 'no_build'; END IF;
    RETURN 'ok';
END
$$
"""


def _reserve_build_0021() -> str:
    """warren_reserve_build as 0021 left it (0020's body with 0021's two swaps)."""
    m = revision_module("0021_host_footprint")
    _, build, _ = m._bodies_0020()
    return str(m._swap(m._swap(build, m._BUILD_HOST_0020, m._BUILD_HOST), m._BUILD_FIT_0020, m._BUILD_FIT))


def upgrade() -> None:
    op.add_column("template_builds", sa.Column("reserved_at", sa.TIMESTAMP(timezone=True), nullable=True))
    op.add_column("template_builds", sa.Column("wait_since", sa.TIMESTAMP(timezone=True), nullable=True))
    op.add_column("template_builds", sa.Column("wait_seen_at", sa.TIMESTAMP(timezone=True), nullable=True))
    op.add_column("template_builds", sa.Column("wait_host_id", sa.UUID(as_uuid=True), nullable=True))
    op.create_index(
        "ix_template_builds_waiting", "template_builds", ["wait_since"], postgresql_where=_WAITING
    )
    op.create_index("ix_template_builds_team_reserved_at", "template_builds", ["team_id", "reserved_at"])
    op.execute(_AHEAD)
    op.execute(_RESERVE_BUILD)


def downgrade() -> None:
    op.execute(_reserve_build_0021())
    op.execute("DROP FUNCTION IF EXISTS warren_builds_ahead(uuid, uuid)")
    op.drop_index("ix_template_builds_team_reserved_at", table_name="template_builds")
    op.drop_index("ix_template_builds_waiting", table_name="template_builds")
    op.drop_column("template_builds", "wait_host_id")
    op.drop_column("template_builds", "wait_seen_at")
    op.drop_column("template_builds", "wait_since")
    op.drop_column("template_builds", "reserved_at")
