"""Snapshots (templates made from sandboxes): SPEC §2.8 and §6 as amended by DESIGN §4.

- Create works on a running or paused sandbox; the sandbox ends up (and stays) ``paused``. It is
  pre-marked ``paused`` so the monitor does not take a freezing sandbox for gone, and reverted on
  failure. The agent gets a detached 5-minute budget: a client that disconnects does not cut a
  snapshot in half.
- Overwrite never loses the old snapshot: validate the sandbox, create the new snapshot under a
  new id, delete the old files on every online host, then swap the rows in one transaction. Any
  failure before the swap leaves the old snapshot (row and, on every host that answered an
  error, files) in place and removes the new one's files.
- Delete broadcasts to every online host with an address; an agent error other than NotFound is
  a hard error (500 ``agent_error``) and the row stays.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import uuid
from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.cp.db.tables import hosts, sandboxes, teams, templates
from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.services import Timestamp, audit, sandbox_access
from warren.cp.services.context import AuthContext, no_team, require_team
from warren.cp.services.exec import parse_body
from warren.errors import (
    AgentError,
    Conflict,
    Forbidden,
    InternalError,
    InvalidRequest,
    NotFound,
    WarrenError,
)
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.snapshots")

SAFE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")
PLATFORM = ids.PLATFORM_TEAM_ID
CREATE_BUDGET_S = 300.0
DELETE_DEADLINE_S = 60.0


class CreateSnapshotBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sandbox_id: str = ""
    name: str = ""


class Template(BaseModel):
    name: str
    type: Literal["base", "snapshot"]
    kind: Literal["filesystem", "memory"] = Field(
        description="what the template holds: the filesystem only, or memory (RAM state) too"
    )
    vcpus: int | None = None
    memory_mb: int | None = None
    size_bytes: int
    created_at: Timestamp
    platform: bool


def template_model(row: RowMapping) -> Template:
    return Template(
        name=row["name"],
        type=row["type"],
        kind=row["snapshot_kind"],
        vcpus=row["vcpus"] or None,
        memory_mb=row["memory_mb"] or None,
        size_bytes=row["size_bytes"],
        created_at=row["created_at"],
        platform=row["team_id"] == PLATFORM,
    )



def check_name(name: str) -> str:
    if not SAFE_NAME.match(name):
        raise InvalidRequest("invalid snapshot name")
    return name


# --------------------------------------------------------------------------------- broadcast


async def _online_hosts(engine: AsyncEngine, only: uuid.UUID | None = None) -> list[RowMapping]:
    """The online hosts with an address (or just ``only``, if it is one of them)."""
    async with engine.connect() as conn:
        q = sa.select(hosts.c.id, hosts.c.address).where(hosts.c.status == "online", hosts.c.address != "")
        if only is not None:
            q = q.where(hosts.c.id == only)
        return list((await conn.execute(q)).mappings().all())


async def _delete_on(
    pool: HostClientPool, host: RowMapping, team_id: uuid.UUID, template_id: uuid.UUID
) -> AgentError | None:
    """``DeleteSnapshot`` on one host: None when done or nothing was there (NotFound), else
    the (logged) error."""
    req = pb.DeleteSnapshotRequest(team_id=str(team_id), template_id=str(template_id))
    try:
        await pool.get(host).call("DeleteSnapshot", req, deadline=DELETE_DEADLINE_S)
    except AgentError as e:
        if e.is_not_found:
            return None
        hid = ids.host_id(host["id"])
        log.warning("snapshot files delete failed template=%s host=%s: %s", template_id, hid, e)
        return e
    return None


def _raise_first(failures: list[AgentError | None]) -> None:
    for e in failures:
        if e is not None:
            raise InternalError(f"failed to delete snapshot files: {e.message}", code="agent_error") from e


async def broadcast_delete(
    engine: AsyncEngine, pool: HostClientPool, team_id: uuid.UUID, template_id: uuid.UUID
) -> None:
    """``DeleteSnapshot`` on every online host, concurrently. NotFound (nothing there) is fine;
    any other answer from any host raises 500 ``agent_error`` after all hosts have been asked."""
    hosts_ = await _online_hosts(engine)
    _raise_first(await asyncio.gather(*(_delete_on(pool, h, team_id, template_id) for h in hosts_)))


async def delete_files(
    engine: AsyncEngine,
    pool: HostClientPool,
    team_id: uuid.UUID,
    template_id: uuid.UUID,
    host_id: uuid.UUID | None,
) -> None:
    """``DeleteSnapshot`` where the files are: on the host that took the snapshot, the only one
    that has them, if it is online (as SPEC asks of every delete); for a template recorded
    without its host, on every online host. NotFound (nothing there) is fine, and so is a host
    that is not online or no longer exists; any other answer raises 500 ``agent_error``. One
    host means the files are either all gone or all still there, never gone from one host
    while another refused."""
    if host_id is None:
        await broadcast_delete(engine, pool, team_id, template_id)
        return
    holder = await _online_hosts(engine, only=host_id)
    _raise_first([await _delete_on(pool, h, team_id, template_id) for h in holder])


# ------------------------------------------------------------------------------------ create


async def create_snapshot(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    raw_body: bytes,
    *,
    overwrite: bool = False,
) -> Template:
    team_uuid = require_team(ctx)
    body = parse_body(CreateSnapshotBody, raw_body)
    if not body.sandbox_id:
        raise InvalidRequest("sandbox_id is required")
    ids.parse_id(ids.Kind.SANDBOX, body.sandbox_id, what="sandbox_id")
    name = check_name(body.name or f"template-{secrets.token_hex(4)}")

    async with engine.connect() as conn:
        rows = (
            (
                await conn.execute(
                    sa.select(templates).where(
                        templates.c.name == name, templates.c.team_id.in_([PLATFORM, team_uuid])
                    )
                )
            )
            .mappings()
            .all()
        )
    if any(r["team_id"] == PLATFORM for r in rows):
        raise Conflict(f'"{name}" is the name of a platform template', code="name_reserved")
    old = next((r for r in rows if r["team_id"] == team_uuid), None)
    if old is not None and not overwrite:
        raise Conflict("snapshot name already exists; use ?overwrite=true to replace", code="already_exists")

    # The source sandbox is validated before anything is touched (DESIGN §4).
    tgt = await sandbox_access.target(engine, pool, ctx, body.sandbox_id, states=("running", "paused"))
    client = tgt.client()
    sb_uuid = tgt.uuid
    was_running = tgt.sandbox.status == "running"
    if was_running:
        async with engine.begin() as conn:
            marked = (
                await conn.execute(
                    sa.update(sandboxes)
                    .where(sandboxes.c.id == sb_uuid, sandboxes.c.status == "running")
                    .values(status="paused", last_updated=clock.now())
                    .returning(sandboxes.c.id)
                )
            ).first()
        if marked is None:  # changed under us (paused or stopped meanwhile): judge it afresh
            tgt = await sandbox_access.target(
                engine, pool, ctx, body.sandbox_id, states=("running", "paused")
            )
            was_running = False

    new_id = ids.new_uuid()
    try:
        resp = await _detached_create(client, tgt.sid, name, team_uuid, new_id)
    except BaseException:
        if was_running:
            await asyncio.shield(_revert_running(engine, client, tgt.sid, sb_uuid))
        raise

    try:
        # One transaction swaps the old record for the new: until it commits, the old snapshot
        # (record and files) is whole.
        row = await _record(engine, ctx, team_uuid, new_id, name, tgt, resp, old)
    except BaseException:
        # The old snapshot stays; the new one must not linger as unrecorded files.
        await _forget_files(client, team_uuid, new_id)
        raise
    if old is not None:
        # Replaced: its files go now. If that fails they only take disk space on their host.
        try:
            await delete_files(engine, pool, team_uuid, old["id"], old["host_id"])
        except WarrenError as e:
            log.warning("overwritten snapshot %s: its files stay on the host: %s", old["id"], e.message)
    log.info("snapshot created name=%s sandbox=%s team=%s", name, tgt.sid, ids.team_id(team_uuid))
    return template_model(row)


async def _detached_create(
    client: HostClient, sid: str, name: str, team_uuid: uuid.UUID, template_id: uuid.UUID
) -> pb.CreateSnapshotResponse:
    req = pb.CreateSnapshotRequest(
        sandbox_id=sid, name=name, team_id=str(team_uuid), template_id=str(template_id)
    )
    # A task of its own, shielded: a client that disconnects does not cancel the agent's work.
    task = asyncio.ensure_future(client.call("CreateSnapshot", req, deadline=CREATE_BUDGET_S))
    resp: pb.CreateSnapshotResponse = await asyncio.shield(task)
    return resp


async def _revert_running(engine: AsyncEngine, client: HostClient, sid: str, sb_uuid: uuid.UUID) -> None:
    """Undo the pre-mark after a failed snapshot. The agent pauses a sandbox before it copies
    anything, so it may be paused there now: resume it, and only then say ``running`` — if it
    cannot be resumed, the row stays ``paused``, which is the truth."""
    try:
        await client.call(
            "ResumeSandbox", pb.ResumeSandboxRequest(sandbox_id=sid, timeout_sec=-1), deadline=60
        )
    except AgentError as e:
        if e.rpc_code != "FAILED_PRECONDITION":  # FAILED_PRECONDITION: it was never paused
            log.warning("snapshot failed and the sandbox could not be resumed sandbox=%s: %s", sid, e)
            return
    async with engine.begin() as conn:
        await conn.execute(
            sa.update(sandboxes)
            .where(sandboxes.c.id == sb_uuid, sandboxes.c.status == "paused")
            .values(status="running", last_updated=clock.now())
        )


async def _record(
    engine: AsyncEngine,
    ctx: AuthContext,
    team_uuid: uuid.UUID,
    new_id: uuid.UUID,
    name: str,
    tgt: sandbox_access.Target,
    resp: pb.CreateSnapshotResponse,
    old: RowMapping | None,
) -> RowMapping:
    kind = resp.kind if resp.kind in ("filesystem", "memory") else "filesystem"
    try:
        async with engine.begin() as conn:
            # Recorded only for a live team, under a share lock on its row: a team delete takes
            # that row's lock to remove the team's templates, so a snapshot finishing during it
            # is either removed with the rest (files included) or refused here (its files then
            # deleted by the caller) — never recorded for a deleted team.
            live = (
                await conn.execute(
                    sa.select(teams.c.id)
                    .where(teams.c.id == team_uuid, teams.c.deleted_at.is_(None))
                    .with_for_update(read=True)
                )
            ).first()
            if live is None:
                raise no_team()
            if old is not None:
                await conn.execute(sa.delete(templates).where(templates.c.id == old["id"]))
            row = (
                (
                    await conn.execute(
                        templates.insert()
                        .values(
                            id=new_id,
                            name=name,
                            type="snapshot",
                            vcpus=tgt.sandbox.vcpus,
                            memory_mb=tgt.sandbox.memory_mb,
                            size_bytes=resp.size_bytes,
                            snapshot_kind=kind,
                            host_id=tgt.host_id,
                            created_at=clock.now(),
                            team_id=team_uuid,
                        )
                        .returning(*templates.c)
                    )
                )
                .mappings()
                .one()
            )
            await audit.record(
                conn,
                ctx,
                team_id=team_uuid,
                action="create",
                resource_type="snapshot",
                resource_id=name,
                metadata={"sandbox_id": tgt.sid, "overwrite": old is not None},
            )
    except WarrenError:
        raise
    except IntegrityError as e:
        # A concurrent create took the name between our check and this insert.
        raise Conflict(
            "snapshot name already exists; use ?overwrite=true to replace", code="already_exists"
        ) from e
    except Exception as e:
        log.error("snapshot row insert failed name=%s: %s", name, e)
        raise InternalError("snapshot created but failed to record in database", code="db_error") from e
    return row


async def _forget_files(client: HostClient, team_uuid: uuid.UUID, template_id: uuid.UUID) -> None:
    try:
        await client.call(
            "DeleteSnapshot",
            pb.DeleteSnapshotRequest(team_id=str(team_uuid), template_id=str(template_id)),
            deadline=DELETE_DEADLINE_S,
        )
    except AgentError as e:
        log.warning("cleanup of unrecorded snapshot %s failed: %s", template_id, e)


# ------------------------------------------------------------------------------ list, delete


async def list_templates(engine: AsyncEngine, ctx: AuthContext, type_: str | None) -> list[Template]:
    team_uuid = require_team(ctx)
    if type_ not in (None, "", "base", "snapshot"):
        raise InvalidRequest("type must be base or snapshot")
    q = sa.select(templates).where(templates.c.team_id.in_([team_uuid, PLATFORM]))
    if type_:
        q = q.where(templates.c.type == type_)
    q = q.order_by(templates.c.created_at.desc(), templates.c.name)
    async with engine.connect() as conn:
        return [template_model(r) for r in (await conn.execute(q)).mappings().all()]


async def delete_snapshot(engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, name: str) -> None:
    team_uuid = require_team(ctx)
    check_name(name)
    async with engine.connect() as conn:
        rows = (
            (
                await conn.execute(
                    sa.select(templates).where(
                        templates.c.name == name, templates.c.team_id.in_([team_uuid, PLATFORM])
                    )
                )
            )
            .mappings()
            .all()
        )
    row = next((r for r in rows if r["team_id"] == team_uuid), None) or next(iter(rows), None)
    if row is None:
        raise NotFound("template not found")
    if row["team_id"] == PLATFORM:
        raise Forbidden("platform templates cannot be deleted here")
    await delete_files(engine, pool, team_uuid, row["id"], row["host_id"])
    async with engine.begin() as conn:
        await conn.execute(sa.delete(templates).where(templates.c.id == row["id"]))
        await audit.record(
            conn, ctx, team_id=team_uuid, action="delete", resource_type="snapshot", resource_id=name
        )
    log.info("snapshot deleted name=%s team=%s", name, ids.team_id(team_uuid))
