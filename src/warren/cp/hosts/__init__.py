"""The hosts subsystem of the control plane: the mTLS client pool, the scheduler and the monitor.

:func:`hosts_lifespan` is the app lifespan hook that creates them (``app.state.ca``, ``.pool``,
``.scheduler``, ``.monitor``), starts the monitor loop (unless ``settings.run_workers`` is off)
and wires team soft delete to destroy the team's sandboxes and snapshot files on their hosts.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from warren.config import Settings
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.hosts.monitor import HostMonitor
from warren.cp.hosts.scheduler import RoundRobinScheduler
from warren.cp.security.ca import CertificateAuthority
from warren.errors import WarrenError

log = logging.getLogger("warren.hosts")


@asynccontextmanager
async def hosts_lifespan(app: FastAPI) -> AsyncIterator[None]:
    from warren.cp.services import sandboxes as sandbox_service
    from warren.cp.services import snapshots as snapshot_service
    from warren.cp.services import teams as team_service

    settings: Settings = app.state.settings
    engine: AsyncEngine = app.state.engine
    ca = CertificateAuthority.from_settings(settings)
    pool = HostClientPool(ca)
    monitor = HostMonitor(
        engine,
        pool,
        interval_s=settings.monitor_interval_s,
        stale_s=settings.heartbeat_stale_s,
        concurrency=settings.monitor_concurrency,
    )
    app.state.ca = ca
    app.state.pool = pool
    app.state.scheduler = RoundRobinScheduler()
    app.state.monitor = monitor

    async def destroy_team_sandboxes(
        engine: AsyncEngine, team_id: uuid.UUID, refs: list[team_service.SandboxRef]
    ) -> None:
        await sandbox_service.destroy_on_hosts(engine, pool, [(r.id, r.host_id) for r in refs])

    async def delete_team_template_files(
        engine: AsyncEngine, team_id: uuid.UUID, refs: list[team_service.TemplateRef]
    ) -> None:
        # Best effort, like the sandboxes: the team is deleted either way (SPEC §7.3 step 4).
        async def one(ref: team_service.TemplateRef) -> None:
            try:
                await snapshot_service.delete_files(engine, pool, team_id, ref.id, ref.host_id)
            except WarrenError as e:
                log.warning("team %s delete: files of template %s stay: %s", team_id, ref.id, e.message)

        await asyncio.gather(*(one(ref) for ref in refs if ref.type == "snapshot"))

    # Module-level hooks: with several apps in one process (tests), any live pool does the job.
    team_service.team_deletion_hooks.destroy_sandboxes = destroy_team_sandboxes
    team_service.team_deletion_hooks.delete_template_files = delete_team_template_files
    if settings.run_workers:
        monitor.start()  # the first pass runs at once, then every monitor_interval_s
    try:
        yield
    finally:
        await monitor.stop()
        await pool.close()


__all__ = ["HostClientPool", "HostMonitor", "RoundRobinScheduler", "hosts_lifespan"]
