"""Layers in the template store and on hosts (docs/templates.md §2, §3): the ``layers`` index,
and bringing a chain's layers to a host before a sandbox is created there.

A host that lacks a layer gets it pushed by the CP over its mTLS channel (``PutLayer``, the
store's bytes streamed in 1 MiB messages). The agent hashes every byte and refuses a mismatch
with ``DATA_LOSS``, keeping nothing: then the store's copy is corrupt, the create fails with 500
``layer_corrupt`` naming the layer, and the host is not recorded as holding it.

A host installs a few layers at once and queues the rest, in fair turns between teams
(``agent/layer_slots.py``): a push names its team, sends the layer's ``meta`` and waits for the
agent's word (the call's initial metadata) before its first chunk, so a queued push holds no
bytes in flight; a host whose queue is full for the team answers ``install_queue_full``, and the
push is tried again after a pause, while its queue time lasts.

How long a push may wait for its turn (``TurnWait``, docs/templates.md §2 "Waiting for a turn"):
a create holds its client's HTTP request meanwhile, so it waits at most ``layer_turn_wait_s`` (60 s)
for all its layers' turns, on all the hosts it tries; past that the host is busy
(:class:`LayerInstallBusy`: the create tries another eligible host, or answers 503
``layer_install_busy`` with ``Retry-After``). A team has at most ``layer_turn_waiters_per_team``
creates' pushes waiting for turns in this process; the next one is 503 at once, so one team's
flood of distinct layers holds a bounded number of requests and never counts against another
team (creates of a layer that is being pushed to their host wait for that push, uncounted). Builds and
warm-pool pushes (no client waiting on them) wait up to ``BACKGROUND_WAIT_S``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from weakref import WeakValueDictionary

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock
from warren.config import Settings
from warren.cp.db import locks
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import host_layers, layers
from warren.cp.hosts.client_pool import HostClient
from warren.cp.services import layer_repush
from warren.cp.store import LayerStore, check_digest
from warren.errors import AgentError, InternalError, NotFound, ServiceUnavailable
from warren.layers import LayerMeta
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.layers")

# A push's deadline: a minute, plus the layer's bytes at a pessimistic 20 MB/s, once the host
# has admitted it; before that it may wait in the host's install queue (or retry a full one)
# for as long as its TurnWait allows.
_PUSH_BASE_S = 60.0
_PUSH_MIN_RATE = 20 * 1000 * 1000
# A build's or a warm pool's pushes: nobody's HTTP request waits on them.
BACKGROUND_WAIT_S = 900.0
# What a busy host's 503 tells the client to wait before trying again.
BUSY_RETRY_AFTER_S = 10.0
# A create whose first host was busy past its wait still gives the next host this long.
_FURTHER_HOST_WAIT_S = 5.0
_BUSY_PAUSE_S = (0.5, 5.0)  # the first pause after `install_queue_full`, the longest
_HAS_TIMEOUT_S = 30.0
# What the agent's layer_slots module says (the CP does not import the agent's code).
_ADMITTED_KEY = "warren-layer-admitted"
_BUSY_PREFIX = "install_queue_full"

# One push of a layer to a host at a time in this process: creates that need the same missing
# layer on the same host wait for the first push instead of sending the bytes twice.
_pushing: WeakValueDictionary[tuple[uuid.UUID, str], asyncio.Lock] = WeakValueDictionary()
# Creates' pushes waiting for a turn (not yet admitted by their host) in this process, per team.
_waiting: Counter[str] = Counter()


class LayerInstallBusy(ServiceUnavailable):
    """A host had no install turn for the layer within the wait allowed (503, ``Retry-After``)."""

    code = "layer_install_busy"

    def __init__(self, message: str, *, team_full: bool = False) -> None:
        super().__init__(message)
        self.retry_after = BUSY_RETRY_AFTER_S
        # The team's own count of waiting creates was full (no host was asked).
        self.team_full = team_full


@dataclass(frozen=True)
class TurnWait:
    """How long pushes may wait for their install turns, in all (``seconds``), and how many of
    a team's may wait at once in this process (``per_team``; 0: not counted)."""

    seconds: float = BACKGROUND_WAIT_S
    per_team: int = 0


@contextmanager
def _counted(team: str, per_team: int) -> Iterator[Callable[[], None]]:
    """A waiting push counted against its team's ``per_team`` (``LayerInstallBusy`` past it);
    yields the call that stops counting it (once its host admitted it)."""
    if not per_team:
        yield lambda: None
        return
    if _waiting[team] >= per_team:
        raise LayerInstallBusy(
            f"this team has {per_team} sandbox creates waiting for layer installs already; "
            f"retry in {BUSY_RETRY_AFTER_S:.0f} s",
            team_full=True,
        )
    _waiting[team] += 1
    counted = True

    def done() -> None:
        nonlocal counted
        if counted:
            counted = False
            _waiting[team] -= 1
            if _waiting[team] <= 0:
                del _waiting[team]

    try:
        yield done
    finally:
        done()


def create_wait(settings: Settings, until: float | None = None) -> TurnWait:
    """A create's wait on one host: ``layer_turn_wait_s``, or what is left of it (``until``,
    the loop's time, when an earlier host was busy) but at least ``_FURTHER_HOST_WAIT_S``."""
    seconds, per_team = settings.layer_turn_wait_s, settings.layer_turn_waiters_per_team
    if until is None:
        return TurnWait(seconds, per_team)
    left = until - asyncio.get_running_loop().time()
    return TurnWait(max(left, min(seconds, _FURTHER_HOST_WAIT_S)), per_team)


def busy(digest: str, waited_s: float) -> LayerInstallBusy:
    return LayerInstallBusy(
        f"the host had no layer install turn for layer {digest} within {waited_s:.0f} s (other "
        f"installs are running there); retry in {BUSY_RETRY_AFTER_S:.0f} s"
    )


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
    *,
    team: uuid.UUID | None = None,
    account: uuid.UUID | None = None,
    wait: TurnWait = TurnWait(),
) -> list[str]:
    """Make sure the host holds every layer of ``digests``: ask it which it lacks
    (``HasLayers``), push those from the store one by one (in ``team``'s turns on the host, its
    owning ``account``'s when given, waiting for them ``wait.seconds`` in all), and record the
    host as holding them all. Returns the digests pushed. 500 ``layer_corrupt`` when the store's
    bytes of a layer do not hash to its name, 500 ``layer_missing`` when the store lacks it, 503
    ``layer_install_busy`` past the wait; the layers pushed before that one stay recorded."""
    wanted = [check_digest(d) for d in dict.fromkeys(digests)]
    if not wanted:
        return []
    until = asyncio.get_running_loop().time() + wait.seconds
    has = await client.stub.HasLayers(pb.HasLayersRequest(digests=wanted), timeout=_HAS_TIMEOUT_S)
    lacking = set(has.missing)
    missing = [d for d in wanted if d in lacking]
    present = [d for d in wanted if d not in lacking]
    await record_on_host(engine, host_id, present)
    await layer_repush.refuse_repush(engine, host_id, missing)  # a BYOC host asking again (session 14)
    known = await sizes(engine, missing)
    for digest in missing:
        await push_layer(
            store, client, host_id, digest, known.get(digest),
            team=team, account=account, admits=has.admits, until=until, per_team=wait.per_team,
        )  # fmt: skip
        await layer_repush.note_pushed(engine, host_id, digest)
    return missing


async def push_layer(
    store: LayerStore,
    client: HostClient,
    host_id: uuid.UUID,
    digest: str,
    size: int | None = None,
    *,
    team: uuid.UUID | None = None,
    account: uuid.UUID | None = None,
    admits: bool = False,
    until: float | None = None,
    per_team: int = 0,
) -> bool:
    """``PutLayer`` from the store to one host (1 MiB messages); whether the bytes were
    installed (False: the host had it already). The caller records it on the host. ``admits``:
    the host's ``HasLayers`` said it takes installs in turns (wait for its word, retry a full
    queue). The wait for a turn (and for another push of the same layer to the same host) ends
    at ``until`` (the loop's time; default ``BACKGROUND_WAIT_S`` from now) with
    ``LayerInstallBusy``; ``per_team``: see ``TurnWait`` (counted by ``account`` when given: all
    the teams one account owns together, as the host's turns)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + BACKGROUND_WAIT_S if until is None else until
    who, owner = str(team) if team else "", str(account) if account else ""
    started = loop.time()
    lock = _pushing.get((host_id, digest))
    if lock is None:
        lock = _pushing[(host_id, digest)] = asyncio.Lock()
    waited = lock.locked()
    try:
        async with asyncio.timeout_at(until):
            await lock.acquire()
    except TimeoutError:
        raise busy(digest, loop.time() - started) from None
    try:
        if waited and not await _lacks(client, digest):
            return False  # the push this one waited for brought it
        if size is None:
            size = await _stored_size(store, digest)
        # Counted from here: creates of a layer another create is pushing to this host wait
        # for that push, uncounted (they hold no turn; the team's sandbox quota bounds them).
        with _counted(owner or who, per_team) as admitted:
            whose = pb.LayerMeta(team_id=who, owner_account_id=owner)
            push = _Push(store, client, digest, size, whose, admits, admitted)
            installed = await _push_in_turn(push, host_id, started, until if admits else loop.time())
    finally:
        lock.release()
    log.info("layer pushed digest=%s bytes=%d host=%s new=%s", digest, size, host_id, installed)
    return installed


async def _push_in_turn(push: _Push, host_id: uuid.UUID, started: float, until: float) -> bool:
    """``push`` once the host admits it, tried again while its queue is full, until ``until``."""
    loop = asyncio.get_running_loop()
    pause = _BUSY_PAUSE_S[0]
    while True:
        try:
            return await push.once(max(until - loop.time(), 0.0))
        except AgentError as e:
            if e.rpc_code == "DATA_LOSS":
                log.error("layer %s in the store is corrupt (host %s refused it)", push.digest, host_id)
                raise corrupt(push.digest) from e
            if not _busy(e):
                raise
            if loop.time() + pause > until:
                raise busy(push.digest, loop.time() - started) from e
        log.info("layer push waits: host %s install queue full digest=%s", host_id, push.digest)
        await asyncio.sleep(pause)
        pause = min(pause * 2, _BUSY_PAUSE_S[1])


class _Push:
    """One ``PutLayer`` call of a layer from the store (tried again when the host's install
    queue is full)."""

    def __init__(
        self,
        store: LayerStore,
        client: HostClient,
        digest: str,
        size: int,
        owner: pb.LayerMeta,  # whose turn: its team_id and owner_account_id
        admits: bool,
        admitted: Callable[[], None],
    ) -> None:
        self.store, self.client, self.digest, self.size = store, client, digest, size
        self.owner, self.admits, self.admitted = owner, admits, admitted

    async def once(self, queue_s: float) -> bool:
        transfer_s = _PUSH_BASE_S + self.size / _PUSH_MIN_RATE
        # The first read happens here, so a layer the store lacks fails before the RPC starts
        # (an exception inside gRPC's request iterator would only cancel the call).
        chunks = aiter(self.store.open(self.digest))
        try:
            first = await anext(chunks, b"")
        except NotFound as e:
            raise missing_from_store(self.digest) from e
        # True: send the chunks (the host admitted the install); False: the call ended first.
        go: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if not self.admits:
            self.admitted()
            go.set_result(True)
        meta = pb.LayerMeta(digest=self.digest, size=self.size)
        meta.MergeFrom(self.owner)
        try:
            call = self.client.stub.PutLayer(
                _put_messages(meta, first, chunks, go), timeout=queue_s + transfer_s
            )
            if self.admits:
                await self._admission(call, queue_s, go)
            resp = await call
        finally:
            if not go.done():
                go.set_result(False)
                await _close(chunks)  # never iterated past the first chunk: nothing reads it
        return bool(resp.installed)

    async def _admission(self, call: Any, queue_s: float, go: asyncio.Future[bool]) -> None:
        """Wait for the agent's word that the install has its slot, or the end of the call (the
        layer was there, or an error): either way its initial metadata."""
        try:
            async with asyncio.timeout(queue_s):
                md = await call.initial_metadata()
        except TimeoutError:
            call.cancel()
            raise busy(self.digest, queue_s) from None
        if md is not None and _ADMITTED_KEY in dict(md):
            self.admitted()  # no longer waiting: the team's count of waiting pushes drops
            go.set_result(True)


def _busy(e: AgentError) -> bool:
    return e.rpc_code == "RESOURCE_EXHAUSTED" and e.message.startswith(_BUSY_PREFIX)


async def _close(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


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
        team: uuid.UUID | None = None,
        wait: TurnWait = TurnWait(),
        account: uuid.UUID | None = None,
    ) -> None:
        self.engine, self.store, self.client, self.host_id = engine, store, client, host_id
        self.team, self.wait, self.account = team, wait, account
        self._until: float | None = None  # the end of its wait, set at its first push
        self.chain = chain
        self.missing: list[str] = list(missing or ()) if chain is not None else []

    def wants_retry(self, e: AgentError) -> bool:
        return (
            self.chain is not None and e.rpc_code == "FAILED_PRECONDITION" and "missing layers" in e.message
        )

    async def bring(self, digests: Sequence[str]) -> None:
        if self.store is None:
            raise InternalError("no template store is configured to fetch layers from", code="layer_missing")
        now = asyncio.get_running_loop().time()
        if self._until is None:
            self._until = now + self.wait.seconds
        # Both pushes of a create (before its RPC, and after a `missing layers`) share one wait.
        wait = TurnWait(max(self._until - now, 0.0), self.wait.per_team)
        await ensure_on_host(
            self.engine,
            self.store,
            self.client,
            self.host_id,
            digests,
            team=self.team,
            account=self.account,
            wait=wait,
        )


async def _lacks(client: HostClient, digest: str) -> bool:
    has = await client.stub.HasLayers(pb.HasLayersRequest(digests=[digest]), timeout=_HAS_TIMEOUT_S)
    return digest in has.missing


async def _stored_size(store: LayerStore, digest: str) -> int:
    try:
        return await store.size(digest)
    except NotFound as e:
        raise missing_from_store(digest) from e


async def _put_messages(
    meta: pb.LayerMeta, first: bytes, rest: AsyncIterator[bytes], go: asyncio.Future[bool]
) -> AsyncIterator[pb.PutLayerRequest]:
    yield pb.PutLayerRequest(meta=meta)
    if not await go:  # the bytes only once the host admitted the install
        return
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
