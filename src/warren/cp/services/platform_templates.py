"""Platform templates built from a Warrenfile in the package: ``base`` (Debian with the usual
tools and a sudo-capable user ``user``; ``cp/templates/base.Warrenfile``).

With ``WARREN_BUILD_BASE_TEMPLATE`` set (``warren up`` sets it) the control plane builds it in
the background as the platform team, through the ordinary build service: it waits for a host to
be online (the agent builds ``minimal`` on the way, so ``base`` follows it), skips the build when
the newest ``base`` was built from the same spec (its sha256) or such a build is already running,
logs the build's progress step by step, and retries a failed build a few times (apt mirrors
have bad minutes). Several replicas may run this: one that finds a build of the same spec
under way waits for it instead of starting another (two replicas starting at the very same
moment may both build; the second build only adds a version).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.cp.db.engine import autocommit
from warren.cp.db.tables import hosts, template_builds, templates
from warren.cp.services import template_builds as builds
from warren.cp.services.context import AuthContext
from warren.errors import WarrenError

log = logging.getLogger("warren.platform_templates")

BASE_NAME = "base"
BASE_SPEC = Path(__file__).resolve().parent.parent / "templates" / "base.Warrenfile"
PLATFORM = AuthContext(kind="api_key", team_id=ids.PLATFORM_TEAM_ID, api_key_name="platform")
POLL_S = 2.0
ATTEMPTS = 3
Context = Callable[[], Awaitable[tuple[Path, str]]]
RETRY_S = 30.0  # doubled after each failed attempt


def spec_digest(spec: str) -> str:
    return hashlib.sha256(spec.encode()).hexdigest()


async def built_digest(engine: AsyncEngine, name: str) -> str | None:
    """The spec digest of the newest platform version of ``name`` (None: none, or not built)."""
    async with autocommit(engine) as conn:
        spec = (
            await conn.execute(
                sa.select(template_builds.c.spec)
                .select_from(templates.join(template_builds, templates.c.build_id == template_builds.c.id))
                .where(templates.c.team_id == ids.PLATFORM_TEAM_ID, templates.c.name == name)
                .order_by(templates.c.version.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    return None if spec is None else spec_digest(spec)


async def running_build(engine: AsyncEngine, name: str, spec: str) -> uuid.UUID | None:
    """A platform build of ``name`` from ``spec`` that is queued or running (another replica's)."""
    async with autocommit(engine) as conn:
        return (
            await conn.execute(
                sa.select(template_builds.c.id)
                .where(
                    template_builds.c.team_id == ids.PLATFORM_TEAM_ID,
                    template_builds.c.name == name,
                    template_builds.c.status.in_(builds.ACTIVE),
                    template_builds.c.spec == spec,
                )
                .limit(1)
            )
        ).scalar_one_or_none()


async def wait_for_host(engine: AsyncEngine) -> None:
    """Until some host is online: builds run on one."""
    said = False
    while True:
        async with autocommit(engine) as conn:
            online = (
                await conn.execute(sa.select(hosts.c.id).where(hosts.c.status == "online").limit(1))
            ).first()
        if online is not None:
            return
        if not said:
            log.info("event=platform_template_waiting reason=no_host_online")
            said = True
        await asyncio.sleep(POLL_S)


async def ensure(
    engine: AsyncEngine, runner: builds.BuildRunner, name: str, spec: str, context: Context | None = None
) -> str:
    """Build ``name`` from ``spec`` unless its newest version already is that spec. Returns
    ``current`` (nothing to do), ``ready`` or ``failed`` (after ATTEMPTS tries). A build of the
    same spec already under way (another replica's, or a dead one's until the sweep fails it)
    is waited for, then looked at again. ``context`` makes the build context (a tar file and its
    sha256, which the build then owns) for each attempt."""
    digest = spec_digest(spec)
    delay, attempt = RETRY_S, 0
    while True:
        await wait_for_host(engine)
        if await built_digest(engine, name) == digest:
            log.info("event=platform_template_current name=%s spec=%s", name, digest[:12])
            return "ready" if attempt else "current"
        if await running_build(engine, name, spec) is not None:
            log.info("event=platform_template_running_elsewhere name=%s", name)
            await asyncio.sleep(POLL_S)  # another process's build: only the database tells
            continue
        attempt += 1
        if await _build_once(engine, runner, name, spec, attempt, context) == "ready":
            return "ready"
        if attempt >= ATTEMPTS:
            return "failed"
        await asyncio.sleep(delay)
        delay *= 2


async def _build_once(
    engine: AsyncEngine,
    runner: builds.BuildRunner,
    name: str,
    spec: str,
    attempt: int,
    context: Context | None,
) -> str:
    try:
        files = await context() if context is not None else None
        info = await builds.submit(engine, runner, PLATFORM, builds.BuildRequest(name=name, spec=spec), files)
    except WarrenError as e:
        log.warning("event=platform_template_failed name=%s attempt=%d error=%s", name, attempt, e.message)
        return "failed"
    log.info(
        "event=platform_template_build name=%s build_id=%s steps=%d attempt=%d",
        name, info.build_id, info.steps, attempt,
    )  # fmt: skip
    seen = (info.status, info.step)
    while info.status in builds.ACTIVE:
        await asyncio.sleep(POLL_S)
        info = await builds.get_build(engine, PLATFORM, name, info.build_id)
        if (info.status, info.step) != seen:
            seen = (info.status, info.step)
            log.info(
                "event=platform_template_progress name=%s build_id=%s status=%s step=%d/%d cached=%d",
                name, info.build_id, info.status, info.step, info.steps, info.cached_steps,
            )  # fmt: skip
    if info.status == "ready":
        log.info(
            "event=platform_template_ready name=%s build_id=%s version=%s", name, info.build_id, info.version
        )
    else:
        log.warning(
            "event=platform_template_failed name=%s build_id=%s attempt=%d error=%s",
            name, info.build_id, attempt, info.error.splitlines()[0] if info.error else "",
        )  # fmt: skip
    return info.status


class PlatformTemplate:
    """The background task that makes sure a platform template exists: ``read_spec`` gives its
    Warrenfile and ``context`` (if any) its build context; the rules are :func:`ensure`'s."""

    def __init__(
        self,
        engine: AsyncEngine,
        runner: builds.BuildRunner,
        name: str,
        read_spec: Callable[[], str],
        context: Context | None = None,
    ) -> None:
        self.engine, self.runner = engine, runner
        self.name, self.read_spec, self.context = name, read_spec, context
        self.task: asyncio.Task[str] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"platform-template-{self.name}")

    async def _run(self) -> str:
        try:
            spec = await asyncio.to_thread(self.read_spec)
            return await ensure(self.engine, self.runner, self.name, spec, self.context)
        except asyncio.CancelledError:
            raise
        except Exception:  # a background task: say so, never take the control plane down
            log.exception("event=platform_template_error name=%s", self.name)
            return "failed"

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def base_template(engine: AsyncEngine, runner: builds.BuildRunner, spec_path: str = "") -> PlatformTemplate:
    """``base`` (see the module docstring), from ``spec_path`` or the packaged Warrenfile."""
    path = Path(spec_path) if spec_path else BASE_SPEC
    return PlatformTemplate(engine, runner, BASE_NAME, path.read_text)
