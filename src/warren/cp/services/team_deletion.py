"""Team soft delete (docs/spec.md §7.3): the one team operation that reaches outside the database.

It destroys the team's sandboxes on their hosts and deletes the files of its snapshots taken
before the template store there, through the sandbox and snapshot services. Every other template
(builds, imports, store snapshots) is rows and store layers: deleting the rows is all, the
layer GC does the rest. The team's queued and running builds are cancelled as a cancel does
(``template_builds.cancel_team_builds``: those running on this replica stop at once, those of
another at its next heartbeat), its build cache goes with its templates, and its ended builds
and their logs go with the retention pass (services/retention.py). The caller's role is read
from the database (teams.lock_team_and_role).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.cp.db import end_reasons
from warren.cp.db.engine import Conn, autocommit, transaction
from warren.cp.db.tables import build_cache, sandboxes, teams, templates
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.services import audit
from warren.cp.services import sandboxes as sandbox_service
from warren.cp.services import snapshots as snapshot_service
from warren.cp.services import template_builds as builds
from warren.cp.services.context import AuthContext
from warren.cp.services.teams import lock_team_and_role, user_of
from warren.errors import Forbidden, WarrenError

log = logging.getLogger("warren.teams")

# Statuses a team delete stops (docs/spec.md §1.11, §7.3 names running, paused and starting; a create
# still in flight and a sandbox on an unreachable host exist on their host just as well).
_STOP_ON_DELETE = ("running", "paused", "starting", "pending", "missing")


@dataclass(frozen=True)
class SandboxRef:
    id: uuid.UUID
    host_id: uuid.UUID
    status: str


@dataclass(frozen=True)
class TemplateRef:
    id: uuid.UUID
    name: str
    type: str
    host_id: uuid.UUID | None = None  # a snapshot's host: where its files are
    layers: tuple[str, ...] = ()
    source: str = ""

    @property
    def host_local(self) -> bool:
        """A snapshot taken before the template store: its files live on a host, which must be
        asked to delete them (``DeleteSnapshot``). A store snapshot is its row and its layers."""
        return snapshot_service.is_legacy({"type": self.type, "layers": self.layers, "source": self.source})


async def _destroy_sandboxes(
    engine: AsyncEngine, pool: HostClientPool, team_id: uuid.UUID, refs: list[SandboxRef]
) -> None:
    await sandbox_service.destroy_on_hosts(engine, pool, [(r.id, r.host_id) for r in refs])


async def _delete_template_files(
    engine: AsyncEngine, pool: HostClientPool, team_id: uuid.UUID, refs: list[TemplateRef]
) -> None:
    # Best effort, like the sandboxes: the team is deleted either way (docs/spec.md §7.3 step 4).
    async def one(ref: TemplateRef) -> None:
        try:
            await snapshot_service.delete_files(engine, pool, team_id, ref.id, ref.host_id)
        except WarrenError as e:
            log.warning("team %s delete: files of template %s stay: %s", team_id, ref.id, e.message)

    await asyncio.gather(*(one(ref) for ref in refs if ref.host_local))


_REF_COLUMNS = (sandboxes.c.id, sandboxes.c.host_id, sandboxes.c.status)


def _refs(rows: Iterable[Any]) -> list[SandboxRef]:
    """``SandboxRef``s of rows holding ``_REF_COLUMNS``."""
    return [SandboxRef(id=r.id, host_id=r.host_id, status=r.status) for r in rows]


async def _require_owner(conn: Conn, team_id: uuid.UUID, user_id: uuid.UUID, *, lock: bool) -> None:
    if await lock_team_and_role(conn, team_id, user_id, lock=lock) != "owner":
        raise Forbidden("only the team owner can delete the team")


async def delete_team(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    team_id: uuid.UUID,
    *,
    runner: builds.BuildRunner | None = None,
) -> None:
    """Soft delete (owner only), docs/spec.md §7.3. Sandbox rows, API keys, memberships and audit rows
    stay; the slug stays reserved; API keys and JWTs of the team stop working at once.

    The team's sandboxes are destroyed on their hosts BEFORE the rows are marked stopped (docs/spec.md §7.3
    step 2), and again after for those whose create finished in between; the files of its
    pre-store snapshots go AFTER the template rows were deleted (step 4); store layers go to the
    layer GC. Its running builds are cancelled: those ``runner`` (this replica's) runs are
    stopped and waited for before the answer, the others stop at their replica's next
    heartbeat. Host-side failures are logged, never fatal."""
    user_id = user_of(ctx)
    async with autocommit(engine) as conn:
        await _require_owner(conn, team_id, user_id, lock=False)
        live = _refs(
            await conn.execute(
                select(*_REF_COLUMNS).where(
                    sandboxes.c.team_id == team_id, sandboxes.c.status.in_(_STOP_ON_DELETE)
                )
            )
        )

    async def best_effort(what: str, work: Awaitable[None]) -> None:
        # docs/spec.md §7.3: host-side clean-up failures are logged; the delete goes on.
        try:
            await work
        except Exception:
            log.exception("team %s delete: %s failed", ids.team_id(team_id), what)

    if live:
        await best_effort("destroying sandboxes on hosts", _destroy_sandboxes(engine, pool, team_id, live))

    stopped, removed, building = await _stop_and_delete_rows(engine, ctx, team_id, user_id)
    if building and runner is not None:  # their steps' room on a host is given back as they stop
        await best_effort("stopping builds", runner.stop_builds(building, builds.TEAM_DELETED))

    # Sandboxes whose create finished between the first list and the stop above were not
    # destroyed yet: those inserted since, and those listed while still `pending` (the agent
    # refused to destroy them mid-create). A create still in flight now finds its row stopped
    # and destroys its sandbox itself.
    destroyed = {ref.id for ref in live if ref.status != "pending"}
    late = [ref for ref in stopped if ref.id not in destroyed]
    if late:
        await best_effort("destroying sandboxes on hosts", _destroy_sandboxes(engine, pool, team_id, late))
    if removed:
        await best_effort("deleting template files", _delete_template_files(engine, pool, team_id, removed))


async def _stop_and_delete_rows(
    engine: AsyncEngine, ctx: AuthContext, team_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[list[SandboxRef], list[TemplateRef], list[uuid.UUID]]:
    """The delete's one transaction (docs/spec.md §7.3 step 3: if stopping the rows fails, the
    team is not deleted): its live sandboxes marked stopped, its builds cancelled, its templates
    and build cache deleted, the team marked deleted and audited. Returns what was stopped and
    removed, and the builds that were running."""
    now = clock.now()
    async with transaction(engine) as conn:
        await _require_owner(conn, team_id, user_id, lock=True)
        # The team row is locked: no create can insert a sandbox for it until this commits, and
        # none can after (creates insert only for a live team); no build can be submitted or
        # write its version either (templates.lock_live_team).
        stopped = _refs(
            await conn.execute(
                update(sandboxes)
                .where(sandboxes.c.team_id == team_id, sandboxes.c.status.in_(_STOP_ON_DELETE))
                .values(status="stopped", last_updated=now, end_reason=end_reasons.TEAM_DELETED)
                .returning(*_REF_COLUMNS)
            )
        )
        removed = [
            TemplateRef(
                id=r.id, name=r.name, type=r.type, host_id=r.host_id, layers=tuple(r.layers), source=r.source
            )
            for r in await conn.execute(
                delete(templates)
                .where(templates.c.team_id == team_id)
                .returning(
                    templates.c.id,
                    templates.c.name,
                    templates.c.type,
                    templates.c.host_id,
                    templates.c.layers,
                    templates.c.source,
                )
            )
        ]
        building = await builds.cancel_team_builds(conn, team_id)
        await conn.execute(delete(build_cache).where(build_cache.c.team_id == team_id))
        await conn.execute(update(teams).where(teams.c.id == team_id).values(deleted_at=now))
        await audit.record(
            conn, ctx, team_id=team_id, action="delete", resource_type="team",
            resource_id=ids.team_id(team_id),
            metadata={"sandboxes_stopped": len(stopped), "templates_deleted": len(removed)},
        )  # fmt: skip
    return stopped, removed, building
