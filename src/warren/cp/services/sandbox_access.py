"""Reaching a sandbox's agent for exec, files, snapshots and metrics (SPEC §2.5 helper).

Built on :func:`warren.cp.services.sandboxes.sandbox_and_client` (the hosts subsystem's helper:
team-scoped lookup → 404, host missing or without address → 503 ``host_unavailable``). What this
adds is the ORDER SPEC §2.6 demands: the sandbox's status (409) and the request body (400) are
judged before the agent lookup (503), so an unreachable host is reported only for a request that
was otherwise valid — without a second query on the hot path.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.cp.db.tables import sandboxes
from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.services import sandboxes as sandbox_svc
from warren.cp.services.context import AuthContext
from warren.errors import InvalidState, ServiceUnavailable


@dataclass(frozen=True)
class Target:
    sandbox: sandbox_svc.Sandbox
    _client: HostClient | None
    _unavailable: ServiceUnavailable | None

    @property
    def sid(self) -> str:
        return self.sandbox.id

    @property
    def uuid(self) -> uuid.UUID:
        return ids.parse_id(ids.Kind.SANDBOX, self.sandbox.id)

    def client(self) -> HostClient:
        """The agent client; raises the deferred 503 when the host cannot be reached."""
        if self._unavailable is not None:
            raise self._unavailable
        assert self._client is not None
        return self._client


async def target(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    *,
    states: Iterable[str] = ("running",),
) -> Target:
    """The team's sandbox (400 bad id, 404) in one of ``states`` (else 409 ``invalid_state``)."""
    try:
        sb, client = await sandbox_svc.sandbox_and_client(engine, pool, ctx, sandbox_id)
        unavailable = None
    except ServiceUnavailable as e:
        sb, client, unavailable = await sandbox_svc.get_sandbox(engine, ctx, sandbox_id), None, e
    allowed = tuple(states)
    if sb.status not in allowed:
        if allowed == ("running",):
            raise InvalidState(f"sandbox is not running (status: {sb.status})")
        raise InvalidState(f"sandbox must be {' or '.join(allowed)} (status: {sb.status})")
    return Target(sb, client, unavailable)


async def touch(engine: AsyncEngine, sandbox_uuid: uuid.UUID) -> None:
    """Exec activity resets the inactivity timer's reference point (files do not, SPEC §2.7)."""
    async with engine.begin() as conn:
        await conn.execute(
            sa.update(sandboxes)
            .where(sandboxes.c.id == sandbox_uuid, sandboxes.c.status == "running")
            .values(last_active_at=clock.now())
        )
