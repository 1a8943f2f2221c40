"""E2B's fork (``POST /sandboxes/{id}/fork``, docs/e2b.md §5.1) as one snapshot and N creates.

- The source must be running (a paused one is a 409, as E2B checkpoints a running sandbox; one
  paused for another fork's or snapshot's is waited for: ``services/snapshot_hold.py``). It
  is snapshotted through ``services/e2b_snapshots.py``, which resumes it afterwards: it keeps
  its id and its ``end_at``, and commands sent to it meanwhile wait for that resume. A gVisor
  source gives a memory snapshot (its forks start with every process where it was); a runc or
  crun source a filesystem one (the files only).
- The snapshot is refused as any snapshot is (the team's snapshot quota: 429): then the whole
  call fails, and nothing was created.
- Each fork is one ordinary create from the snapshot (the team's sandbox quota, the platform's
  capacity, one more request of the team's rate limit per fork after the first): a refused one
  is that entry's error, and the others go on. Forks run on the source's runtime with its shape
  and network posture (internet, egress rules, public ports); E2B's fork request carries no
  metadata, env or lifecycle, and its SDK says nothing of inheriting them, so a fork gets its
  template's (the source's create env lives on in a memory snapshot's processes only).
- The snapshot is deleted once the creates are done, whatever they answered: the forks keep
  running from a deleted snapshot (docs/api.md §5), and it no longer counts in the quotas.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from warren.config import Settings
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.hosts.scheduler import Scheduler
from warren.cp.services import e2b_snapshots, sandboxes, snapshot_hold, snapshots
from warren.cp.services.authn import throttle
from warren.cp.services.context import AuthContext
from warren.cp.services.lifetimes import check_lifetime
from warren.cp.services.rate_limits import TeamRateLimiter
from warren.cp.services.sandboxes import CreateParams, SandboxView, find
from warren.cp.store import LayerStore
from warren.egress_rules import from_json
from warren.errors import InternalError, InvalidRequest, InvalidState, NotFound, WarrenError

log = logging.getLogger("warren.e2b")

MAX_FORKS = 20  # E2B's bound on count
DEFAULT_FORKS = 1  # E2B's API default
DEFAULT_TIMEOUT_S = 15  # the fork request's default lifetime (E2B's API)
CONCURRENT_CREATES = 4  # creates of one fork call at once: the host's turns, not 20 at a time


@dataclass(frozen=True)
class ForkRequest:
    """E2B's ``SandboxForkRequest``, its types checked by the listener."""

    timeout_s: object = DEFAULT_TIMEOUT_S
    count: object = DEFAULT_FORKS


@dataclass(frozen=True)
class Forked:
    """One fork's outcome: the sandbox (with its traffic token) or why it did not start."""

    view: SandboxView | None = None
    error: WarrenError | None = None
    public: bool = True  # every port public, so no traffic token to hand out


def check_count(count: object) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_FORKS:
        raise InvalidRequest(f"count must be an integer between 1 and {MAX_FORKS}")
    return count


@dataclass(frozen=True)
class _Services:
    engine: AsyncEngine
    pool: HostClientPool
    scheduler: Scheduler
    settings: Settings
    store: LayerStore
    limiter: TeamRateLimiter


async def fork(
    engine: AsyncEngine,
    pool: HostClientPool,
    scheduler: Scheduler,
    ctx: AuthContext,
    sandbox_id: str,
    req: ForkRequest,
    *,
    settings: Settings,
    store: LayerStore,
    limiter: TeamRateLimiter,
) -> list[Forked]:
    """Fork ``sandbox_id`` ``req.count`` times (see module doc): one entry per fork, in order."""
    count = check_count(req.count)
    lifetime = check_lifetime(settings, req.timeout_s)
    found = await find(engine, ctx, sandbox_id)
    while found.sandbox.status == "paused" and await snapshot_hold.wait_out(engine, ctx, found.sb_uuid):
        found = await find(engine, ctx, sandbox_id)  # another fork's or snapshot's pause ended
    if found.sandbox.status == "paused":
        raise InvalidState(f"sandbox {sandbox_id} is paused: only a running sandbox can be forked")
    if found.sandbox.status != "running":
        raise NotFound("sandbox not found")
    name = f"fork-{secrets.token_hex(8)}"
    params = _params(found.row, name, lifetime)
    await e2b_snapshots.create(engine, pool, ctx, sandbox_id, name, settings=settings, store=store)
    svc = _Services(engine, pool, scheduler, settings, store, limiter)
    try:
        turns = asyncio.Semaphore(CONCURRENT_CREATES)
        return list(await asyncio.gather(*(_one(svc, ctx, params, turns, i) for i in range(count))))
    finally:
        # Shielded: a client gone mid-call does not leave the snapshot (and its quota) behind.
        await asyncio.shield(_drop(engine, pool, ctx, name))


def _params(row: Mapping[str, Any], template: str, lifetime: int) -> CreateParams:
    """A fork's create: the source's runtime, disk size and network posture (module doc)."""
    egress = row.get("egress")
    if isinstance(egress, str):  # asyncpg's own connection hands jsonb over as text
        egress = json.loads(egress)
    return CreateParams(
        template=template,
        # Room for the source's files (its vCPUs and memory come with the snapshot).
        disk_size_mb=int(row["disk_size_mb"] or 0),
        internet=bool(row["internet"]),
        network=from_json(egress if isinstance(egress, dict) else None),
        lifetime_s=lifetime,
        on_end="kill",
        all_ports_public=bool(row.get("all_ports_public")),
        runtime=row.get("runtime") or None,
    )


async def _one(
    svc: _Services, ctx: AuthContext, params: CreateParams, turns: asyncio.Semaphore, i: int
) -> Forked:
    try:
        if i > 0:  # the fork call itself paid for the first create
            throttle(svc.limiter, ctx)
        async with turns:
            created = await sandboxes.create(
                svc.engine, svc.pool, svc.scheduler, ctx, params, settings=svc.settings, store=svc.store
            )
    except WarrenError as e:
        return Forked(error=e)
    except Exception as e:
        log.exception("fork create failed")
        return Forked(error=InternalError(f"fork failed: {type(e).__name__}"))
    return Forked(view=created.view(), public=params.all_ports_public)


async def _drop(engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, name: str) -> None:
    try:
        await snapshots.delete_snapshot(engine, pool, ctx, name)
    except WarrenError as e:
        log.warning("fork: its snapshot %s could not be deleted: %s", name, e.message)
