"""One build, start to end (docs/templates.md §4): resolve FROM, walk the steps with the cache,
run what is not cached on the build host, then write the template version — or fail with the
step's output and exit code and write nothing.

Cache keys: the first is the FROM chain's identity (its base and layer digests); each step that
makes a layer (RUN, COPY, WORKDIR) chains ``sha256(previous key, the step's canonical form)``,
the canonical form holding everything that affects the result (the command with the env, args,
workdir and user it runs with; for COPY also the digest of its staging layer, i.e. the copied
files). ``build_cache`` maps a team's key to the layer it produced, so an unchanged prefix of
steps is reused and the first changed step runs again with everything after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from warren import clock
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import build_cache, template_builds
from warren.cp.services import build_spool, context_child, team_store
from warren.cp.services import layers as layer_svc
from warren.cp.services import template_context as tctx
from warren.cp.services import templates as tpl
from warren.cp.services.template_build_host import BuildHost, MiB, StepFailed
from warren.cp.services.template_build_log import CANCELS, LogWriter
from warren.cp.services.template_builds import (
    STOPPED,
    TEAM_DELETED,
    BuildRequest,
    BuildRunner,
    mark_failed,
)
from warren.cp.services.template_spec import (
    LAYER_STEPS,
    CopyStep,
    RunStep,
    Spec,
    SpecConfig,
    Step,
    WorkdirStep,
    parse,
)
from warren.errors import InvalidRequest, NotFound, PayloadTooLarge, ServiceUnavailable, WarrenError
from warren.layers.hashing import LayerMeta

log = logging.getLogger("warren.builds")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KEY_VERSION = "warren-build/1"


def _key(previous: str, *parts: str) -> str:
    h = hashlib.sha256(previous.encode())
    for part in parts:
        h.update(b"\n" + part.encode())
    return h.hexdigest()


def _root(env: dict[str, str] | None = None) -> SpecConfig:
    return SpecConfig(
        env=env or {"PATH": DEFAULT_PATH},
        workdir="/",
        user="",
        start_cmd="",
        ready_cmd="",
        ready_timeout_sec=0,
    )


def _run_config(step: RunStep) -> SpecConfig:
    env = step.context.run_env()
    env.setdefault("PATH", DEFAULT_PATH)
    return SpecConfig(env, step.context.workdir or "/", step.context.user, "", "", 0)


def _header(spec: Spec, step: Step, n: int) -> str:
    lines = spec.source.splitlines()
    text = lines[step.line - 1].strip() if step.line <= len(lines) else step.keyword
    if text.endswith("\\"):
        text = text[:-1].rstrip() + " …"
    return f"Step {n}/{len(spec.steps)}: {text[:300]}"


@dataclass
class _Build:
    runner: BuildRunner
    build_id: uuid.UUID
    team_id: uuid.UUID
    body: BuildRequest
    context: Path | None  # the context's tar, read by child processes (services/context_child.py)
    log: LogWriter
    deadline: float
    host: BuildHost = field(init=False)
    step: int = 0
    cached: int = 0
    base: str = "minimal"
    layers: list[str] = field(default_factory=list)
    shape: tuple[int, int] = (1, 512)

    def __post_init__(self) -> None:
        r = self.runner
        self.host = BuildHost(r.engine, r.pool, r.scheduler, r.store, r.settings, self.team_id, self.build_id)

    async def _progress(self) -> None:
        async with autocommit(self.runner.engine) as conn:
            await conn.execute(
                template_builds.update()
                .where(template_builds.c.id == self.build_id)
                .values(step=self.step, cached_steps=self.cached, host_id=self.host.host_id)
            )

    async def _from(self) -> Spec:
        """Resolve FROM, then parse again with the FROM template's defaults."""
        first = parse(self.body.spec, self.body.build_args)
        src = first.base
        parent: SpecConfig | None = None
        if src.kind == "template":
            async with autocommit(self.runner.engine) as conn:
                row = await tpl.resolve(conn, self.team_id, src.name, src.tag)
            if row["type"] == "snapshot" and not row["layers"]:
                # Taken before the template store: its files are on one host, not in layers.
                raise InvalidRequest(f"line {src.line}: snapshot {src.describe()} has no layers to build on")
            self.base, self.layers = row["base"], list(row["layers"])
            self.shape = (row["vcpus"], row["memory_mb"])
            parent = tpl.config_of(row)
            await self._refresh(self.layers, f"line {src.line}: {src.describe()}")
        return parse(self.body.spec, self.body.build_args, base=parent)

    async def _refresh(self, digests: list[str], what: str) -> None:
        """Record the FROM chain's layers again, which makes them young: if the FROM template
        is deleted while the build runs, the GC's grace period (``WARREN_LAYER_GC_GRACE_S``,
        longer than ``WARREN_BUILD_TIMEOUT_S``) keeps its layers until the new version names
        them. A layer collected already fails the build here, not at a create."""
        engine, store = self.runner.engine, self.runner.store
        known = await layer_svc.sizes(engine, digests)
        for digest in dict.fromkeys(digests):
            try:
                size = known[digest] if digest in known else await store.size(digest)
                await layer_svc.record_layer(engine, LayerMeta(digest, size), store=store)
            except (NotFound, ServiceUnavailable) as e:
                raise WarrenError(
                    f"{what}: its layer {digest[:12]} is no longer in the template store "
                    "(the template was deleted and collected); rebuild it"
                ) from e

    async def run(self) -> tuple[Spec, int]:
        spec = await self._from()
        key = _key(KEY_VERSION, json.dumps([self.base, self.layers]))
        built = False  # whether the last layer came from a step that ran (not the cache)
        for n, step in enumerate(spec.steps, start=1):
            self.step = n
            self.log.reset_tail()
            await self.log.line(_header(spec, step, n))
            if isinstance(step, LAYER_STEPS):
                cached = self.cached
                key = await self._layer_step(step, n, key)
                built = self.cached == cached
            await self._progress()
        if built:
            await self._check_starts()
        sizes = await layer_svc.sizes(self.runner.engine, self.layers)
        total = sum(sizes.get(d, 0) for d in self.layers)
        cap = self.runner.settings.build_max_template_mb * MiB
        if total > cap:
            raise PayloadTooLarge(
                f"the template is {total // MiB} MiB, past the limit of {cap // MiB} MiB",
                code="template_too_large",
            )
        return spec, total

    async def _check_starts(self) -> None:
        """A sandbox of the result must start: its guest agent is python3 from the chain. Each
        step's sandbox proved its chain so far; the last step's layer is proved here (a step
        that removed /usr/bin/python3, or broke what it needs, fails the build, not a create).
        A chain whose last layer came from the cache was proved by the build that made it."""
        self.log.reset_tail()
        await self.log.line("Checking that the template starts: /usr/bin/python3 -c pass")
        try:
            remaining = self.deadline - clock.monotonic()
            await self.host.probe(
                self.base,
                self.layers,
                _root(),
                "/usr/bin/python3 -c pass",
                timeout_s=remaining,
                output=self.log.write,
            )
        except StepFailed as e:
            raise StepFailed(
                f"a sandbox of the template does not start ({e.message}): the guest agent that runs "
                "in every sandbox needs a working /usr/bin/python3",
                exit_code=e.exit_code,
            ) from e

    async def _layer_step(self, step: Step, n: int, key: str) -> str:
        staging: Path | None = None
        staged: list[tctx.Staged] = []
        staging_digest = ""
        try:
            if isinstance(step, CopyStep):
                staging, staged, staging_digest = await self._stage(step, n)
                key = _key(key, step.canonical(), staging_digest)
            else:
                key = _key(key, step.canonical())
            hit = await self._cached(key)
            if hit is not None:
                self.layers.append(hit)
                self.cached += 1
                await self.log.line(f" ---> CACHED {hit[:12]}")
                return key
            chain, config, cmd = self._plan(step, staged, staging_digest)
            # The team's layers in the store stay bounded (session 14): a step starts below it.
            await team_store.check(self.runner.engine, self.runner.settings, self.team_id)
            if staging is not None:
                await self._store_staging(staging, staging_digest)
            remaining = self.deadline - clock.monotonic()

            async def keep(meta: LayerMeta) -> None:  # a cancel waits for it: see BuildHost.run
                await team_store.note(self.runner.engine, self.team_id, meta)
                await self._remember(key, meta.digest)

            meta = await self.host.run(
                self.base, chain, config, cmd, timeout_s=remaining, output=self.log.write, keep=keep
            )
            self.layers.append(meta.digest)
            await self.log.line(f" ---> {meta.digest[:12]} ({meta.size} bytes)")
            return key
        finally:
            if staging is not None:
                await asyncio.to_thread(staging.unlink, missing_ok=True)

    def _plan(
        self, step: Step, staged: list[tctx.Staged], staging_digest: str
    ) -> tuple[list[str], SpecConfig, str]:
        if isinstance(step, RunStep):
            return list(self.layers), _run_config(step), step.command
        if isinstance(step, CopyStep):
            return [*self.layers, staging_digest], _root(), tctx.copy_command(step, staged)
        assert isinstance(step, WorkdirStep)
        return list(self.layers), _root(), tctx.workdir_command(step)

    async def _stage(self, step: CopyStep, n: int) -> tuple[Path, list[tctx.Staged], str]:
        path = await asyncio.to_thread(
            tctx.new_spool_file, build_spool.spool_dir(self.runner.settings), build_spool.STAGING_PREFIX
        )
        try:
            limit = self.runner.settings.build_max_layer_mb * MiB
            # A context's worth of files: a child process's work (services/context_child.py),
            # in the team's turn of the tenant threads; a cancelled build (its time limit, the
            # CP stopping) kills it.
            meta, staged = await context_child.stage(self.team_id, self.context, step, n, path, limit)
        except BaseException:
            await asyncio.to_thread(path.unlink, missing_ok=True)
            raise
        return path, staged, meta.digest

    async def _store_staging(self, path: Path, digest: str) -> None:
        meta = await self.runner.store.put(
            tctx.file_chunks(path), expect=digest, max_bytes=self.runner.settings.build_max_layer_mb * MiB
        )
        await layer_svc.record_layer(self.runner.engine, meta, store=self.runner.store)
        await team_store.note(self.runner.engine, self.team_id, meta)

    async def _cached(self, key: str) -> str | None:
        """The layer cached under ``key``, its entry's ``used_at`` moved (the GC drops entries
        unused for ``WARREN_BUILD_CACHE_TTL_S``) and the layer recorded again (young for the
        rest of the build); None for a miss: never cached, expired, or its layer collected."""
        store = self.runner.store
        async with autocommit(self.runner.engine) as conn:
            layer = (
                await conn.execute(
                    build_cache.update()
                    .where(build_cache.c.team_id == self.team_id, build_cache.c.key == key)
                    .values(used_at=clock.now())
                    .returning(build_cache.c.layer)
                )
            ).scalar()
        if layer is None or not await store.exists(layer):
            return None
        try:
            meta = LayerMeta(layer, await store.size(layer))
            await layer_svc.record_layer(self.runner.engine, meta, store=store)
        except (NotFound, ServiceUnavailable):
            return None  # collected between the check and the record
        return str(layer)

    async def _remember(self, key: str, layer: str) -> None:
        now = clock.now()
        stmt = pg_insert(build_cache).values(
            team_id=self.team_id, key=key, layer=layer, created_at=now, used_at=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[build_cache.c.team_id, build_cache.c.key], set_={"layer": layer, "used_at": now}
        )
        async with autocommit(self.runner.engine) as conn:
            await conn.execute(stmt)

    async def _why_not_ready(self, conn: AsyncConnection) -> str:
        status, error = (
            await conn.execute(
                sa.select(template_builds.c.status, template_builds.c.error).where(
                    template_builds.c.id == self.build_id
                )
            )
        ).one()
        if status == "running" and error in CANCELS:
            return str(error)
        return "the build was failed meanwhile (its heartbeat went stale)"

    async def finish(self, spec: Spec, size: int) -> int:
        """Write the template version and mark the build ready, together; the version. The
        team's locks come first (its delete takes its row, then its builds' rows): a team
        deleted meanwhile fails the build, and nothing is written."""
        async with self.log.ending(), transaction(self.runner.engine) as conn:
            await tpl.lock_team(conn, self.team_id)
            if not await tpl.lock_live_team(conn, self.team_id):
                raise WarrenError(TEAM_DELETED)
            done = await conn.execute(
                template_builds.update()
                .where(
                    template_builds.c.id == self.build_id,
                    template_builds.c.status == "running",
                    template_builds.c.error == "",  # a cancel asked meanwhile: not ready
                )
                .values(status="ready", finished_at=clock.now(), step=self.step, cached_steps=self.cached)
            )
            if not done.rowcount:
                raise WarrenError(await self._why_not_ready(conn))
            row = await tpl.insert_version(
                conn,
                team_id=self.team_id,
                name=self.body.name,
                base=self.base,
                layers=self.layers,
                config=spec.config,
                tags=tpl.check_tags(self.body.tags),
                source="build",
                size_bytes=size,
                build_id=self.build_id,
                vcpus=self.shape[0],
                memory_mb=self.shape[1],
            )
            await conn.execute(
                template_builds.update()
                .where(template_builds.c.id == self.build_id)
                .values(template_id=row["id"])
            )
            await self.log.last_line(
                conn,
                f"Template {self.body.name}:v{row['version']} is ready "
                f"({len(self.layers)} layers, {size} bytes)",
            )
        return int(row["version"])


async def run_build(
    runner: BuildRunner, build_id: uuid.UUID, team_id: uuid.UUID, body: BuildRequest, context: Path | None
) -> None:
    """The build's task: never raises (but re-raises its own cancellation). A build cancelled
    (or failed by the sweep) meanwhile: a cancel on this replica (``BuildRunner.stop_here``), or
    else the next log flush or heartbeat, sees its row ended and cancels the build's work. That
    cancels the step's RPC (its host kills the step) and stops its tenant thread work. A build
    cancelled while queued does not start."""
    engine, settings = runner.engine, runner.settings
    writer = LogWriter(engine, build_id, settings.build_max_log_mb * MiB)
    ticker = asyncio.create_task(writer.ticker(settings.build_heartbeat_s))
    built: list[_Build] = []
    failure: dict[str, Any] = {}
    try:
        async with autocommit(engine) as conn:
            started = await conn.execute(
                template_builds.update()
                .where(template_builds.c.id == build_id, template_builds.c.status == "queued")
                .values(status="running", started_at=clock.now(), heartbeat_at=clock.now())
            )
        if not started.rowcount:
            log.info("build %s ended before it started (cancelled): not run", build_id)
            return
        work = asyncio.create_task(_work(runner, build_id, team_id, body, context, writer, built))
        writer.on_ended = work.cancel
        runner.writers[build_id] = writer  # no await since the start: a cancel finds it or the row
        try:
            await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not writer.ended or (current is not None and current.cancelling()):
                raise  # the CP stops: its builds end with it
            failure = {"error": writer.reason}  # a running row is failed here (the sweep's: left)
    except asyncio.CancelledError:
        failure = {"error": STOPPED}
        raise
    except TimeoutError:
        failure = {"error": f"the build ran past its time limit ({settings.build_timeout_s} s)"}
    except StepFailed as e:
        failure = {"error": e.message, "exit_code": e.exit_code, "output": True}
    except WarrenError as e:
        failure = {"error": e.message}
    except Exception as e:
        log.exception("build %s failed", build_id)
        failure = {"error": f"internal error: {type(e).__name__}"}
    finally:
        runner.writers.pop(build_id, None)
        writer.on_ended = None
        ticker.cancel()
        if context is not None:
            await asyncio.to_thread(context.unlink, missing_ok=True)
        if failure:
            await _fail(writer, build_id, built[0] if built else None, failure)


async def _work(
    runner: BuildRunner,
    build_id: uuid.UUID,
    team_id: uuid.UUID,
    body: BuildRequest,
    context: Path | None,
    writer: LogWriter,
    built: list[_Build],
) -> None:
    """The build's work, in its time limit, then its version (its own task: a cancel stops it)."""
    settings = runner.settings
    deadline = clock.monotonic() + settings.build_timeout_s
    async with asyncio.timeout(settings.build_timeout_s):
        # The context's index is the build's work too: in its time limit, stopped with it.
        await context_child.check_index(team_id, context)
        build = _Build(runner, build_id, team_id, body, context, writer, deadline)
        built.append(build)
        spec, size = await build.run()
    await build.finish(spec, size)


async def _fail(
    writer: LogWriter, build_id: uuid.UUID, build: _Build | None, failure: dict[str, Any]
) -> None:
    tail = writer.tail()
    step = build.step if build is not None and build.step else None
    message = failure["error"]
    where = f"step {step}: " if step and message not in CANCELS else ""
    # A step that failed on the host: its last output lines say why.
    error = f"{where}{message}" + (f"\n{tail}" if tail and failure.get("output") else "")
    try:
        if not writer.ended:  # an ended build's log has ended too (its readers have left)
            await writer.line(f"error: {where}{message}")
            await writer.flush()
    except Exception:
        log.exception("build %s: could not write the end of its log", build_id)
    await mark_failed(
        writer.engine,
        build_id,
        error[-4096:],
        failed_step=step,
        exit_code=failure.get("exit_code"),
        log_bytes=writer.offset,
    )
