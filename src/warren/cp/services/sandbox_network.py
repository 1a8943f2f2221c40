"""Reading and changing a sandbox's egress rules while it exists (``/v1/sandboxes/{id}/network``).

A change replaces the lists it names (a list left out stays as it was), is checked like a
create's (``warren.egress_rules``: 400 naming the bad entry), goes to the sandbox's agent
(``UpdateNetwork``, applied there in one transaction) and then to the row, with an audit entry.
A running or paused sandbox may change; one made with ``internet=false`` may not (409: nothing
leaves it anyway). One change per sandbox at a time across CP replicas (an advisory try-lock:
a second concurrent change is a 409 to retry), so the agent and the row never disagree.

The lock pins one of the process's pooled connections for the agent call, and the agent makes a
tenant's changes wait in line (agent/egress_pace.py: 0.25 s apart). So a change first takes its
turn in this process, holding no connection while it waits: ``PER_TENANT`` in flight per tenant
(the owning account, else the team), at most ``1 / POOL_SHARE`` of the pool in all; a wait longer
than ``UPDATE_TIMEOUT_S`` is a 429 (the tenant's own changes) or 503 (everyone's) to retry.
Before, one tenant PATCHing a dozen sandboxes at once held every connection (each change also
needs a second one for its row): every request of the process waited out the pool's 30 s
(session 24, tests/security/test_attack_session24_network_pool.py).
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from warren.cp.db import locks
from warren.cp.db.engine import transaction
from warren.cp.db.tables import sandboxes
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.services import audit
from warren.cp.services import sandboxes as sandbox_svc
from warren.cp.services.context import AuthContext
from warren.cp.services.egress_rules import NetworkRules, model, stored, to_pb
from warren.egress_rules import parse
from warren.errors import Conflict, InvalidState, ServiceUnavailable, TooManyRequests
from warren.rpc import hostagent_pb2 as pb

_LIVE = ("running", "paused")
UPDATE_TIMEOUT_S = 30
PER_TENANT = 2  # a tenant's changes in flight in one process (its agent applies one at a time)
POOL_SHARE = 4  # changes in flight hold at most a quarter of the process's pooled connections


def _busy() -> Conflict:
    return Conflict("another change of this sandbox's network rules is under way; retry", code="busy")


@dataclass
class _Turns:
    """The changes of one process (one engine): who is in flight or waiting."""

    all: asyncio.Semaphore
    tenants: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    users: Counter[str] = field(default_factory=Counter)  # changes waiting or in flight, by tenant
    sandboxes: set[str] = field(default_factory=set)


_TURNS: weakref.WeakKeyDictionary[Engine, _Turns] = weakref.WeakKeyDictionary()


async def _take(sem: asyncio.Semaphore, deadline: float, error: Exception) -> None:
    try:
        async with asyncio.timeout_at(deadline):
            await sem.acquire()
    except TimeoutError:
        raise error from None


@asynccontextmanager
async def _turn(engine: AsyncEngine, tenant: str, sandbox_id: str) -> AsyncIterator[None]:
    """Wait, holding no connection, for the tenant's turn and then a share of the pool."""
    sync = engine.sync_engine
    t = _TURNS.get(sync)
    if t is None:
        size = int(getattr(sync.pool, "size", lambda: POOL_SHARE)())
        t = _TURNS[sync] = _Turns(asyncio.Semaphore(max(1, size // POOL_SHARE)))
    if sandbox_id in t.sandboxes:  # one already waits or runs here: the lock would say the same
        raise _busy()
    t.sandboxes.add(sandbox_id)
    t.users[tenant] += 1
    mine = t.tenants.setdefault(tenant, asyncio.Semaphore(PER_TENANT))
    deadline = asyncio.get_running_loop().time() + UPDATE_TIMEOUT_S
    try:
        msg = "too many network changes under way; retry"
        await _take(mine, deadline, TooManyRequests(msg, retry_after=1))
        try:
            await _take(t.all, deadline, ServiceUnavailable(msg, code="busy"))
            try:
                yield
            finally:
                t.all.release()
        finally:
            mine.release()
    finally:
        t.sandboxes.discard(sandbox_id)
        t.users[tenant] -= 1
        if not t.users[tenant]:
            del t.users[tenant], t.tenants[tenant]


async def get_network(engine: AsyncEngine, ctx: AuthContext, sandbox_id: str) -> NetworkRules:
    found = await sandbox_svc.find(engine, ctx, sandbox_id)
    return model(stored(_json(found.row["egress"])))


def _json(value: object) -> object:
    # The lookup runs on asyncpg's own connection, which hands jsonb over as text.
    return json.loads(value) if isinstance(value, str) else value


async def update_network(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    allow_out: list[str] | None,
    deny_out: list[str] | None,
) -> NetworkRules:
    found = await sandbox_svc.find(engine, ctx, sandbox_id, states=_LIVE)
    old = stored(_json(found.row["egress"])).to_json()
    rules = parse(
        old["allow_out"] if allow_out is None else allow_out,
        old["deny_out"] if deny_out is None else deny_out,
    )
    if not found.row["internet"]:
        raise InvalidState("sandbox has no internet access (internet=false): no egress rules to change")
    if not found.host_known or not found.host_address:
        raise ServiceUnavailable("sandbox host is not reachable", code="host_unavailable")
    sid = found.sandbox.id
    tenant = str(ctx.owner_id or found.row["team_id"])
    async with _turn(engine, tenant, sid), locks.held(engine, locks.EGRESS_NS, found.sb_uuid) as got:
        if not got:
            raise _busy()
        await found.host_client(pool).stub.UpdateNetwork(
            pb.UpdateNetworkRequest(sandbox_id=sid, egress=to_pb(rules)), timeout=UPDATE_TIMEOUT_S
        )
        async with transaction(engine) as conn:
            await conn.execute(
                sa.update(sandboxes).where(sandboxes.c.id == found.sb_uuid).values(egress=rules.to_json())
            )
            await audit.record(
                conn, ctx, team_id=found.row["team_id"], action="update", resource_type="sandbox_network",
                resource_id=sid, metadata=rules.to_json(),
            )  # fmt: skip
    return model(rules)
