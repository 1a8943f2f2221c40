"""Garbage collection of layers (docs/templates.md §3): layers nothing references go from the
template store, from the ``layers`` index and from hosts.

A layer is **live** while a ``templates`` row or a ``build_cache`` row names it (a build in
flight records each step's layer there), or a sandbox on an online host runs on it (the agents'
``ListLayers`` says ``in_use``; this also covers a template deleted while its sandboxes run).
A BYOC host's agent is its tenant's and says what it likes: its ``in_use`` keeps a layer only
if its team may use it (a template of the team's, or one the team's sandboxes run); any other
digest it names, another team's layer included, is collected as if unclaimed.
A dead layer goes only once it is older than the grace period (``WARREN_LAYER_GC_GRACE_S``): a
layer just written, whose template row is not written yet, is safe. Recording a layer again
(:func:`layers.record_layer`) makes it young again. A ``build_cache`` row no build has hit for
``WARREN_BUILD_CACHE_TTL_S`` is dropped first (a hit moves its ``used_at``), so a cache that is
no longer used stops keeping its layers, which then age out like any other.

One replica collects at a time (a session advisory lock); each layer's delete holds that
layer's advisory lock, which :func:`layers.record_layer` takes too, so a layer written again
while it is collected is either kept (recorded first) or found gone by its writer (recorded
after), never recorded over a deleted object. Hosts delete what they hold but only what is
dead, and keep what their sandboxes use whatever the CP thinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.aio import every
from warren.config import Settings
from warren.cp.background import Worker
from warren.cp.db import locks
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import (
    build_cache,
    host_layers,
    hosts,
    layers,
    sandboxes,
    team_store_layers,
    templates,
)
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.services.layers import layer_lock
from warren.cp.store import LayerStore, is_digest
from warren.errors import AgentError
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.layer_gc")

# The one collector's lock key (the namespace is locks.LAYER_GC_NS).
_GC_KEY = uuid.UUID(int=0)
_LIST_TIMEOUT_S = 30.0
# Layers one host's ListLayers may name: far more than a host caches, and what one statement can
# record (3 parameters a row, PostgreSQL takes 32767). A BYOC host's agent is its tenant's: 12 000
# made-up digests failed every collection of the platform; a longer answer is not believed.
MAX_HOST_LAYERS = 10_000
_DELETE_TIMEOUT_S = 120.0


@dataclass
class GcReport:
    ran: bool = False  # False: another replica held the lock
    store_deleted: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)  # store objects the index did not know
    cache_pruned: int = 0  # build_cache rows unused past the TTL, dropped
    host_deleted: dict[str, list[str]] = field(default_factory=dict)  # host id → digests
    host_in_use: dict[str, list[str]] = field(default_factory=dict)  # dead, kept by the host
    not_believed: dict[str, int] = field(default_factory=dict)  # BYOC host id → in_use claims ignored


async def collect(
    engine: AsyncEngine,
    store: LayerStore,
    pool: HostClientPool,
    *,
    grace_s: float,
    cache_ttl_s: float | None = None,
) -> GcReport:
    """One collection (callable directly, e.g. by tests): build cache rows unused for
    ``cache_ttl_s`` dropped (None: none), what hosts hold, what is live, then the dead layers
    older than ``grace_s`` deleted from the store, the index and the hosts."""
    report = GcReport()
    async with locks.held(engine, locks.LAYER_GC_NS, _GC_KEY) as got:
        if not got:
            return report
        report.ran = True
        cutoff = clock.now() - timedelta(seconds=grace_s)
        if cache_ttl_s is not None:
            report.cache_pruned = await _prune_cache(engine, clock.now() - timedelta(seconds=cache_ttl_s))
        online = await _online_hosts(engine)
        answers = await asyncio.gather(*(_list(pool, h) for h in online))
        held = dict(zip([h["id"] for h in online], answers, strict=True))
        in_use = await _believed_in_use(engine, online, held, report)
        for host_id, layer_map in held.items():
            if layer_map is not None:
                await _reconcile(engine, host_id, layer_map)
        await _forget_gone_hosts(engine)
        report.adopted = await _adopt_orphans(engine, store)
        live = await _referenced(engine) | in_use
        for digest in await _dead_in_index(engine, live, cutoff):
            if await _delete_from_store(engine, store, digest, cutoff):
                report.store_deleted.append(digest)
        await _forget_team_layers(engine)
        for h in online:
            layer_map = held[h["id"]]
            if layer_map:
                await _delete_on_host(engine, pool, h, layer_map, live, cutoff, report)
    if report.store_deleted or report.host_deleted or report.cache_pruned:
        log.info(
            "layer gc: %d deleted from the store, %d from hosts, %d build cache entries expired",
            len(report.store_deleted),
            sum(len(v) for v in report.host_deleted.values()),
            report.cache_pruned,
        )
    return report


async def _prune_cache(engine: AsyncEngine, unused_since: object) -> int:
    """Drop the build cache rows no build has hit since ``unused_since``; how many. A build
    that hits a row as it goes bumps ``used_at`` in one statement (a miss if the row went) and
    then records the layer, which makes it young: it is not collected under that build."""
    async with autocommit(engine) as conn:
        result = await conn.execute(sa.delete(build_cache).where(build_cache.c.used_at < unused_since))
    return int(result.rowcount or 0)


async def _online_hosts(engine: AsyncEngine) -> list[RowMapping]:
    async with autocommit(engine) as conn:
        q = sa.select(hosts.c.id, hosts.c.address, hosts.c.type, hosts.c.team_id).where(
            hosts.c.status == "online", hosts.c.address != ""
        )
        return list((await conn.execute(q)).mappings().all())


async def _list(pool: HostClientPool, host: RowMapping) -> dict[str, bool] | None:
    """What the host holds (digest → in use); None when it did not answer."""
    try:
        resp = await pool.get(host).stub.ListLayers(pb.ListLayersRequest(), timeout=_LIST_TIMEOUT_S)
    except AgentError as e:
        log.warning("layer gc: ListLayers on %s failed: %s", ids.host_id(host["id"]), e)
        return None
    if len(resp.layers) > MAX_HOST_LAYERS:
        log.warning(
            "layer gc: %s listed %d layers, more than %d: skipped", ids.host_id(host["id"]),
            len(resp.layers), MAX_HOST_LAYERS,
        )  # fmt: skip
        return None
    return {li.digest: li.in_use for li in resp.layers if is_digest(li.digest)}


async def _believed_in_use(
    engine: AsyncEngine,
    online: list[RowMapping],
    held: dict[uuid.UUID, dict[str, bool] | None],
    report: GcReport,
) -> set[str]:
    """The layers the hosts' sandboxes use, as far as each host is believed: a platform host's
    ``in_use`` whole, a BYOC host's only for layers its own team may use (``_team_layers``):
    pinning any digest it knows (another team's layer) cost the store its space for ever."""
    used: set[str] = set()
    for h in online:
        claims = {d for d, in_use in (held[h["id"]] or {}).items() if in_use}
        if h["type"] != "byoc" or not claims:
            used |= claims
            continue
        believed = claims & await _team_layers(engine, h["team_id"])
        used |= believed
        if ignored := len(claims) - len(believed):
            report.not_believed[ids.host_id(h["id"])] = ignored
            log.warning("layer gc: %s claims %d layers its team does not use", ids.host_id(h["id"]), ignored)
    return used


async def _team_layers(engine: AsyncEngine, team_id: uuid.UUID) -> set[str]:
    """Layers of the team's templates and of the templates its sandboxes (not yet final) run."""
    running = sa.select(sandboxes.c.template_id).where(
        sandboxes.c.team_id == team_id,
        sandboxes.c.template_id.is_not(None),
        sandboxes.c.status.not_in(("stopped", "error")),
    )
    q = sa.select(sa.func.unnest(templates.c.layers).label("digest")).where(
        sa.or_(templates.c.team_id == team_id, templates.c.id.in_(running))
    )
    async with autocommit(engine) as conn:
        return {r.digest for r in await conn.execute(q)}


async def _reconcile(engine: AsyncEngine, host_id: uuid.UUID, layer_map: dict[str, bool]) -> None:
    """``host_layers`` for this host becomes what it says it holds: new rows start their grace
    now (a layer a build step just left on its host is not collected at once)."""
    async with transaction(engine) as conn:
        rows = await conn.execute(sa.select(host_layers.c.digest).where(host_layers.c.host_id == host_id))
        known = {r.digest for r in rows}
        gone = known - layer_map.keys()
        if gone:
            await conn.execute(
                sa.delete(host_layers).where(host_layers.c.host_id == host_id, host_layers.c.digest.in_(gone))
            )
        new = [{"host_id": host_id, "digest": d, "fetched_at": clock.now()} for d in layer_map.keys() - known]
        if new:
            await conn.execute(pg_insert(host_layers).values(new).on_conflict_do_nothing())


async def _forget_gone_hosts(engine: AsyncEngine) -> None:
    async with autocommit(engine) as conn:
        await conn.execute(sa.delete(host_layers).where(~host_layers.c.host_id.in_(sa.select(hosts.c.id))))


async def _adopt_orphans(engine: AsyncEngine, store: LayerStore) -> list[str]:
    """Store objects the index lacks (a writer that died between its put and its record) are
    indexed as new, so they age like any layer and go a grace period later if still dead."""
    stored = [d async for d in store.list()]
    if not stored:
        return []
    async with autocommit(engine) as conn:
        rows = await conn.execute(sa.select(layers.c.digest).where(layers.c.digest.in_(stored)))
        orphans = sorted(set(stored) - {r.digest for r in rows})
    adopted = []
    for digest in orphans:
        with contextlib.suppress(Exception):  # gone meanwhile: nothing to adopt
            size = await store.size(digest)
            async with autocommit(engine) as conn:
                stmt = pg_insert(layers).values(digest=digest, size_bytes=size, created_at=clock.now())
                await conn.execute(stmt.on_conflict_do_nothing())
            adopted.append(digest)
    return adopted


async def _forget_team_layers(engine: AsyncEngine) -> None:
    """Teams' counts of layers no longer in the store (services/team_store.py drops a team's own
    at its next write; this covers teams that write no more)."""
    t = team_store_layers
    gone = ~sa.exists().where(layers.c.digest == t.c.digest)
    async with autocommit(engine) as conn:
        await conn.execute(sa.delete(t).where(t.c.digest.is_not(None), gone))


async def _referenced(engine: AsyncEngine) -> set[str]:
    """Layers a template version or a build cache entry names."""
    async with autocommit(engine) as conn:
        tpl = sa.select(sa.func.unnest(templates.c.layers).label("digest"))
        cache = sa.select(build_cache.c.layer.label("digest"))
        rows = await conn.execute(sa.union(tpl, cache))
        return {r.digest for r in rows}


async def _dead_in_index(engine: AsyncEngine, live: set[str], cutoff: object) -> list[str]:
    async with autocommit(engine) as conn:
        rows = await conn.execute(sa.select(layers.c.digest).where(layers.c.created_at < cutoff))
        return [r.digest for r in rows if r.digest not in live]


async def _delete_from_store(engine: AsyncEngine, store: LayerStore, digest: str, cutoff: object) -> bool:
    """Under the layer's lock: its index row goes if it is still old and unreferenced (checked
    again in the statement), then its object. Whether it went."""
    async with transaction(engine) as conn:
        await layer_lock(conn, digest)
        still_dead = (
            sa.delete(layers)
            .where(
                layers.c.digest == digest,
                layers.c.created_at < cutoff,
                ~sa.exists().where(sa.literal(digest) == sa.any_(templates.c.layers)),
                ~sa.exists().where(build_cache.c.layer == digest),
            )
            .returning(layers.c.digest)
        )
        if (await conn.execute(still_dead)).first() is None:
            return False
        await store.delete(digest)  # before the commit: a failure keeps the row for next time
    return True


async def _delete_on_host(
    engine: AsyncEngine,
    pool: HostClientPool,
    host: RowMapping,
    layer_map: dict[str, bool],
    live: set[str],
    cutoff: object,
    report: GcReport,
) -> None:
    """``DeleteLayers`` for the host's dead layers that it has held for longer than the grace
    period and that are not young in the index; it keeps (and names) those in use."""
    candidates = [d for d, used in layer_map.items() if not used and d not in live]
    if not candidates:
        return
    async with autocommit(engine) as conn:
        young_here = sa.select(host_layers.c.digest).where(
            host_layers.c.host_id == host["id"],
            host_layers.c.digest.in_(candidates),
            host_layers.c.fetched_at >= cutoff,
        )
        young = sa.select(layers.c.digest).where(
            layers.c.digest.in_(candidates), layers.c.created_at >= cutoff
        )
        keep = {r.digest for r in await conn.execute(sa.union(young_here, young))}
    dead = [d for d in candidates if d not in keep]
    if not dead:
        return
    hid = ids.host_id(host["id"])
    try:
        resp = await pool.get(host).stub.DeleteLayers(
            pb.DeleteLayersRequest(digests=dead), timeout=_DELETE_TIMEOUT_S
        )
    except AgentError as e:
        log.warning("layer gc: DeleteLayers on %s failed: %s", hid, e)
        return
    deleted = [d for d in resp.deleted if d in set(dead)]
    if deleted:
        async with autocommit(engine) as conn:
            await conn.execute(
                sa.delete(host_layers).where(
                    host_layers.c.host_id == host["id"], host_layers.c.digest.in_(deleted)
                )
            )
        report.host_deleted[hid] = deleted
    if resp.in_use:
        report.host_in_use[hid] = list(resp.in_use)


class LayerGC(Worker):
    """The worker: :func:`collect` every ``layer_gc_interval_s`` (the first a full interval after
    start), on whichever replica gets the lock."""

    task_name = "layer-gc"

    def __init__(
        self, engine: AsyncEngine, store: LayerStore, pool: HostClientPool, settings: Settings
    ) -> None:
        self.engine, self.store, self.pool = engine, store, pool
        self.interval_s = settings.layer_gc_interval_s
        self.grace_s = settings.layer_gc_grace_s
        self.cache_ttl_s = settings.build_cache_ttl_s

    async def run_once(self) -> GcReport:
        return await collect(
            self.engine, self.store, self.pool, grace_s=self.grace_s, cache_ttl_s=self.cache_ttl_s
        )

    async def _loop(self) -> None:
        await every(self.interval_s, self.run_once, log, "layer-gc")
