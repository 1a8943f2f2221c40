"""Reaching a sandbox's agent for exec, files, snapshots and metrics (SPEC §2.5 helper).

The rules: team-scoped lookup → 404; host row missing or without an address → 503
``host_unavailable``; host status is not checked (an RPC to a dead host is a 502); and the ORDER
SPEC §2.6 demands: the sandbox's status
(409) and the request body (400) are judged before the agent lookup (503). The sandbox and its
host come from ONE autocommit query: this sits on the path of every exec and file call.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.cp.db.tables import hosts, sandboxes
from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.services import sandboxes as sandbox_svc
from warren.cp.services.context import AuthContext, require_team
from warren.errors import InvalidState, NotFound, ServiceUnavailable

log = logging.getLogger("warren.sandbox_access")


@dataclass(frozen=True)
class Target:
    sandbox: sandbox_svc.Sandbox
    uuid: uuid.UUID
    _client: HostClient | None
    _unavailable: ServiceUnavailable | None
    host_id: UUID | None = None  # sandboxes.host_id (the row may outlive the host)

    @property
    def sid(self) -> str:
        return self.sandbox.id

    def client(self) -> HostClient:
        """The agent client; raises the deferred 503 when the host cannot be reached."""
        if self._unavailable is not None:
            raise self._unavailable
        assert self._client is not None
        return self._client


_autocommit: dict[int, AsyncEngine] = {}


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """The same pool without BEGIN/COMMIT around single statements: one round trip each."""
    ac = _autocommit.get(id(engine))
    if ac is None or ac.sync_engine.pool is not engine.sync_engine.pool:
        ac = _autocommit[id(engine)] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return ac


_LOOKUP = (
    sa.select(sandboxes, hosts.c.id.label("h_id"), hosts.c.address.label("h_address"))
    .select_from(sandboxes.outerjoin(hosts, hosts.c.id == sandboxes.c.host_id))
    .where(sandboxes.c.id == sa.bindparam("sb"), sandboxes.c.team_id == sa.bindparam("team"))
)


async def target(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    *,
    states: Iterable[str] = ("running",),
) -> Target:
    """The team's sandbox (400 bad id, 404) in one of ``states`` (else 409 ``invalid_state``)."""
    team = require_team(ctx)
    sb_uuid = ids.parse_id(ids.Kind.SANDBOX, sandbox_id, what="sandbox ID")
    async with autocommit(engine).connect() as conn:
        row = (await conn.execute(_LOOKUP, {"sb": sb_uuid, "team": team})).mappings().first()
    if row is None:
        raise NotFound("sandbox not found")
    sb = sandbox_svc.sandbox_model(row)
    allowed = tuple(states)
    if sb.status not in allowed:
        if allowed == ("running",):
            raise InvalidState(f"sandbox is not running (status: {sb.status})")
        raise InvalidState(f"sandbox must be {' or '.join(allowed)} (status: {sb.status})")
    if row["h_id"] is None or not row["h_address"]:
        unavailable = ServiceUnavailable("sandbox host is not reachable", code="host_unavailable")
        return Target(sb, sb_uuid, None, unavailable, row["host_id"])
    return Target(sb, sb_uuid, pool.get_for(row["h_id"], row["h_address"]), None, row["host_id"])


async def touch(engine: AsyncEngine, sandbox_uuid: uuid.UUID) -> None:
    """Exec activity moves ``last_active_at`` (file operations do not, SPEC §2.7)."""
    async with autocommit(engine).connect() as conn:
        await conn.execute(
            sa.update(sandboxes)
            .where(sandboxes.c.id == sandbox_uuid, sandboxes.c.status == "running")
            .values(last_active_at=clock.now())
        )


_pending: set[asyncio.Task[None]] = set()


def touch_later(engine: AsyncEngine, sandbox_uuid: uuid.UUID) -> None:
    """:func:`touch` after the answer has gone out (5 s budget, detached from the request):
    the timestamp is bookkeeping, so the caller does not wait for it."""

    async def run() -> None:
        try:
            async with asyncio.timeout(5):
                await touch(engine, sandbox_uuid)
        except Exception as e:
            log.warning("last_active_at update failed sandbox=%s: %s", ids.sandbox_id(sandbox_uuid), e)

    task = asyncio.create_task(run())
    _pending.add(task)
    task.add_done_callback(_pending.discard)
