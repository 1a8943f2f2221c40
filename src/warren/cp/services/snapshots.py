"""Snapshots (templates made from sandboxes): docs/spec.md §2.8 and §6 as amended by docs/design.md §4
and docs/templates.md.

- A snapshot is a template version: the source sandbox's template chain (base, layers, config)
  plus one layer, the sandbox's writable layer, exported by its agent (``ExportSnapshot``) into
  the template store. It is complete when the API answers, and starts on any eligible host
  (the host that took it, which keeps the layer installed, is only preferred).
- Create works on a running or paused sandbox; the sandbox ends up (and stays) ``paused``. It is
  pre-marked ``paused`` so the monitor does not take a freezing sandbox for gone, and a running
  one is resumed when the snapshot fails or is refused at any step (E2B's, resumed after, is
  marked paused for its snapshot: commands wait, services/snapshot_hold.py). The export runs as a
  detached task: a client that disconnects does not cut a snapshot in half.
- Overwrite never loses the old snapshot: the new layer is stored first, then one transaction
  swaps the rows. A replaced snapshot taken before the template store (files on its host
  only) has its files deleted after the swap.
- Quotas (D12, ``services/limits.py``): a team at its snapshot count or size quota is refused
  (429 ``quota_exceeded``) before anything starts; the size counts the snapshot's whole chain
  (its layers' bytes), and an export that would pass the size quota is stopped and refused the
  same way. The host must have disk room for a full copy of the sandbox's disk (503
  ``no_capacity``).
- A gVisor sandbox's snapshot (issue 16) stays on its host instead: its agent copies the
  sandbox's layers and, when it could checkpoint the sandbox, its memory image into a host-local
  template (``CreateSnapshot``), and the record says its kind
  (``memory`` or ``filesystem``). Creates from it go to that host only; one from a memory
  snapshot starts with every process where it was (on gvisor only: services/sandboxes.py).
- Delete removes the rows; layers go to garbage collection (services/layer_gc.py) once nothing
  uses them. A pre-store snapshot's files are deleted on its host first, as before: an agent
  error other than NotFound is a hard error (500 ``agent_error``) and the row stays.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.config import Settings
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import hosts, sandboxes, teams, templates
from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.services import (
    Timestamp,
    audit,
    limits,
    sandbox_access,
    sandbox_power,
    snapshot_source,
    team_store,
)
from warren.cp.services import layers as layer_svc
from warren.cp.services.context import AuthContext, no_team, require_team
from warren.cp.services.exec import parse_body
from warren.cp.services.template_spec import TEMPLATE_NAME_RE
from warren.cp.store import LayerStore
from warren.errors import (
    AgentError,
    Conflict,
    Forbidden,
    InternalError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    WarrenError,
)
from warren.layers import LayerMeta
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.snapshots")

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
    if not TEMPLATE_NAME_RE.match(name):
        raise InvalidRequest("invalid snapshot name")
    return name


# --------------------------------------------------------------------------------- broadcast


async def _online_hosts(engine: AsyncEngine, only: uuid.UUID | None = None) -> list[RowMapping]:
    """The online hosts with an address (or just ``only``, if it is one of them)."""
    async with autocommit(engine) as conn:
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
        await pool.get(host).stub.DeleteSnapshot(req, timeout=DELETE_DEADLINE_S)
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
    settings: Settings,
    store: LayerStore,
    overwrite: bool = False,
    transient: bool = False,
) -> Template:
    """Check the name and the quotas, then the source sandbox, its template and its host's disk
    room; pause the sandbox, have its agent export its writable layer into the store, and record
    the template (replacing the old one of that name, whose host-local files, if it had any, go
    then). The snapshot is complete, and starts on any host, when this returns. ``transient``:
    the caller resumes the sandbox afterwards (E2B's), so commands wait meanwhile (snapshot_hold)."""
    team_uuid = require_team(ctx)
    body = parse_body(CreateSnapshotBody, raw_body)
    if not body.sandbox_id:
        raise InvalidRequest("sandbox_id is required")
    ids.parse_id(ids.Kind.SANDBOX, body.sandbox_id, what="sandbox_id")
    name = check_name(body.name or f"template-{secrets.token_hex(4)}")
    old = await _replaced(engine, team_uuid, name, overwrite)
    replacing = _counted(old)
    async with autocommit(engine) as conn:
        lim = await limits.load(conn, settings)
        await limits.check_snapshot_room(conn, lim, team_uuid, replacing=replacing, new_bytes=0)
    # The source sandbox is validated before anything is touched (docs/design.md §4).
    tgt = await sandbox_access.target(engine, pool, ctx, body.sandbox_id, states=("running", "paused"))
    # gVisor's: host-local, with its memory image (no store layer, so no parent chain to describe).
    on_host = tgt.sandbox.runtime == "gvisor"
    parent = None if on_host else await _parent_chain(engine, tgt.uuid)
    if tgt.host_id is not None:
        async with autocommit(engine) as conn:
            await limits.check_host_disk(conn, settings, tgt.host_id, tgt.sandbox.disk_size_mb)
    client = tgt.client()
    sb_uuid = tgt.uuid
    tgt, was_running = await snapshot_source.pre_mark_paused(
        engine, pool, ctx, tgt, body.sandbox_id, transient
    )
    try:
        if parent is None:
            row = await _take_on_host(engine, pool, ctx, team_uuid, name, tgt, old, lim)
        else:
            row = await _take_to_store(engine, store, ctx, team_uuid, name, tgt, parent, old, lim)
    except BaseException:
        # Refused or failed, whatever the step: the sandbox runs again as it did (its layer, if
        # stored, is unreferenced and goes to GC).
        if was_running:
            await asyncio.shield(snapshot_source.revert_running(engine, client, tgt.sid, sb_uuid))
        raise
    for replaced in old:
        if is_legacy(replaced):
            await _delete_replaced(engine, pool, team_uuid, replaced)
    log.info("snapshot created name=%s sandbox=%s team=%s", name, tgt.sid, ids.team_id(team_uuid))
    return template_model(row)


async def _take_to_store(
    engine: AsyncEngine,
    store: LayerStore,
    ctx: AuthContext,
    team_uuid: uuid.UUID,
    name: str,
    tgt: sandbox_access.Target,
    parent: _Parent,
    old: list[RowMapping],
    lim: limits.PlatformLimits,
) -> RowMapping:
    """The sandbox's writable layer into the store, within what the size quota leaves, then the
    record (one transaction swaps the old for the new: until it commits, the old one is whole)."""
    replacing = _counted(old)
    room, _ = await _layer_room(engine, lim, team_uuid, replacing, parent.size_bytes)
    # What the team's snapshots hold of the store, deleted ones too, stays bounded (session 14).
    hold_id, held, store_mb = await team_store.hold(engine, lim, team_uuid, room)
    export = _export(engine, store, tgt.client(), tgt, held, (hold_id, team_uuid))
    try:
        meta = await asyncio.shield(asyncio.ensure_future(export))
    except PayloadTooLarge:
        if held < room:  # the store bound stopped it, not the quota
            raise team_store.store_full(store_mb) from None
        # Past what the quota leaves: refused like any snapshot over it (429).
        async with autocommit(engine) as conn:
            new_bytes = parent.size_bytes + room + 1
            await limits.check_snapshot_room(conn, lim, team_uuid, replacing=replacing, new_bytes=new_bytes)
        raise
    return await _record(engine, ctx, team_uuid, name, tgt, parent, meta, old, lim)


async def _take_on_host(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    team_uuid: uuid.UUID,
    name: str,
    tgt: sandbox_access.Target,
    old: list[RowMapping],
    lim: limits.PlatformLimits,
) -> RowMapping:
    """A gVisor sandbox's snapshot: its agent pauses it (to disk when it can) and copies its
    layers, and then its memory image, into a host-local template; the record says the kind and
    pins creates from it to that host. Files the record does not come to hold are deleted."""
    template_id = ids.new_uuid()
    req = pb.CreateSnapshotRequest(sandbox_id=tgt.sid, team_id=str(team_uuid), template_id=str(template_id))
    call = tgt.client().stub.CreateSnapshot(req, timeout=CREATE_BUDGET_S)
    resp = await asyncio.shield(asyncio.ensure_future(call))
    kind = "memory" if resp.kind == "memory" else "filesystem"
    # A memory image is only taken of a sandbox checkpointed to disk; else it was frozen.
    await sandbox_power.set_paused_state(engine, tgt.uuid, "disk" if kind == "memory" else None)
    values = {
        "id": template_id, "name": name, "type": "snapshot", "vcpus": tgt.sandbox.vcpus,
        "memory_mb": tgt.sandbox.memory_mb, "size_bytes": resp.size_bytes, "snapshot_kind": kind,
        "host_id": tgt.host_id, "created_at": clock.now(), "team_id": team_uuid, "version": 1,
        "tags": ["v1"],
    }  # fmt: skip
    audit_meta = {"sandbox_id": tgt.sid, "overwrite": bool(old), "kind": kind}
    try:
        return await _insert(engine, ctx, team_uuid, name, values, old, lim, audit_meta)
    except BaseException:
        await asyncio.shield(_delete_unrecorded(engine, pool, team_uuid, template_id, tgt.host_id))
        raise


async def _delete_unrecorded(
    engine: AsyncEngine,
    pool: HostClientPool,
    team_uuid: uuid.UUID,
    template_id: uuid.UUID,
    host: uuid.UUID | None,
) -> None:
    """A host-local snapshot refused at its record (a quota, a name taken meanwhile): its files go."""
    try:
        await delete_files(engine, pool, team_uuid, template_id, host)
    except WarrenError as e:
        log.warning("unrecorded snapshot %s: its files stay on the host: %s", template_id, e.message)


async def _named(engine: AsyncEngine, team_uuid: uuid.UUID, name: str) -> list[RowMapping]:
    """The templates called ``name`` the team sees (every version): its own and the platform's."""
    async with autocommit(engine) as conn:
        q = sa.select(templates).where(
            templates.c.name == name, templates.c.team_id.in_([PLATFORM, team_uuid])
        )
        return list((await conn.execute(q)).mappings().all())


async def _replaced(
    engine: AsyncEngine, team_uuid: uuid.UUID, name: str, overwrite: bool
) -> list[RowMapping]:
    """The team's template versions this snapshot replaces (none, or every version of the
    name): 409 for a platform template's name, and for a name in use without ``overwrite``."""
    rows = await _named(engine, team_uuid, name)
    if any(r["team_id"] == PLATFORM for r in rows):
        raise Conflict(f'"{name}" is the name of a platform template', code="name_reserved")
    old = [r for r in rows if r["team_id"] == team_uuid]
    if old and not overwrite:
        raise Conflict("snapshot name already exists; use ?overwrite=true to replace", code="already_exists")
    return old


def _counted(old: list[RowMapping]) -> uuid.UUID | None:
    """The replaced snapshot the quota check leaves out (snapshots have one version)."""
    return next((r["id"] for r in old if r["type"] == "snapshot"), None)


def is_legacy(row: Mapping[Any, Any]) -> bool:
    """A host-local snapshot, taken before the template store or of a gVisor sandbox: its files
    live on the host that took it."""
    return bool(row["type"] == "snapshot" and not row["layers"] and row["source"] != "snapshot")


@dataclass(frozen=True)
class _Parent:
    """The template the sandbox runs: a snapshot of it is this chain plus one layer."""

    base: str
    layers: list[str]
    config: dict[str, Any]
    size_bytes: int


async def _parent_chain(engine: AsyncEngine, sb_uuid: uuid.UUID) -> _Parent:
    """The sandbox's template version (409 when it is gone or predates the template store)."""
    async with autocommit(engine) as conn:
        row = (
            (
                await conn.execute(
                    sa.select(templates)
                    .select_from(sandboxes.join(templates, templates.c.id == sandboxes.c.template_id))
                    .where(sandboxes.c.id == sb_uuid)
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        raise Conflict(
            "the sandbox's template was deleted, so its snapshot cannot be described", code="template_gone"
        )
    if is_legacy(row):
        raise Conflict(
            "this sandbox runs a snapshot taken before the template store, which cannot be "
            "snapshotted again; start from a template in the store",
            code="legacy_snapshot",
        )
    digests = list(row["layers"])
    known = await layer_svc.sizes(engine, digests)
    config = row["config"] if isinstance(row["config"], dict) else json.loads(row["config"] or "{}")
    return _Parent(row["base"], digests, config, sum(known.get(d, 0) for d in digests))


async def _layer_room(
    engine: AsyncEngine,
    lim: limits.PlatformLimits,
    team_uuid: uuid.UUID,
    replacing: uuid.UUID | None,
    parent_bytes: int,
) -> tuple[int, int]:
    """How big the new layer may be within the team's snapshot size quota (the snapshot counts
    its whole chain): the export stops there instead of filling the store first; and the quota
    (MiB)."""
    async with autocommit(engine) as conn:
        team = (await conn.execute(sa.select(teams).where(teams.c.id == team_uuid))).mappings().one()
        _n, used = await limits.snapshot_usage(conn, team_uuid, besides=replacing)
    quota_mb = limits.team_quotas(lim, team).snapshot_mb
    return max(quota_mb * limits.MiB - used - parent_bytes, 0), quota_mb


async def _export(
    engine: AsyncEngine, store: LayerStore, client: HostClient, tgt: sandbox_access.Target, room: int,
    held: tuple[uuid.UUID, uuid.UUID],
) -> LayerMeta:  # fmt: skip
    """``ExportSnapshot`` streamed into the store (hashed on the way; the agent's own digest
    must agree), then indexed, and noted on the source host, which keeps it installed. Run as
    its own task: a client that disconnects does not cut a snapshot in half."""
    done: list[pb.LayerMeta] = []

    async def chunks() -> AsyncIterator[bytes]:
        stream = client.stub.ExportSnapshot(
            pb.ExportSnapshotRequest(sandbox_id=tgt.sid), timeout=CREATE_BUDGET_S
        )
        try:
            async for msg in stream:
                if msg.HasField("done"):
                    done.append(msg.done)
                else:
                    yield msg.chunk
        finally:
            stream.cancel()  # the store stopped reading (over the quota): the agent stops too

    hold_id, team_uuid = held  # the store room this export holds: team_store.hold
    try:
        meta = await store.put(chunks(), max_bytes=room)
    except BaseException:
        await team_store.release(engine, hold_id)
        raise
    await team_store.settle(engine, hold_id, team_uuid, meta)  # in the store now, whatever follows
    if not done or (done[0].digest, done[0].size) != (meta.digest, meta.size):
        said = f"{done[0].digest}/{done[0].size}" if done else "nothing"
        raise InternalError(
            f"snapshot layer: the host said {said}, its bytes are {meta.digest}/{meta.size}",
            code="snapshot_mismatch",
        )
    await layer_svc.record_layer(engine, meta, store=store)
    if tgt.host_id is not None:
        await layer_svc.record_on_host(engine, tgt.host_id, [meta.digest])
    return meta


async def _delete_replaced(
    engine: AsyncEngine, pool: HostClientPool, team_uuid: uuid.UUID, old: RowMapping
) -> None:
    """A replaced pre-store snapshot's files go now. If that fails they only take disk space on
    their host."""
    try:
        await delete_files(engine, pool, team_uuid, old["id"], old["host_id"])
    except WarrenError as e:
        log.warning("overwritten snapshot %s: its files stay on the host: %s", old["id"], e.message)


async def _record(
    engine: AsyncEngine,
    ctx: AuthContext,
    team_uuid: uuid.UUID,
    name: str,
    tgt: sandbox_access.Target,
    parent: _Parent,
    meta: LayerMeta,
    old: list[RowMapping],
    lim: limits.PlatformLimits,
) -> RowMapping:
    size = parent.size_bytes + meta.size
    values: dict[str, Any] = {
        "id": ids.new_uuid(), "name": name, "type": "snapshot", "vcpus": tgt.sandbox.vcpus,
        "memory_mb": tgt.sandbox.memory_mb, "size_bytes": size, "snapshot_kind": "filesystem",
        # The source host holds the layers: a preference for the scheduler, not a pin.
        "host_id": tgt.host_id, "created_at": clock.now(), "team_id": team_uuid, "version": 1,
        "base": parent.base, "layers": [*parent.layers, meta.digest], "config": parent.config,
        "tags": ["v1"], "source": "snapshot",
    }  # fmt: skip
    audit_meta = {"sandbox_id": tgt.sid, "overwrite": bool(old), "layer": meta.digest}
    return await _insert(engine, ctx, team_uuid, name, values, old, lim, audit_meta)


async def _insert(
    engine: AsyncEngine,
    ctx: AuthContext,
    team_uuid: uuid.UUID,
    name: str,
    values: dict[str, Any],
    old: list[RowMapping],
    lim: limits.PlatformLimits,
    audit_meta: dict[str, Any],
) -> RowMapping:
    """The snapshot's template row in place of ``old``, with its audit row, in one transaction."""
    size = values["size_bytes"]
    try:
        async with transaction(engine) as conn:
            # Recorded only for a live team, under a lock on its row: a team delete takes that
            # row's lock to remove the team's templates, so a snapshot finishing during it is
            # either removed with the rest or refused here — never recorded for a deleted team.
            # The lock is exclusive among snapshot records (and sandbox creates), so the quota
            # check below counts every snapshot recorded before it.
            live = (
                await conn.execute(
                    sa.select(teams.c.id)
                    .where(teams.c.id == team_uuid, teams.c.deleted_at.is_(None))
                    .with_for_update(key_share=True)
                )
            ).first()
            if live is None:
                raise no_team()
            await limits.check_snapshot_room(conn, lim, team_uuid, replacing=_counted(old), new_bytes=size)
            if old:
                await conn.execute(sa.delete(templates).where(templates.c.id.in_([r["id"] for r in old])))
            insert = templates.insert().values(**values).returning(*templates.c)
            row = (await conn.execute(insert)).mappings().one()
            await audit.record(conn, ctx, team_id=team_uuid, action="create", resource_type="snapshot",
                               resource_id=name, metadata=audit_meta)  # fmt: skip
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


# ------------------------------------------------------------------------------ list, delete


async def list_templates(engine: AsyncEngine, ctx: AuthContext, type_: str | None) -> list[Template]:
    team_uuid = require_team(ctx)
    if type_ not in (None, "", "base", "snapshot"):
        raise InvalidRequest("type must be base or snapshot")
    q = sa.select(templates).where(templates.c.team_id.in_([team_uuid, PLATFORM]))
    if type_:
        q = q.where(templates.c.type == type_)
    q = q.order_by(templates.c.created_at.desc(), templates.c.name)
    async with autocommit(engine) as conn:
        return [template_model(r) for r in (await conn.execute(q)).mappings().all()]


async def delete_snapshot(engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, name: str) -> None:
    team_uuid = require_team(ctx)
    check_name(name)
    rows = await _named(engine, team_uuid, name)
    own = [r for r in rows if r["team_id"] == team_uuid]
    if not rows:
        raise NotFound("template not found")
    if not own:
        raise Forbidden("platform templates cannot be deleted here")
    # A pre-store snapshot's files live on its host and go first; a store snapshot is only its
    # row (its layers go to GC once nothing uses them: running sandboxes keep theirs).
    for row in own:
        if is_legacy(row):
            await delete_files(engine, pool, team_uuid, row["id"], row["host_id"])
    async with transaction(engine) as conn:
        await conn.execute(sa.delete(templates).where(templates.c.id.in_([r["id"] for r in own])))
        await audit.record(
            conn, ctx, team_id=team_uuid, action="delete", resource_type="snapshot", resource_id=name
        )
    log.info("snapshot deleted name=%s team=%s", name, ids.team_id(team_uuid))
