"""Layers in the template store and on hosts (docs/templates.md §2, §3): the ``layers`` index,
and bringing a chain's layers to a host before a sandbox is created there.

A host that lacks a layer gets it pushed by the CP over its mTLS channel (``PutLayer``, the
store's bytes streamed in 1 MiB messages). The agent hashes every byte and refuses a mismatch
with ``DATA_LOSS``, keeping nothing: then the store's copy is corrupt, the create fails with 500
``layer_corrupt`` naming the layer, and the host is not recorded as holding it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from weakref import WeakValueDictionary

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock
from warren.cp.db import locks
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import host_layers, layers
from warren.cp.hosts.client_pool import HostClient
from warren.cp.store import LayerStore, check_digest
from warren.errors import AgentError, InternalError, NotFound, ServiceUnavailable
from warren.layers import LayerMeta
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.layers")

# A push's deadline: a minute, plus the layer's bytes at a pessimistic 20 MB/s.
_PUSH_BASE_S = 60.0
_PUSH_MIN_RATE = 20 * 1000 * 1000
_HAS_TIMEOUT_S = 30.0

# One push of a layer to a host at a time in this process: creates that need the same missing
# layer on the same host wait for the first push instead of sending the bytes twice.
_pushing: WeakValueDictionary[tuple[uuid.UUID, str], asyncio.Lock] = WeakValueDictionary()


def config_proto(config: Mapping[str, Any] | str | None) -> pb.TemplateConfig:
    """A ``templates.config`` value (JSON object, or its text) as the agent's TemplateConfig."""
    c: Mapping[str, Any] = json.loads(config) if isinstance(config, str) else (config or {})
    env = c.get("env") or {}
    return pb.TemplateConfig(
        env={str(k): str(v) for k, v in env.items()},
        workdir=str(c.get("workdir") or ""),
        user=str(c.get("user") or ""),
        start_cmd=str(c.get("start_cmd") or ""),
        ready_cmd=str(c.get("ready_cmd") or ""),
        ready_timeout_sec=int(c.get("ready_timeout_sec") or 0),
    )


def chain_of(
    base: str, layer_digests: Sequence[str], config: Mapping[str, Any] | str | None
) -> pb.TemplateChain | None:
    """The chain a sandbox of this template version starts from; None for plain ``minimal`` (no
    layers, no config: ``minimal`` itself and snapshots taken before the template store), which
    keeps the host-local path."""
    cfg = config_proto(config)
    if not layer_digests and base == "minimal" and cfg == pb.TemplateConfig():
        return None
    return pb.TemplateChain(base=base, layers=list(layer_digests), config=cfg)


async def layer_lock(conn: AsyncConnection, digest: str) -> None:
    """The layer's advisory lock, until the transaction ends: a record and a collection of the
    same layer never interleave (services/layer_gc.py)."""
    key = int(check_digest(digest)[:8], 16) - (1 << 31)  # a signed 32-bit int
    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(locks.LAYER_NS, key)))


async def record_layer(engine: AsyncEngine, meta: LayerMeta, *, store: LayerStore | None = None) -> None:
    """Index a layer the store now holds (call it after ``store.put``). Recording it again moves
    ``created_at`` to now: the garbage collector leaves layers younger than its grace period
    alone, so a layer written again by a build in flight is safe even if an older copy had gone
    unreferenced. With ``store``, the object is checked under the layer's lock: if a collection
    removed it between the put and this record, 503 ``layer_collected`` (put it again)."""
    check_digest(meta.digest)
    now = clock.now()
    stmt = pg_insert(layers).values(digest=meta.digest, size_bytes=meta.size, created_at=now)
    stmt = stmt.on_conflict_do_update(index_elements=[layers.c.digest], set_={"created_at": now})
    async with transaction(engine) as conn:
        await layer_lock(conn, meta.digest)
        await conn.execute(stmt)
        if store is not None and not await store.exists(meta.digest):
            raise ServiceUnavailable(
                f"layer {meta.digest} was garbage-collected while it was written; retry",
                code="layer_collected",
            )


async def record_on_host(engine: AsyncEngine, host_id: uuid.UUID, digests: Sequence[str]) -> None:
    """Note that ``host_id`` holds ``digests`` (for the scheduler's preference and host GC)."""
    if not digests:
        return
    now = clock.now()
    rows = [{"host_id": host_id, "digest": d, "fetched_at": now} for d in dict.fromkeys(digests)]
    async with autocommit(engine) as conn:
        await conn.execute(pg_insert(host_layers).values(rows).on_conflict_do_nothing())


async def forget_on_host(engine: AsyncEngine, host_id: uuid.UUID, digests: Sequence[str]) -> None:
    if not digests:
        return
    async with autocommit(engine) as conn:
        await conn.execute(
            sa.delete(host_layers).where(host_layers.c.host_id == host_id, host_layers.c.digest.in_(digests))
        )


async def sizes(engine: AsyncEngine, digests: Sequence[str]) -> dict[str, int]:
    """The indexed layers among ``digests`` and their sizes."""
    if not digests:
        return {}
    async with autocommit(engine) as conn:
        rows = await conn.execute(
            sa.select(layers.c.digest, layers.c.size_bytes).where(layers.c.digest.in_(digests))
        )
        return {r.digest: int(r.size_bytes) for r in rows}


async def ensure_on_host(
    engine: AsyncEngine,
    store: LayerStore,
    client: HostClient,
    host_id: uuid.UUID,
    digests: Sequence[str],
) -> list[str]:
    """Make sure the host holds every layer of ``digests``: ask it which it lacks
    (``HasLayers``), push those from the store one by one, and record the host as holding them
    all. Returns the digests pushed. 500 ``layer_corrupt`` when the store's bytes of a layer do
    not hash to its name, 500 ``layer_missing`` when the store lacks it; the layers pushed
    before that one stay recorded."""
    wanted = [check_digest(d) for d in dict.fromkeys(digests)]
    if not wanted:
        return []
    has = await client.stub.HasLayers(pb.HasLayersRequest(digests=wanted), timeout=_HAS_TIMEOUT_S)
    lacking = set(has.missing)
    missing = [d for d in wanted if d in lacking]
    present = [d for d in wanted if d not in lacking]
    await record_on_host(engine, host_id, present)
    known = await sizes(engine, missing)
    for digest in missing:
        await push_layer(store, client, host_id, digest, known.get(digest))
        await record_on_host(engine, host_id, [digest])
    return missing


async def push_layer(
    store: LayerStore, client: HostClient, host_id: uuid.UUID, digest: str, size: int | None = None
) -> bool:
    """``PutLayer`` from the store to one host (1 MiB messages); whether the bytes were
    installed (False: the host had it already). The caller records it on the host."""
    lock = _pushing.get((host_id, digest))
    if lock is None:
        lock = _pushing[(host_id, digest)] = asyncio.Lock()
    waited = lock.locked()
    async with lock:
        if waited and not await _lacks(client, digest):
            return False  # the push this one waited for brought it
        if size is None:
            size = await _stored_size(store, digest)
        timeout = _PUSH_BASE_S + size / _PUSH_MIN_RATE
        # The first read happens here, so a layer the store lacks fails before the RPC starts
        # (an exception inside gRPC's request iterator would only cancel the call).
        chunks = aiter(store.open(digest))
        try:
            first = await anext(chunks, b"")
        except NotFound as e:
            raise missing_from_store(digest) from e
        try:
            resp = await client.stub.PutLayer(_put_messages(digest, size, first, chunks), timeout=timeout)
        except AgentError as e:
            if e.rpc_code == "DATA_LOSS":
                log.error("layer %s in the template store is corrupt (host %s refused it)", digest, host_id)
                raise corrupt(digest) from e
            raise
        log.info("layer pushed digest=%s bytes=%d host=%s new=%s", digest, size, host_id, resp.installed)
        return bool(resp.installed)


class HostFetch:
    """A create's layers on its host: the ones ``host_layers`` says it lacks (``missing``) are
    pushed before the RPC; if the agent still answers ``missing layers`` (it lost some), the
    caller pushes them all again (:meth:`bring` asks the host first) and retries once."""

    def __init__(
        self,
        engine: AsyncEngine,
        store: LayerStore | None,
        client: HostClient,
        host_id: uuid.UUID,
        chain: pb.TemplateChain | None,
        missing: Sequence[str] | None,
    ) -> None:
        self.engine, self.store, self.client, self.host_id = engine, store, client, host_id
        self.chain = chain
        self.missing: list[str] = list(missing or ()) if chain is not None else []

    def wants_retry(self, e: AgentError) -> bool:
        return (
            self.chain is not None and e.rpc_code == "FAILED_PRECONDITION" and "missing layers" in e.message
        )

    async def bring(self, digests: Sequence[str]) -> None:
        if self.store is None:
            raise InternalError("no template store is configured to fetch layers from", code="layer_missing")
        await ensure_on_host(self.engine, self.store, self.client, self.host_id, digests)


async def _lacks(client: HostClient, digest: str) -> bool:
    has = await client.stub.HasLayers(pb.HasLayersRequest(digests=[digest]), timeout=_HAS_TIMEOUT_S)
    return digest in has.missing


async def _stored_size(store: LayerStore, digest: str) -> int:
    try:
        return await store.size(digest)
    except NotFound as e:
        raise missing_from_store(digest) from e


async def _put_messages(
    digest: str, size: int, first: bytes, rest: AsyncIterator[bytes]
) -> AsyncIterator[pb.PutLayerRequest]:
    yield pb.PutLayerRequest(meta=pb.LayerMeta(digest=digest, size=size))
    if first:
        yield pb.PutLayerRequest(chunk=first)
    async for chunk in rest:
        yield pb.PutLayerRequest(chunk=chunk)


def corrupt(digest: str) -> InternalError:
    return InternalError(
        f"layer {digest} in the template store is corrupt: its bytes do not hash to its name "
        "(the host refused it); rebuild or re-import the template",
        code="layer_corrupt",
    )


def missing_from_store(digest: str) -> InternalError:
    return InternalError(
        f"layer {digest} is missing from the template store; rebuild or re-import the template",
        code="layer_missing",
    )
