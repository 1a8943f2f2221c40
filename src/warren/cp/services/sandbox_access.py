"""Reaching a sandbox's agent for exec, files, snapshots and metrics (docs/spec.md §2.5 helper).

The rules: the team-scoped lookup (``sandboxes.find``, the one per-sandbox lookup: another
team's sandbox is 404 like an unknown id); host row missing or without an address → 503
``host_unavailable``; host status is not checked (an RPC to a dead host is a 502); and the ORDER
docs/spec.md §2.6 demands: the sandbox's status (409) and the request body (400) are judged before the
agent lookup (503), which is why that 503 is deferred to :meth:`Target.client`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.services import sandboxes as sandbox_svc
from warren.cp.services import snapshot_hold
from warren.cp.services.context import AuthContext
from warren.errors import ServiceUnavailable

log = logging.getLogger("warren.sandbox_access")


@dataclass(frozen=True)
class Target:
    sandbox: sandbox_svc.SandboxView
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


async def target(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    *,
    states: Iterable[str] = ("running",),
) -> Target:
    """The team's sandbox (400 bad id, 404) in one of ``states`` (else 409 ``invalid_state``).
    A verb that needs it running waits while it is paused for its own snapshot (snapshot_hold)."""
    if not snapshot_hold.waits(states):
        return target_of(await sandbox_svc.find(engine, ctx, sandbox_id, states=states), pool)
    found = await sandbox_svc.find(engine, ctx, sandbox_id)
    while found.sandbox.status == "paused" and await snapshot_hold.wait_out(engine, ctx, found.sb_uuid):
        found = await sandbox_svc.find(engine, ctx, sandbox_id)
    sandbox_svc.check_state(found.sandbox.status, states)
    return target_of(found, pool)


def target_of(found: sandbox_svc.Found, pool: HostClientPool) -> Target:
    """The target of a sandbox already found (its host's client, or the deferred 503)."""
    if not found.host_known or not found.host_address:
        unavailable = ServiceUnavailable("sandbox host is not reachable", code="host_unavailable")
        return Target(found.sandbox, found.sb_uuid, None, unavailable, found.host_id)
    return Target(found.sandbox, found.sb_uuid, found.host_client(pool), None, found.host_id)


_pending: set[asyncio.Task[None]] = set()


def touch_due(seen: datetime | None, now_s: float) -> bool:
    """Whether a touch at ``now_s`` would change what anyone reads: not when ``seen`` (the
    row's ``last_active_at``) is already in that second."""
    return seen is None or int(seen.timestamp()) != int(now_s)


def touch_later(engine: AsyncEngine, sandbox_uuid: uuid.UUID, *, seen: datetime | None = None) -> None:
    """``sandboxes.touch`` after the answer has gone out (5 s budget, detached from the
    request): the timestamp is bookkeeping, so the caller does not wait for it. ``seen``: the
    row's ``last_active_at`` as the request read it; in the current second, the touch is
    skipped (the API shows seconds, and the agent keeps the inactivity timeout itself): a
    create's first exec, and execs in a loop, save a checkout, a statement and a row write."""
    if not touch_due(seen, clock.time_s()):
        return

    async def run() -> None:
        try:
            async with asyncio.timeout(5):
                await sandbox_svc.touch(engine, sandbox_uuid)
        except Exception as e:
            log.warning("last_active_at update failed sandbox=%s: %s", ids.sandbox_id(sandbox_uuid), e)

    task = asyncio.create_task(run())
    _pending.add(task)
    task.add_done_callback(_pending.discard)
