"""Sandbox lifecycle (SPEC §2.5 as amended by DESIGN §4): create (scheduled onto a host), list,
get, destroy, pause, resume, ping, plus the team-delete cleanup (SPEC §7.3).

No database connection is held while an agent RPC runs: a create is one transaction to resolve,
schedule and insert the ``pending`` row, the RPC, then one conditional UPDATE. Status changes
are conditional (``WHERE status = <expected>``) so a concurrent monitor pass or a second request
can never be overwritten by a stale decision.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock, ids
from warren.cp.db.engine import Conn, driver, fetchrow
from warren.cp.db.tables import hosts, sandbox_metric_points, sandboxes
from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.hosts.scheduler import Scheduler
from warren.cp.services import Timestamp, audit
from warren.cp.services.context import AuthContext, no_team, require_team
from warren.errors import (
    AgentError,
    InternalError,
    InvalidRequest,
    InvalidState,
    NotFound,
    ServiceUnavailable,
)
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.sandboxes")

SAFE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")
DISK_SIZE_MB = 5120
DEFAULT_VCPUS = 1
DEFAULT_MEMORY_MB = 512
# Hidden from the list (SPEC §2.5).
_HIDDEN = ("stopped", "error")


class Sandbox(BaseModel):
    id: str
    status: str
    template: str
    vcpus: int
    memory_mb: int
    timeout_sec: int
    internet: bool
    guest_ip: str | None = None
    host_ip: str | None = None
    created_at: Timestamp
    started_at: Timestamp | None = None
    last_active_at: Timestamp | None = None
    last_updated: Timestamp


def sandbox_model(row: RowMapping | asyncpg.Record | dict[str, Any]) -> Sandbox:
    return Sandbox(
        id=ids.sandbox_id(row["id"]),
        status=row["status"],
        template=row["template"],
        vcpus=row["vcpus"],
        memory_mb=row["memory_mb"],
        timeout_sec=row["timeout_sec"],
        internet=row["internet"],
        guest_ip=row["guest_ip"] or None,
        host_ip=row["host_ip"] or None,
        created_at=row["created_at"],
        started_at=row["started_at"],
        last_active_at=row["last_active_at"],
        last_updated=row["last_updated"],
    )


@dataclass(frozen=True)
class CreateParams:
    template: str = "minimal"
    vcpus: int = 0
    memory_mb: int = 0
    timeout_sec: int = 0
    internet: bool = True
    env: dict[str, str] | None = None



# The create and destroy statements run on the raw driver connection (``db.engine.driver``):
# a create is three statements before its RPC and one after, a destroy two and one, and through
# SQLAlchemy each would cost several times its round trip in CPU.
_RESOLVE = """
    SELECT t.is_byoc,
           tpl.id AS template_id, tpl.team_id AS template_team_id, tpl.type AS template_type,
           tpl.vcpus AS template_vcpus, tpl.memory_mb AS template_memory_mb,
           tpl.host_id AS template_host_id
    FROM teams t
    LEFT JOIN LATERAL (
        SELECT id, team_id, type, vcpus, memory_mb, host_id FROM templates
        WHERE name = $1 AND team_id IN ($2, '00000000-0000-0000-0000-000000000000'::uuid)
        -- the team's own template wins; naming rules keep the two from clashing anyway
        ORDER BY (team_id = $2) DESC
        LIMIT 1
    ) tpl ON true
    WHERE t.id = $2 AND t.deleted_at IS NULL
"""

# Inserted only while the chosen host is still online and the team live, holding share locks
# on both rows: a host delete first flips the host to `draining` under a row lock, and a team
# delete stops the team's sandboxes under the team's row lock, so a create either lands before
# (and is counted and stopped) or finds the host or team gone — never in between.
_INSERT_PENDING = """
    INSERT INTO sandboxes (id, team_id, host_id, template, status, vcpus, memory_mb, timeout_sec,
                           disk_size_mb, internet, created_at, last_updated, template_id,
                           template_team_id)
    SELECT $1::uuid, t.id, h.id, $4::text, 'pending', $5::int, $6::int, $7::int, $8::int,
           $9::bool, $10::timestamptz, $10::timestamptz, $11::uuid, $12::uuid
    FROM hosts h, teams t
    WHERE h.id = $3::uuid AND h.status = 'online' AND t.id = $2::uuid AND t.deleted_at IS NULL
    FOR SHARE
"""
_TEAM_LIVE = "SELECT deleted_at IS NULL FROM teams WHERE id = $1"
_CREATE_ATTEMPTS = 3

# Marks it running and writes the audit row in one statement (one round trip, atomic) — only
# while it is still `pending` and its team live.
_MARK_RUNNING = """
    WITH u AS (
        UPDATE sandboxes
        SET status = 'running', host_ip = $2, started_at = $3, last_active_at = $3, last_updated = $3
        WHERE id = $1 AND status = 'pending'
          AND EXISTS (SELECT 1 FROM teams WHERE id = $5 AND deleted_at IS NULL)
        RETURNING *
    ), a AS (
        INSERT INTO audit_logs (id, team_id, actor_type, actor_id, actor_name, resource_type,
                                resource_id, action, scope, status, metadata, created_at)
        SELECT $4, $5, $6, $7, $8, 'sandbox', $9, 'create', 'team', 'success', $10::jsonb, $3
        FROM u
    )
    SELECT * FROM u
"""

# Marks it stopped, drops the saved samples of a paused one (they have no reader any more) and
# writes the audit row, in one statement.
_MARK_DESTROYED = """
    WITH u AS (
        UPDATE sandboxes SET status = 'stopped', last_updated = $2 WHERE id = $1 RETURNING id
    ), m AS (
        DELETE FROM sandbox_metric_points WHERE $3 AND sandbox_id IN (SELECT id FROM u)
    ), a AS (
        INSERT INTO audit_logs (id, team_id, actor_type, actor_id, actor_name, resource_type,
                                resource_id, action, scope, status, metadata, created_at)
        VALUES ($4, $5, $6, $7, $8, 'sandbox', $9, 'destroy', 'team', 'success', '{}'::jsonb, $2)
    )
    SELECT count(*) FROM u
"""


async def create_sandbox(
    engine: AsyncEngine,
    pool: HostClientPool,
    scheduler: Scheduler,
    ctx: AuthContext,
    params: CreateParams,
    *,
    timings: dict[str, float] | None = None,
) -> Sandbox:
    """``timings`` (if given) receives ``agent``: the CreateSandbox RPC's duration in ms, as
    seen from the CP — the API reports it in ``Server-Timing`` so the CP's own share is visible."""
    team_uuid = require_team(ctx)
    name = params.template or "minimal"
    if not SAFE_NAME.match(name):
        raise InvalidRequest("invalid template name")
    if params.timeout_sec < 0:
        raise InvalidRequest("timeout_sec must be >= 0")
    vcpus = params.vcpus if params.vcpus > 0 else DEFAULT_VCPUS
    memory = params.memory_mb if params.memory_mb > 0 else DEFAULT_MEMORY_MB

    sb_uuid = ids.new_uuid()
    sid = ids.sandbox_id(sb_uuid)
    # Single statements outside a transaction (no BEGIN/COMMIT round trips): the insert is
    # atomic on its own and the reads need no snapshot shared with it.
    async with driver(engine) as conn:
        r = await conn.fetchrow(_RESOLVE, name, team_uuid)
        if r is None:
            raise no_team()
        if r["template_id"] is None:
            raise NotFound(f'template "{name}" not found')
        if r["template_type"] == "snapshot":
            # A snapshot carries its source sandbox's shape (SPEC §2.5 step 4).
            vcpus, memory = r["template_vcpus"], r["template_memory_mb"]
        for _attempt in range(_CREATE_ATTEMPTS):
            # A snapshot's files live on the host that took it: only that host can start it.
            host = await scheduler.select_host(
                conn, team_uuid, bool(r["is_byoc"]), required_host=r["template_host_id"]
            )
            now = clock.now()
            status = await conn.execute(
                _INSERT_PENDING,
                sb_uuid, team_uuid, host["id"], name, vcpus, memory, params.timeout_sec, DISK_SIZE_MB,
                params.internet, now, r["template_id"], r["template_team_id"],
            )  # fmt: skip
            if status == "INSERT 0 1":
                break
            if not await conn.fetchval(_TEAM_LIVE, team_uuid):
                raise no_team()
            # The host left `online` (being deleted, or just marked unreachable) after it was
            # chosen: choose again.
            log.info("sandbox create: host %s went away, rescheduling", ids.host_id(host["id"]))
        else:
            raise ServiceUnavailable(
                "no online host could take the sandbox; retry", code="no_hosts_available"
            )
        client = pool.get(host)

    req = pb.CreateSandboxRequest(
        sandbox_id=sid,
        template=name,
        vcpus=vcpus,
        memory_mb=memory,
        timeout_sec=params.timeout_sec,
        disk_size_mb=DISK_SIZE_MB,
        team_id=str(r["template_team_id"]),
        template_id=str(r["template_id"]),
        internet=params.internet,
        env=params.env or {},
    )
    try:
        t_rpc = time.perf_counter()
        resp = await client.call("CreateSandbox", req)
        if timings is not None:
            timings["agent"] = (time.perf_counter() - t_rpc) * 1000
    except AgentError as e:
        async with engine.begin() as conn:
            await conn.execute(
                sandboxes.update()
                .where(sandboxes.c.id == sb_uuid, sandboxes.c.status == "pending")
                .values(status="error", last_updated=clock.now())
            )
        log.warning("sandbox create failed sandbox=%s host=%s: %s", sid, ids.host_id(host["id"]), e)
        raise
    now = clock.now()
    actor_type, actor_id, actor_name = audit.actor_of(ctx)
    try:
        async with driver(engine) as conn:
            row = await conn.fetchrow(
                _MARK_RUNNING,
                sb_uuid, resp.host_ip, now, ids.new_uuid(), team_uuid, actor_type, actor_id,
                actor_name, sid, json.dumps({"template": name}),
            )  # fmt: skip
            marked = row is not None
            if row is None:
                # Someone (a destroy, a monitor pass) moved it on while the agent was creating it.
                row = await conn.fetchrow("SELECT * FROM sandboxes WHERE id = $1", sb_uuid)
    except BaseException:
        # The caller is told the create failed (and may retry): the container must not live on
        # unrecorded. Shielded, so a cancelled request still cleans up.
        await asyncio.shield(client.destroy_best_effort(sid, why="sandbox create (record not written)"))
        raise
    if row is None:
        raise InternalError("sandbox record vanished during create")
    if row["status"] in _HIDDEN:
        # Destroyed, or its team deleted, while the agent was creating it: nobody may use it,
        # so it must not run on.
        await asyncio.shield(client.destroy_best_effort(sid, why="sandbox create (stopped meanwhile)"))
        async with driver(engine) as conn:
            team_live = await conn.fetchval(_TEAM_LIVE, team_uuid)
        if not team_live:
            raise no_team()
        raise InvalidState("the sandbox was destroyed while it was being created")
    if not marked:
        await audit.record(
            engine,
            ctx,
            team_id=team_uuid,
            action="create",
            resource_type="sandbox",
            resource_id=sid,
            metadata={"template": name},
        )
    log.info(
        "sandbox created sandbox=%s host=%s team=%s", sid, ids.host_id(host["id"]), ids.team_id(team_uuid)
    )
    return sandbox_model(row)


# The list is the busiest read of the API: one statement on the raw driver connection.
_LIST = """
    SELECT id, status, template, vcpus, memory_mb, timeout_sec, internet, guest_ip, host_ip,
           created_at, started_at, last_active_at, last_updated
    FROM sandboxes
    WHERE team_id = $1 AND status <> ALL($2::text[])
    ORDER BY created_at DESC, id DESC
"""


async def list_sandboxes(engine: AsyncEngine, ctx: AuthContext) -> list[Sandbox]:
    team_uuid = require_team(ctx)
    async with driver(engine) as conn:
        rows = await conn.fetch(_LIST, team_uuid, _HIDDEN)
    return [sandbox_model(r) for r in rows]


async def _load(conn: Conn, team_uuid: uuid.UUID, sandbox_id: str) -> Mapping[Any, Any]:
    sb_uuid = ids.parse_id(ids.Kind.SANDBOX, sandbox_id, what="sandbox ID")
    row = await fetchrow(conn, "SELECT * FROM sandboxes WHERE id = $1 AND team_id = $2", sb_uuid, team_uuid)
    if row is None:
        raise NotFound("sandbox not found")
    return row


async def get_sandbox(engine: AsyncEngine, ctx: AuthContext, sandbox_id: str) -> Sandbox:
    team_uuid = require_team(ctx)
    async with driver(engine) as conn:
        return sandbox_model(await _load(conn, team_uuid, sandbox_id))


async def _host_for(conn: Conn, host_uuid: uuid.UUID) -> Mapping[Any, Any]:
    host = await fetchrow(conn, "SELECT * FROM hosts WHERE id = $1", host_uuid)
    if host is None:
        raise NotFound("host not found for sandbox")
    return host


async def destroy_sandbox(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str
) -> None:
    team_uuid = require_team(ctx)
    async with driver(engine) as conn:
        row = await _load(conn, team_uuid, sandbox_id)
        if row["status"] == "stopped":
            return
        host = await _host_for(conn, row["host_id"])
    if not host["address"]:
        raise InternalError("sandbox host has no address")
    sid = ids.sandbox_id(row["id"])
    try:
        await pool.get(host).call("DestroySandbox", pb.DestroySandboxRequest(sandbox_id=sid), deadline=60)
    except AgentError as e:
        # DESIGN §4: only NotFound (the agent knows nothing of it) is swallowed; anything else
        # leaves the row as it is and surfaces as 502.
        if not e.is_not_found:
            raise
    actor_type, actor_id, actor_name = audit.actor_of(ctx)
    async with driver(engine) as conn:
        await conn.fetchval(
            _MARK_DESTROYED,
            row["id"], clock.now(), row["status"] == "paused", ids.new_uuid(), team_uuid, actor_type,
            actor_id, actor_name, sid,
        )  # fmt: skip
    log.info("sandbox destroyed sandbox=%s", sid)


async def _status_conflict(conn: AsyncConnection, sb_uuid: uuid.UUID, want: str) -> InvalidState:
    status = (await conn.execute(sa.select(sandboxes.c.status).where(sandboxes.c.id == sb_uuid))).scalar()
    return InvalidState(f"sandbox is not {want} (status: {status})")


async def pause_sandbox(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str
) -> Sandbox:
    team_uuid = require_team(ctx)
    async with engine.begin() as conn:
        row = await _load(conn, team_uuid, sandbox_id)
        host = await _host_for(conn, row["host_id"])
        # Pre-mark paused (SPEC §2.5) so the monitor does not take the frozen sandbox for gone.
        marked = (
            await conn.execute(
                sandboxes.update()
                .where(sandboxes.c.id == row["id"], sandboxes.c.status == "running")
                .values(status="paused", last_updated=clock.now())
                .returning(sandboxes.c.id)
            )
        ).first()
        if marked is None:
            raise await _status_conflict(conn, row["id"], "running")
    sid = ids.sandbox_id(row["id"])
    try:
        await pool.get(host).call("PauseSandbox", pb.PauseSandboxRequest(sandbox_id=sid), deadline=120)
    except Exception:
        async with engine.begin() as conn:
            await conn.execute(
                sandboxes.update()
                .where(sandboxes.c.id == row["id"], sandboxes.c.status == "paused")
                .values(status="running", last_updated=clock.now())
            )
        raise
    await _save_metric_points(engine, pool.get(host), row["id"], sid)
    async with engine.begin() as conn:
        new = (await conn.execute(sa.select(sandboxes).where(sandboxes.c.id == row["id"]))).mappings().one()
        await audit.record(
            conn, ctx, team_id=team_uuid, action="pause", resource_type="sandbox", resource_id=sid
        )
    return sandbox_model(new)


async def _save_metric_points(engine: AsyncEngine, client: HostClient, sb_uuid: uuid.UUID, sid: str) -> None:
    """Best effort (SPEC §2.5 pause, §9.4): keep the samples of a paused sandbox in the database,
    so its metrics stay readable if the agent loses them. Failures are logged, never raised."""
    try:
        points: dict[int, Any] = {}
        for tier in ("2h", "10m"):  # the finer tier wins where both have a timestamp
            resp = await client.call(
                "GetSandboxMetrics", pb.GetSandboxMetricsRequest(sandbox_id=sid, range=tier), deadline=10
            )
            points.update({p.timestamp_unix: p for p in resp.points})
        if not points:
            return
        rows = [
            {"sandbox_id": sb_uuid, "ts": datetime.fromtimestamp(ts, UTC), "cpu_pct": round(p.cpu_pct),
             "mem_bytes": p.mem_bytes, "disk_bytes": p.disk_bytes}
            for ts, p in sorted(points.items())
        ]  # fmt: skip
        async with engine.begin() as conn:
            await conn.execute(pg_insert(sandbox_metric_points).values(rows).on_conflict_do_nothing())
    except Exception as e:
        log.info("pause: could not save metric points of %s: %s", sid, e)


async def resume_sandbox(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str
) -> Sandbox:
    team_uuid = require_team(ctx)
    async with engine.connect() as conn:
        row = await _load(conn, team_uuid, sandbox_id)
        if row["status"] != "paused":
            raise InvalidState(f"sandbox is not paused (status: {row['status']})")
        host = await _host_for(conn, row["host_id"])
    sid = ids.sandbox_id(row["id"])
    resp = await pool.get(host).call(
        "ResumeSandbox", pb.ResumeSandboxRequest(sandbox_id=sid, timeout_sec=row["timeout_sec"]), deadline=120
    )
    now = clock.now()
    async with engine.begin() as conn:
        new = (
            (
                await conn.execute(
                    sandboxes.update()
                    .where(sandboxes.c.id == row["id"], sandboxes.c.status == "paused")
                    .values(
                        status="running",
                        host_ip=resp.host_ip or row["host_ip"],
                        started_at=now,
                        last_active_at=now,
                        last_updated=now,
                    )
                    .returning(*sandboxes.c)
                )
            )
            .mappings()
            .first()
        )
        if new is None:
            raise await _status_conflict(conn, row["id"], "paused")
        await audit.record(
            conn, ctx, team_id=team_uuid, action="resume", resource_type="sandbox", resource_id=sid
        )
    return sandbox_model(new)


async def ping_sandbox(engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str) -> None:
    team_uuid = require_team(ctx)
    async with engine.connect() as conn:
        row = await _load(conn, team_uuid, sandbox_id)
        if row["status"] != "running":
            raise InvalidState(f"sandbox is not running (status: {row['status']})")
        host = await _host_for(conn, row["host_id"])
    sid = ids.sandbox_id(row["id"])
    await pool.get(host).call("PingSandbox", pb.PingSandboxRequest(sandbox_id=sid), deadline=30)
    async with engine.begin() as conn:
        await conn.execute(
            sandboxes.update()
            .where(sandboxes.c.id == row["id"], sandboxes.c.status == "running")
            .values(last_active_at=clock.now())
        )


# --------------------------------------------------------------------------- team soft delete


async def destroy_on_hosts(
    engine: AsyncEngine, pool: HostClientPool, sandbox_refs: Sequence[tuple[uuid.UUID, uuid.UUID]]
) -> None:
    """Team soft delete (SPEC §7.3 step 2): destroy each ``(sandbox_id, host_id)`` on its host,
    concurrently. NotFound is ignored and other errors are logged: the delete goes on, and the
    caller then marks the rows ``stopped`` in its own transaction."""
    host_ids = {h for _, h in sandbox_refs}
    async with engine.connect() as conn:
        rows = (
            await conn.execute(sa.select(hosts.c.id, hosts.c.address).where(hosts.c.id.in_(host_ids)))
        ).all()
    addresses = {r.id: r.address for r in rows}

    async def destroy(sb: uuid.UUID, host_uuid: uuid.UUID) -> None:
        if address := addresses.get(host_uuid):
            client = pool.get_for(host_uuid, address)
            await client.destroy_best_effort(ids.sandbox_id(sb), why="team delete")

    await asyncio.gather(*(destroy(sb, h) for sb, h in sandbox_refs))
