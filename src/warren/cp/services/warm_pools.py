"""Warm pools, the control plane's side (issue 17, docs/hosts.md "Warm pools"): setting a host's
pool size through the API, and applying the sizes set that way again when an agent restarted
with others (its ``--warm-pool`` flag is only its default).

Who may: a platform admin for any host, an owner or admin of a BYOC team for that team's hosts
(the hosts they can see; any other host is 404, as for every host verb). Which templates: a
platform host pools platform templates only (a pooled sandbox is claimed by whichever team asks
for the same template next), a BYOC host its team's templates or the platform's. Snapshots are
never pooled. A template made of store layers is resolved to its newest version (or the one its
tag names) and its chain is sent with ``SetWarmPool``, the layers the host lacks pushed first.
Runtimes: a pool's name may end in ``@runc`` or ``@crun`` (a pool of that runtime, one the host
offers; session 13), else it holds the host's default runtime (warm_pool_state.split_pool_name).

The size is stored (``hosts.warm_pool_targets``) once the agent accepted it, or at once when the
host is not online (it is applied when the host reports in). The agent's pools never appear as
sandboxes: they belong to no team and count against no quota (the agent side, docs/agent.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import hosts, templates
from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.services import layers
from warren.cp.services.context import AuthContext
from warren.cp.services.hosts import Host, _audit_host, _load_visible, _require_manager, host_model
from warren.cp.services.template_spec import TEMPLATE_REF_RE
from warren.cp.services.warm_pool_state import (
    MAX_POOL_SIZE,
    MAX_POOLS,
    checked_answer,
    reported_targets,
    split_pool_name,
)
from warren.cp.store import LayerStore
from warren.errors import AgentError, InvalidRequest, NotFound, ServiceUnavailable
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.warm_pools")

_RPC_TIMEOUT_S = 60.0
# Applications started from heartbeats, kept referenced until they finish.
_reapplying: dict[uuid.UUID, asyncio.Task[None]] = {}
# A host's sizes are applied again at most this often: its agent chooses how often it beats and
# what it reports, and each application may push the template's layers to it again (a hostile
# BYOC agent that reports its pools empty and its layers missing had them streamed in a loop).
REAPPLY_EVERY_S = 30.0
_reapplied_at: dict[uuid.UUID, float] = {}
# Hosts whose sizes are being set through the API now. Until the new size is stored, a heartbeat
# shows the agent's pools differing from the stored (old) sizes, and applying those again would
# undo the new size (seen: a pool set to 0 was back at 40 a few hundred ms later).
_setting: collections.Counter[uuid.UUID] = collections.Counter()


@contextlib.asynccontextmanager
async def _sizes_changing(host_uuid: uuid.UUID) -> Any:
    """Around setting a host's sizes: no application from heartbeats starts meanwhile, and one
    already running ends first (its sizes are the old ones)."""
    _setting[host_uuid] += 1
    try:
        if (running := _reapplying.get(host_uuid)) is not None:
            await asyncio.wait([running])
        yield
    finally:
        _setting[host_uuid] -= 1
        if _setting[host_uuid] <= 0:
            del _setting[host_uuid]


def _checked(template: str, size: int, host: Any) -> None:
    """The pool's name (``name``, ``name:tag``, either with ``@runc`` or ``@crun``: a runtime
    the host offers) and size."""
    ref, runtime = split_pool_name(template)
    if TEMPLATE_REF_RE.match(ref) is None:
        raise InvalidRequest("invalid template name (want name or name:tag, then @runc or @crun if any)")
    if runtime and size > 0 and runtime not in (host["runtimes"] or ()):
        offered = ", ".join(host["runtimes"] or ())
        raise InvalidRequest(f"this host does not offer the {runtime} runtime (it offers {offered})")
    if not 0 <= size <= MAX_POOL_SIZE:
        raise InvalidRequest(f"size must be between 0 and {MAX_POOL_SIZE}")


async def _chain(engine: AsyncEngine, host: Any, template: str) -> tuple[pb.TemplateChain | None, uuid.UUID]:
    """The template version ``template`` names, among those the host may pool, and the team
    that owns it (the platform's for a platform template): 404 when there is none, 400 for a
    snapshot. The chain is None for plain ``minimal`` (the host's own). A runtime in the name
    (``@crun``) does not change the template."""
    name, _, tag = split_pool_name(template)[0].partition(":")
    teams_allowed = [ids.PLATFORM_TEAM_ID]
    if host["type"] == "byoc" and host["team_id"] is not None:
        teams_allowed.append(host["team_id"])
    q = sa.select(
        templates.c.type, templates.c.base, templates.c.layers, templates.c.config, templates.c.team_id
    ).where(templates.c.name == name, templates.c.team_id.in_(teams_allowed))
    if tag:
        q = q.where(
            sa.or_(templates.c.tags.any(tag), sa.literal("v") + sa.cast(templates.c.version, sa.Text) == tag)
        )
    q = q.order_by((templates.c.team_id != ids.PLATFORM_TEAM_ID).desc(), templates.c.version.desc()).limit(1)
    async with autocommit(engine) as conn:
        row = (await conn.execute(q)).first()
    if row is None:
        raise NotFound(f'template "{template}" not found')
    if row.type == "snapshot":
        raise InvalidRequest("a snapshot cannot be pooled; pool the template it was made from")
    return layers.chain_of(row.base, row.layers, row.config), row.team_id


async def _apply(
    engine: AsyncEngine,
    client: HostClient,
    host_uuid: uuid.UUID,
    store: LayerStore | None,
    template: str,
    size: int,
    chain: pb.TemplateChain | None,
    owner: uuid.UUID,
) -> list[dict[str, Any]]:
    """Have the agent keep ``size`` ready sandboxes of ``template`` (its layers brought first,
    in the install turns of ``owner``, the template's team: a team's pools and its creates
    share its turns, and the platform's pools take the platform's; agent/layer_slots.py);
    returns its pools as it reports them afterwards."""
    if chain is not None and size > 0 and chain.layers:
        if store is None:
            raise InvalidRequest("no template store is configured to bring this template's layers from")
        await layers.ensure_on_host(engine, store, client, host_uuid, list(chain.layers), team=owner)
    req = pb.SetWarmPoolRequest(template=template, size=size, chain=chain)
    resp = await client.stub.SetWarmPool(req, timeout=_RPC_TIMEOUT_S)
    pools = [{"template": p.template, "target": p.target, "ready": p.ready} for p in resp.pools]
    return checked_answer(pools)


async def set_pool(
    engine: AsyncEngine,
    pool: HostClientPool,
    store: LayerStore | None,
    ctx: AuthContext,
    host_id: str,
    template: str,
    size: int,
) -> Host:
    """Set the host's pool of ``template`` to ``size`` ready sandboxes (0 stops it) and return
    the host as ``GET /v1/hosts/{id}`` shows it."""
    host_uuid = ids.parse_id(ids.Kind.HOST, host_id)
    async with autocommit(engine) as conn:
        row = await _load_visible(conn, ctx, host_uuid)
    _require_manager(ctx, "set warm pools")
    _checked(template, size, row)
    known = set(row["warm_pool_targets"] or {}) | set(reported_targets(row["warm_pools"]))
    if template not in known and len(known) >= MAX_POOLS:
        raise InvalidRequest(f"a host keeps at most {MAX_POOLS} pools; set one of its pools to 0 first")
    chain, owner = await _chain(engine, row, template)
    async with _sizes_changing(host_uuid):
        reported = None
        if row["status"] == "online" and row["address"]:
            reported = await _apply(engine, pool.get(row), host_uuid, store, template, size, chain, owner)
        updated = await _store_size(engine, ctx, host_uuid, template, size, reported)
    log.info(
        "warm pool set host=%s template=%s size=%d applied=%s", host_id, template, size, reported is not None
    )
    return host_model(updated)


async def _store_size(
    engine: AsyncEngine,
    ctx: AuthContext,
    host_uuid: uuid.UUID,
    template: str,
    size: int,
    reported: list[dict[str, Any]] | None,
) -> Any:
    merged = sa.type_coerce(hosts.c.warm_pool_targets, JSONB).op("||", return_type=JSONB)(
        sa.func.jsonb_build_object(sa.literal(template, sa.Text), sa.literal(size, sa.Integer))
    )
    values: dict[str, Any] = {"warm_pool_targets": merged}
    if reported is not None:
        values["warm_pools"] = reported
    stmt = hosts.update().where(hosts.c.id == host_uuid).values(**values).returning(*hosts.c)
    async with transaction(engine) as conn:
        updated = (await conn.execute(stmt)).mappings().first()
        if updated is None:
            raise NotFound("host not found")
        await _audit_host(conn, ctx, updated, "set_warm_pool", {"template": template, "size": size})
    return updated


def stale_targets(targets: dict[str, int] | None, reported: list[dict[str, Any]] | None) -> dict[str, int]:
    """The sizes set through the API that the agent's report does not show (a restarted agent
    reports its flag's pools; one that never reported pools is left alone)."""
    if reported is None or not targets:
        return {}
    have = reported_targets(reported)
    return {t: n for t, n in targets.items() if have.get(t, 0) != n}


async def reapply_after_heartbeat(
    engine: AsyncEngine,
    pool: HostClientPool,
    store: LayerStore | None,
    host_uuid: uuid.UUID,
    reported: list[dict[str, Any]] | None,
) -> None:
    """When a host reported pools other than the sizes set through the API (its agent
    restarted), apply those sizes again, in the background: the heartbeat is answered at once,
    and a host has one application running at a time, at most one every ``REAPPLY_EVERY_S``."""
    now = time.monotonic()
    if (
        reported is None
        or host_uuid in _reapplying
        or host_uuid in _setting
        or now - _reapplied_at.get(host_uuid, -1e9) < REAPPLY_EVERY_S
    ):
        return
    async with autocommit(engine) as conn:
        row = (await conn.execute(sa.select(hosts).where(hosts.c.id == host_uuid))).mappings().first()
    if row is None or not (stale := stale_targets(row["warm_pool_targets"], reported)):
        return
    if len(_reapplied_at) > 4096:  # hosts long gone
        for gone in [h for h, t in _reapplied_at.items() if now - t >= REAPPLY_EVERY_S]:
            del _reapplied_at[gone]
    _reapplied_at[host_uuid] = now
    task = asyncio.create_task(_reapply(engine, pool, store, row, stale))
    _reapplying[host_uuid] = task
    task.add_done_callback(lambda _t: _reapplying.pop(host_uuid, None))


async def _reapply(
    engine: AsyncEngine, pool: HostClientPool, store: LayerStore | None, row: Any, stale: dict[str, int]
) -> None:
    host_uuid = row["id"]
    for template, size in sorted(stale.items()):
        if host_uuid in _setting:
            return  # sizes being set through the API now: the next heartbeat shows what is left
        try:
            chain, owner = await _chain(engine, row, template)
            reported = await _apply(engine, pool.get(row), host_uuid, store, template, size, chain, owner)
        except (AgentError, NotFound, InvalidRequest, ServiceUnavailable) as e:
            # Tried again at the next heartbeat that still shows the difference (a host with
            # no install turn for the layers within the wait: layer_install_busy).
            log.warning(
                "warm pool: applying %s=%d on %s failed: %s", template, size, ids.host_id(host_uuid), e
            )
            continue
        except Exception:
            log.exception("warm pool: applying %s=%d on %s failed", template, size, ids.host_id(host_uuid))
            continue
        async with autocommit(engine) as conn:
            await conn.execute(hosts.update().where(hosts.c.id == host_uuid).values(warm_pools=reported))
        log.info(
            "warm pool applied again host=%s template=%s size=%d", ids.host_id(host_uuid), template, size
        )
