"""Template builds (docs/templates.md §4): submit, read, and the runner that owns the builds
running on this replica.

A build is accepted (202) once its spec parses, the team is under its concurrent-build bound
and each owner of the team under theirs, across all the teams they own; it then runs as an
asyncio task on the replica that accepted it (``template_build_run.py``), moving its
``heartbeat_at``. The runner cancels its builds when the control plane stops (each is failed
with "control plane stopped"), and its sweep fails builds whose heartbeat went stale: the
replica running them died; it also removes the build spool's files that no build, upload or
import can still be using (services/build_spool.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock, ids
from warren.config import Settings
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.locks import key_of
from warren.cp.db.tables import template_builds, templates, users_teams
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.hosts.scheduler import Scheduler
from warren.cp.services import Timestamp, audit, build_spool, stream_slots
from warren.cp.services import template_build_log as build_log
from warren.cp.services import templates as tpl
from warren.cp.services.context import AuthContext, require_team
from warren.cp.services.strict import StrictBody
from warren.cp.services.team_counts import TeamCounts
from warren.cp.services.template_spec import parse
from warren.cp.store import LayerStore
from warren.errors import Conflict, InvalidRequest, NotFound, TooManyRequests

log = logging.getLogger("warren.builds")

ACTIVE = build_log.ACTIVE  # queued, running
LIST_LIMIT = 50
# Ended builds a team keeps (spec and log each, up to 256 KiB and WARREN_BUILD_MAX_LOG_MB), beside
# those a template version names. A failing build needs no host: kept forever, one key filled
# PostgreSQL at MiBs a second.
MAX_ENDED_BUILDS_KEPT = 100
STOPPED = "control plane stopped"
STALE = "the control plane running this build stopped"
CANCELLED = build_log.CANCELLED
TEAM_DELETED = build_log.TEAM_DELETED
# How long a cancel waits for a build of this replica to stop (its step's RPC cancelled, its
# host reservation given back) before it answers.
CANCEL_WAIT_S = 10.0
# An owner's build admissions, one at a time across replicas (transaction-scoped).
OWNER_BUILDS_NS = 0x575242  # "WRB"


# Build contexts being uploaded in this process (one CP replica), by team.
_uploading = TeamCounts("build contexts uploading", "too_many_builds")


@contextlib.asynccontextmanager
async def upload_admitted(ctx: AuthContext, settings: Settings) -> AsyncIterator[None]:
    """Hold one of the team's build slots while its context is uploaded (spooled to this CP's
    disk, up to ``WARREN_BUILD_MAX_CONTEXT_MB``) and submitted; 429 ``too_many_builds`` when the
    team already has ``WARREN_BUILD_MAX_PER_TEAM`` uploads here. The running-builds check at
    submit comes after the upload, so without this one key could spool any number of contexts
    at once. Counted per replica, as imports are: no database connection held for an upload."""
    with _uploading.holding(require_team(ctx), settings.build_max_per_team):
        yield


class BuildRequest(StrictBody):
    name: str
    spec: str
    tags: list[str] = Field(default_factory=list)
    build_args: dict[str, str] = Field(default_factory=dict)


class BuildInfo(BaseModel):
    build_id: str
    name: str
    tags: list[str]
    status: str = Field(description="queued | running | ready | failed")
    step: int = Field(description="the step running (or that ran last), 1-based; 0 before the first")
    steps: int
    cached_steps: int
    failed_step: int | None = None
    exit_code: int | None = Field(default=None, description="the failed RUN's exit code")
    error: str = Field(description="why it failed: the message and the failed step's last output lines")
    version: int | None = Field(default=None, description="the template version a ready build made")
    host_id: str | None = None
    log_bytes: int
    created_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None


def _build_model(row: Any, version: int | None) -> BuildInfo:
    return BuildInfo(
        build_id=ids.format_id(ids.Kind.BUILD, row["id"]),
        name=row["name"],
        tags=list(row["tags"]),
        status=row["status"],
        step=row["step"],
        steps=row["steps"],
        cached_steps=row["cached_steps"],
        failed_step=row["failed_step"],
        exit_code=row["exit_code"],
        error=row["error"],
        version=version,
        host_id=ids.host_id(row["host_id"]) if row["host_id"] is not None else None,
        log_bytes=row["log_bytes"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


_WITH_VERSION = sa.select(template_builds, templates.c.version).select_from(
    template_builds.outerjoin(templates, templates.c.id == template_builds.c.template_id)
)


def parse_form(fields: dict[str, str]) -> BuildRequest:
    """A multipart build's text fields: ``tags`` a JSON list (or comma-separated), ``build_args``
    a JSON object."""
    unknown = set(fields) - {"name", "spec", "tags", "build_args"}
    if unknown:
        raise InvalidRequest(f"unknown field: {sorted(unknown)[0]}")
    data: dict[str, Any] = {"name": fields.get("name", ""), "spec": fields.get("spec", "")}
    if fields.get("tags", "").strip():
        data["tags"] = tags_field(fields["tags"])
    if fields.get("build_args", "").strip():
        data["build_args"] = _json(fields["build_args"], "build_args")
    try:
        return BuildRequest.model_validate(data)
    except ValueError as e:
        raise InvalidRequest(f"invalid form: {str(e).splitlines()[0]}") from e


def tags_field(raw: str) -> list[str]:
    """A form's ``tags``: a JSON list of strings, or comma-separated."""
    raw = raw.strip()
    if not raw:
        return []
    tags = _json(raw, "tags") if raw.startswith("[") else [t.strip() for t in raw.split(",")]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidRequest("tags must be a list of strings")
    return tags


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise InvalidRequest(f"{what} is not valid JSON") from e


async def submit(
    engine: AsyncEngine,
    runner: BuildRunner,
    ctx: AuthContext,
    body: BuildRequest,
    context: tuple[Path, str] | None,
) -> BuildInfo:
    """A team's build (POST /v1/templates): see :func:`start_build`."""
    team_id = require_team(ctx)
    info = await start_build(engine, runner, team_id, body, context, ctx.email or ctx.api_key_name)
    await audit.record(
        engine, ctx, team_id=team_id, action="build", resource_type="template", resource_id=info.name,
        metadata={"build_id": info.build_id, "tags": info.tags},
    )  # fmt: skip
    return info


async def start_build(
    engine: AsyncEngine,
    runner: BuildRunner,
    team_id: uuid.UUID,
    body: BuildRequest,
    context: tuple[Path, str] | None,
    created_by: str = "",
) -> BuildInfo:
    """Check the request (name, tags, the spec parses with its build args), admit it under the
    team's concurrent-build bound (429), record it and start it here. The context file (path,
    sha256), when given, belongs to the build from here on (it removes it). ``team_id`` may be
    the platform's (``ids.PLATFORM_TEAM_ID``): a platform template, visible to every team."""
    try:
        tpl.check_name(body.name)
        tags = tpl.check_tags(body.tags)
        spec = parse(body.spec, body.build_args)
        build_id = ids.new_uuid()
        async with transaction(engine) as conn:
            await tpl.lock_team(conn, team_id)
            # A team delete marks the team's builds under its row's lock: one submitted
            # meanwhile is either marked with them or refused here, never run for a deleted team.
            if not await tpl.lock_live_team(conn, team_id):
                raise NotFound("team not found")
            await tpl.check_name_free(conn, team_id, body.name)
            await tpl.check_room_for_version(conn, team_id, body.name)
            await _forget_old_builds(conn, team_id)
            active = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(template_builds)
                    .where(template_builds.c.team_id == team_id, template_builds.c.status.in_(ACTIVE))
                )
            ).scalar_one()
            if active >= runner.settings.build_max_per_team:
                raise TooManyRequests(
                    f"the team has {active} builds running (at most {runner.settings.build_max_per_team}); "
                    "wait for one to end",
                    code="too_many_builds",
                )
            await _check_owner_bound(conn, team_id, runner.settings.build_max_per_owner)
            row = (
                (
                    await conn.execute(
                        template_builds.insert()
                        .values(
                            id=build_id,
                            team_id=team_id,
                            name=body.name,
                            tags=tags,
                            spec=body.spec,
                            context_digest=context[1] if context else None,
                            steps=len(spec.steps),
                            created_by=created_by,
                            heartbeat_at=clock.now(),
                        )
                        .returning(template_builds)
                    )
                )
                .mappings()
                .one()
            )
    except BaseException:
        if context is not None:
            context[0].unlink(missing_ok=True)
        raise
    runner.start(build_id, team_id, body, context[0] if context else None)
    return _build_model(row, None)


async def _check_owner_bound(conn: AsyncConnection, team_id: uuid.UUID, limit: int) -> None:
    """429 ``too_many_builds`` when an owner of the team has ``limit`` builds queued or running
    across all the teams they own (``WARREN_BUILD_MAX_PER_OWNER``): an account owns up to
    ``max_teams_per_user`` teams, each with its own per-team bound. Each owner's admissions are
    serialised by an advisory lock (in id order: two teams' submits never wait on each other in
    a cycle), so two teams of one owner cannot both pass the count. The platform's team has no
    owner row: its builds are bounded per team only."""
    ut = users_teams.c
    owners = sorted(
        (await conn.execute(sa.select(ut.user_id).where(ut.team_id == team_id, ut.role == "owner"))).scalars()
    )
    for owner in owners:
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(OWNER_BUILDS_NS, key_of(owner))))
    for owner in owners:
        owned = sa.select(ut.team_id).where(ut.user_id == owner, ut.role == "owner")
        active = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(template_builds)
                .where(template_builds.c.team_id.in_(owned), template_builds.c.status.in_(ACTIVE))
            )
        ).scalar_one()
        if active >= limit:
            raise TooManyRequests(
                f"the teams this team's owner owns have {active} builds running (at most {limit} per "
                "owner, WARREN_BUILD_MAX_PER_OWNER); wait for one to end",
                code="too_many_builds",
            )


async def find(engine: AsyncEngine, ctx: AuthContext, name: str, build_ref: str) -> Any:
    """The team's build ``build_ref`` of template ``name`` (another team's: 404)."""
    team_id = require_team(ctx)
    build_id = ids.parse_id(ids.Kind.BUILD, build_ref, what="build_id")
    async with autocommit(engine) as conn:
        row = (
            (
                await conn.execute(
                    _WITH_VERSION.where(
                        template_builds.c.id == build_id,
                        template_builds.c.team_id == team_id,
                        template_builds.c.name == name,
                    )
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        raise NotFound(f"build {build_ref} of {name!r} not found")
    return row


async def get_build(engine: AsyncEngine, ctx: AuthContext, name: str, build_ref: str) -> BuildInfo:
    row = await find(engine, ctx, name, build_ref)
    return _build_model(row, row["version"])


async def cancel_build(
    engine: AsyncEngine, runner: BuildRunner, ctx: AuthContext, name: str, build_ref: str
) -> BuildInfo:
    """Cancel the team's build (another team's: 404; an ended one: 409 ``build_finished``).

    A queued build is failed with ``CANCELLED`` at once: it holds nothing, and its task does not
    start it. A running one is only marked (``error`` = ``CANCELLED``, still ``running``): it
    holds its team's build slot and its step's room on a host until the replica running it has
    stopped it, which then fails the row. Failing the row at once gave both back while the step
    ran on until that replica's next heartbeat: a team cancelling through one replica builds
    running on another started one step after another past both bounds (session 25). Running
    here, the build stops at once and the answer waits for it (``CANCEL_WAIT_S``); on another
    replica, at its next log flush or heartbeat (``WARREN_BUILD_HEARTBEAT_S``)."""
    row = await find(engine, ctx, name, build_ref)
    b = template_builds.c
    async with autocommit(engine) as conn:
        done = await conn.execute(
            template_builds.update()
            .where(b.id == row["id"], b.status.in_(ACTIVE))
            .values(**_cancelled(CANCELLED))
        )
    if not done.rowcount:
        raise Conflict(f"build {build_ref} of {name!r} has already ended", code="build_finished")
    stopping = runner.stop_here(row["id"], CANCELLED)  # before any await: not left to a heartbeat
    await audit.record(
        engine, ctx, team_id=row["team_id"], action="build_cancel", resource_type="template",
        resource_id=name, metadata={"build_id": build_ref},
    )  # fmt: skip
    if stopping is not None:  # a cancelled caller leaves the task be
        await asyncio.wait({stopping}, timeout=CANCEL_WAIT_S)
    return await get_build(engine, ctx, name, build_ref)


def _cancelled(reason: str) -> dict[str, Any]:
    """A cancel's update of an active build row: a queued one failed at once, a running one
    marked (``error`` = ``reason``, one of ``build_log.CANCELS``) for the replica running it,
    which fails it once its work has stopped."""
    b = template_builds.c
    queued = b.status == "queued"
    return {
        "status": sa.case((queued, "failed"), else_=b.status),
        "finished_at": sa.case((queued, clock.now()), else_=b.finished_at),
        "error": reason,
    }


async def cancel_team_builds(conn: AsyncConnection, team_id: uuid.UUID) -> list[uuid.UUID]:
    """The team's delete, in its transaction (the team row locked): every queued or running
    build of the team cancelled as :func:`cancel_build` does, with ``TEAM_DELETED``. Returns
    the running ones, for :meth:`BuildRunner.stop_builds` once the transaction has committed
    (a build another replica runs sees the mark at its next log flush or heartbeat)."""
    b = template_builds.c
    rows = await conn.execute(
        template_builds.update()
        .where(b.team_id == team_id, b.status.in_(ACTIVE))
        .values(**_cancelled(TEAM_DELETED))
        .returning(b.id, b.status)
    )
    return [r.id for r in rows if r.status == "running"]


async def _forget_old_builds(conn: AsyncConnection, team_id: uuid.UUID) -> None:
    """Delete the team's ended builds past the newest ``MAX_ENDED_BUILDS_KEPT`` that no template
    version names (their logs go with them, ON DELETE CASCADE)."""
    b = template_builds.c
    old = (
        sa.select(b.id)
        .where(
            b.team_id == team_id,
            b.status.notin_(ACTIVE),
            ~sa.exists().where(templates.c.build_id == b.id),
        )
        .order_by(b.created_at.desc())
        .offset(MAX_ENDED_BUILDS_KEPT)
    )
    await conn.execute(template_builds.delete().where(b.id.in_(old.scalar_subquery())))


async def list_builds(engine: AsyncEngine, ctx: AuthContext, name: str) -> list[BuildInfo]:
    """The team's most recent builds of ``name``, newest first."""
    team_id = require_team(ctx)
    tpl.check_name(name)
    async with autocommit(engine) as conn:
        rows = (
            await conn.execute(
                _WITH_VERSION.where(template_builds.c.team_id == team_id, template_builds.c.name == name)
                .order_by(template_builds.c.created_at.desc())
                .limit(LIST_LIMIT)
            )
        ).mappings()
        return [_build_model(r, r["version"]) for r in rows]


async def read_log(
    engine: AsyncEngine, ctx: AuthContext, name: str, build_ref: str, offset: int, limit: int | None
) -> build_log.LogPage:
    row = await find(engine, ctx, name, build_ref)
    if offset < 0:
        raise InvalidRequest("offset must be >= 0")
    limit = build_log.DEFAULT_READ if limit is None else limit
    if not 1 <= limit <= build_log.MAX_READ:
        raise InvalidRequest(f"limit must be 1..{build_log.MAX_READ}")
    return await build_log.read_log(engine, row["id"], offset, limit)


async def stream_log(
    engine: AsyncEngine, settings: Settings, ctx: AuthContext, name: str, build_ref: str, offset: int
) -> AsyncIterator[str]:
    """The build's log and status as server-sent events (404 before the first byte)."""
    row = await find(engine, ctx, name, build_ref)
    if offset < 0:
        raise InvalidRequest("offset must be >= 0")

    async def status() -> dict[str, object]:
        again = await find(engine, ctx, name, build_ref)
        return _build_model(again, again["version"]).model_dump(mode="json")

    max_s = settings.build_timeout_s + 600.0
    # Counted with the team's other streams: each polls PostgreSQL twice every 0.2 s for up to
    # the build's time limit, and thousands of them on one running build were unbounded load.
    slot = stream_slots.Slot()
    slot.claim(ctx, settings.max_streams_per_team)
    return stream_slots.Held(build_log.stream_log(engine, row["id"], offset, status, max_s), slot)


# ----------------------------------------------------------------------------------- runner


async def mark_failed(engine: AsyncEngine, build_id: uuid.UUID, error: str, **fields: Any) -> None:
    async with autocommit(engine) as conn:
        await conn.execute(
            template_builds.update()
            .where(template_builds.c.id == build_id, template_builds.c.status.in_(ACTIVE))
            .values(status="failed", error=error, finished_at=clock.now(), **fields)
        )


async def sweep_stale(engine: AsyncEngine, stale_s: float) -> int:
    """Fail the builds whose replica stopped moving their heartbeat; how many."""
    cutoff = clock.now() - timedelta(seconds=stale_s)
    async with autocommit(engine) as conn:
        result = await conn.execute(
            template_builds.update()
            .where(
                template_builds.c.status.in_(ACTIVE),
                sa.func.coalesce(template_builds.c.heartbeat_at, template_builds.c.created_at) < cutoff,
            )
            .values(status="failed", error=STALE, finished_at=clock.now())
        )
    count = int(result.rowcount or 0)
    if count:
        log.warning("failed %d builds whose control plane stopped", count)
    return count


class BuildRunner:
    """The builds this replica runs, and the sweep of other replicas' dead ones."""

    def __init__(
        self,
        engine: AsyncEngine,
        pool: HostClientPool,
        scheduler: Scheduler,
        store: LayerStore,
        settings: Settings,
    ) -> None:
        self.engine, self.pool, self.scheduler = engine, pool, scheduler
        self.store, self.settings = store, settings
        self.tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
        # The running builds' logs, whose ``end`` stops a build's work (a cancel made here).
        self.writers: dict[uuid.UUID, build_log.LogWriter] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def start(
        self, build_id: uuid.UUID, team_id: uuid.UUID, body: BuildRequest, context: Path | None
    ) -> None:
        from warren.cp.services.template_build_run import run_build

        task = asyncio.create_task(
            run_build(self, build_id, team_id, body, context), name=f"build-{build_id}"
        )
        self.tasks[build_id] = task
        task.add_done_callback(lambda _t: self.tasks.pop(build_id, None))

    def stop_here(self, build_id: uuid.UUID, reason: str) -> asyncio.Task[None] | None:
        """The build was cancelled (``reason``, its row's mark): if it runs here, stop its work
        now rather than at its next heartbeat; its task (which fails the row once stopped), or
        None."""
        writer, task = self.writers.get(build_id), self.tasks.get(build_id)
        if writer is None or task is None:
            return None
        writer.end("event=build_cancelled_here", reason)
        return task

    async def stop_builds(self, build_ids: list[uuid.UUID], reason: str) -> None:
        """Builds marked cancelled (``reason``): those running here are stopped now, and waited
        for (at most ``CANCEL_WAIT_S``); the others stop at their replica's next heartbeat."""
        stopping = [t for bid in build_ids if (t := self.stop_here(bid, reason)) is not None]
        if stopping:
            await asyncio.wait(stopping, timeout=CANCEL_WAIT_S)

    def start_sweeper(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="build-sweeper")

    async def _sweep_loop(self) -> None:
        """Each pass (the first at once): other replicas' dead builds, then the build spool's
        files that no build can still be using (a replica killed outright left them)."""
        while True:
            try:
                await sweep_stale(self.engine, self.settings.build_stale_s)
            except Exception:
                log.exception("build sweep failed")
            try:
                await asyncio.to_thread(build_spool.sweep_spool, self.settings)
            except Exception:
                log.exception("build spool sweep failed")
            await asyncio.sleep(max(self.settings.build_stale_s / 2, 1.0))

    async def stop(self) -> None:
        """Cancel this replica's builds (each records itself failed) and the sweep."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=30)
