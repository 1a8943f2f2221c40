"""SandboxManager: every sandbox on this host, its lifecycle and the TTL reaper.

Per sandbox, under ``<data-dir>/sandboxes/<id>/`` (the full layout, its modes and mounts are
in sandbox_fs.py)::

    record.json    what re-adoption needs (config, slot, layers, status); written atomically
    config.json    the OCI bundle config (the sandbox dir *is* the bundle)
    disk/          a tmpfs sized to fit the memory limit: the disk cap. Holds upper/ and work/
    rootfs/        the overlayfs mount: template layer(s) + disk/upper
    run/           a tiny tmpfs bound at /run/warren; the guest agent's socket

A sandbox is running or paused (frozen; memory kept). The agent's state is rebuilt from the
records plus the runtime's own view at startup, so a restarted agent — even after ``kill -9`` —
keeps serving the sandboxes that survived it, and removes whatever a crash left half-made.

The parts: create.py builds a sandbox (admission.py: creates' turns), record.py keeps its
record, metrics.py samples it, readopt.py takes survivors back at startup, teardown.py removes
what one left, sandbox_runtime.py is what differs by runtime (the choice, gVisor's pause to disk,
forks), warm_pool.py hands out ready members; commands and files go to the guest (:meth:`guest`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from warren import clock
from warren.agent import metrics, record, sandbox_fs
from warren.agent.admission import CreateAdmission
from warren.agent.chain import Chain, TemplateConfig
from warren.agent.container_exits import ContainerExits, confirmed_gone, gone, gone_message
from warren.agent.container_ids import ContainerIds
from warren.agent.create import BuildLimits, CreateRequest, SandboxBuilder, check_request
from warren.agent.guest_client import GuestClient
from warren.agent.layer_cache import LayerCache
from warren.agent.network import NetworkSlots
from warren.agent.readopt import readopt
from warren.agent.record import HostSandbox, MetricPoint
from warren.agent.resume_holds import ResumeHolds
from warren.agent.runtime import cmds_oom
from warren.agent.runtime.base import Runtime
from warren.agent.runtime.select import RuntimeSet
from warren.agent.sandbox_runtime import SandboxRuntimes
from warren.agent.settings import AgentSettings
from warren.agent.shielded_ops import ShieldedOps
from warren.agent.step_sandboxes import StepSandboxes, out_of_service
from warren.agent.teardown import Teardown, set_subreaper
from warren.agent.templates import TemplateStore
from warren.agent.warm_pool import WarmPools
from warren.aio import every
from warren.egress_rules import EgressRules
from warren.errors import InternalError, InvalidState, NotFound, WarrenError

log = logging.getLogger("warren.agent")

REAPER_INTERVAL = 2.0
TEARDOWN_WAIT_S = 60.0  # how long stopping the agent waits for destroys under way


class SandboxManager:
    def __init__(
        self,
        data_dir: Path,
        runtime: Runtime,
        *,
        settings: AgentSettings,
        templates: TemplateStore | None = None,
        network: NetworkSlots | None = None,
        guest_dir: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.sandboxes_dir = data_dir / "sandboxes"
        # The runtimes sandboxes may choose (runtime/select.py); one runtime is a set of one.
        if not isinstance(runtime, RuntimeSet):
            runtime = RuntimeSet({runtime.name: runtime}, runtime.name)
        self.runtimes = runtime
        # Claimed warm-pool members keep their container id (container_ids.py).
        self.runtime = ContainerIds(runtime, data_dir / "container-ids", released=runtime.forget)
        self.settings = settings
        self.templates = templates or TemplateStore(data_dir / "templates", mirror=settings.debian_mirror)
        self.network = network or NetworkSlots(owner=str(data_dir), pool_size=settings.net_pool)
        import warren.guest

        self.guest_dir = guest_dir or Path(warren.guest.__file__).resolve().parent
        self._sandboxes: dict[str, HostSandbox] = {}
        self.layers = LayerCache(
            data_dir / "layers", max_bytes=settings.max_layer_mb << 20, in_use=self._chains,
            images=settings.layer_images, installs_at_once=settings.layer_installs_at_once,
            install_queue=settings.layer_install_queue,
        )  # fmt: skip
        self._teardown = Teardown(self.sandboxes_dir, self.runtime, self.network, self.runtime.container_id)
        self._builder = SandboxBuilder(
            sandboxes_dir=self.sandboxes_dir, runtime=self.runtime, network=self.network,
            guest_dir=self.guest_dir, guest_of=self._guest, reap=self._teardown.track,
            limits=BuildLimits(max_open_files=settings.max_open_files, max_processes=settings.max_processes),
        )  # fmt: skip
        self._runtimes = SandboxRuntimes(runtime, self.runtime, self.templates)
        self._builder.restore = self._runtimes.restore_fork
        self._admission = CreateAdmission(settings.create_limit())
        self.create_concurrency = self._admission.limit
        self._pause_all_epoch = 0  # bumped by every PauseAll: a create seeing it move pauses too
        self._auto_paused: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        # Destroys, pauses and resumes under way: they run to completion (shielded_ops.py).
        self._ops = ShieldedOps()
        self.steps = StepSandboxes(self._ops, self._teardown)  # build steps': never registered
        self._stopping = False
        # Containers that die on their own, noticed at once (a pidfd each; container_exits.py).
        self._exits = ContainerExits(lambda sb_id, pid: self._ops.detach(self._exited(sb_id, pid)))
        self.holds = ResumeHolds()  # paused for a snapshot the CP resumes: calls wait (resume_holds.py)
        self.warm_pools = self._warm_pools()
        # Prepared network slots are refilled after creates, as warm pools are.
        self.network.wait_idle = self._admission.wait_quiet

    def _warm_pools(self) -> WarmPools:
        warm = WarmPools(
            self.data_dir, sandboxes_dir=self.sandboxes_dir, runtime=self.runtime, network=self.network,
            builder=self._builder.moved(self.data_dir / "warm"), lower_layers=self.lower_layers,
            hold=self.layers.hold, missing_layers=self.layers.missing,
            creates_idle=self._admission.wait_quiet,
            assign=self.runtimes.assign, resolve=self.runtimes.resolve, sandboxes_teardown=self._teardown,
        )  # fmt: skip
        warm.configure(self.settings.warm_pool, freeze=self.settings.warm_pool_freeze)
        return warm

    # ====================================================================== start / stop

    async def start(self) -> None:
        """Host setup, clean up a crash's leftovers, re-adopt survivors, start the loops."""
        with contextlib.suppress(OSError):
            set_subreaper()
        sandbox_fs.secure_data_dirs(self.data_dir, self.sandboxes_dir)
        sandbox_fs.check_traversable(self.sandboxes_dir)
        self.templates.make_private()
        await self.network.setup_host()
        # Warm-pool members a previous agent left are destroyed, never adopted (rebuilt below).
        await self.warm_pools.cleanup_leftovers()
        self._runtimes.assign_recorded(self.sandboxes_dir)
        await readopt(self.sandboxes_dir, self.runtime, self.network, self._teardown, self._adopt)
        for p in await self.templates.remove_leftovers():
            log.info("event=template_leftover_removed path=%s", p)
        for p in self.layers.prepare():
            log.info("event=layer_leftover_removed path=%s", p)
        await self.network.start_pool()
        self.warm_pools.start()
        s, sweep = self.settings, self.warm_pools.sweep_quarantines
        self._tasks = [
            asyncio.create_task(every(REAPER_INTERVAL, self.reap_idle, log, "ttl-reaper"), name="ttl-reaper"),
            asyncio.create_task(every(s.metrics_interval, self._sample_all, log, "metrics"), name="metrics"),
            asyncio.create_task(every(1.0, self._teardown.reap_zombies, log, "zombies"), name="zombies"),
            asyncio.create_task(every(s.quarantine_sweep_s, sweep, log, "sweep"), name="sweep"),
            # `minimal` now, not in the first create (debootstrap: 30-60 s); an earlier one waits for it.
            asyncio.create_task(self._prepare_minimal(), name="template-minimal"),
        ]

    async def _prepare_minimal(self) -> None:
        try:
            await self.templates.ensure_minimal()
        except Exception as e:  # the next create retries the build and reports the error
            log.error("event=template_build_failed template=minimal error=%s", e)

    async def stop(self) -> None:
        """Stop the loops. Sandboxes keep running: a restarted agent re-adopts them."""
        self._stopping = True
        self._exits.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        # Members are never re-adopted: destroy them now rather than leave them to the next agent.
        await self.warm_pools.stop()
        await self._ops.wait(TEARDOWN_WAIT_S)
        await self.network.drain_pool()
        await asyncio.to_thread(self.layers.unmount_idle)

    async def destroy_all(self) -> None:
        """`Terminate`: the host is being taken out of service, so every sandbox goes (build
        steps' too, their steps then failing). Creates
        stop first: queued ones are refused, and those under way are destroyed once they finish,
        so that no sandbox comes up after the rest were destroyed and runs on unrecorded. The
        caller bounds the wait; creates still running then are cancelled with the server and
        roll themselves back."""
        self._admission.stop_accepting()
        await self.warm_pools.stop()

        async def destroy(sb_id: str) -> None:
            try:
                await self.destroy(sb_id)
            except WarrenError as e:
                log.error("event=destroy_failed sandbox_id=%s error=%s", sb_id, e)

        while True:
            # The sandboxes there are first, all at once: a slow create, or one sandbox held by
            # a long snapshot, must not hold up the rest.
            # Build steps' sandboxes too: no agent will start on this data dir again to remove them.
            await asyncio.gather(*(destroy(sb_id) for sb_id in list(self._sandboxes)), self.steps.end_all())
            if self._admission.idle():
                return
            await self._admission.wait_idle()

    def _adopt(self, sb: HostSandbox) -> None:
        """A sandbox the previous agent left running, back in the registry."""
        if sb.status == "paused" and not sb.paused_state:
            # Paused by a crash's checkpoint (pid 0: no process) or frozen.
            sb.paused_state = self._runtimes.adopted_paused_state(sb)
        cmds_oom.WATCH.arm(self.runtime.container_id(sb.id))  # a storm left by the last agent
        self._register(sb)
        self._save(sb)

    # ======================================================================== registry

    def _dir(self, sb_id: str) -> Path:
        return self.sandboxes_dir / sb_id

    def _get(self, sb_id: str) -> HostSandbox:
        sb = self._sandboxes.get(sb_id)
        if sb is None:
            raise NotFound(f"sandbox {sb_id} not found")
        return sb

    def sandbox(self, sb_id: str) -> HostSandbox:
        return self._get(sb_id)

    def _running(self, sb_id: str) -> HostSandbox:
        sb = self._get(sb_id)
        if sb.status != "running":
            raise InvalidState(f"sandbox {sb_id} is not running (status {sb.status})")
        return sb

    async def ready_guest(self, sb_id: str) -> GuestClient:
        """:meth:`guest` once a pause the CP ends is over: every command's way in (resume_holds.py)."""
        await self.holds.wait(sb_id)
        return self.guest(sb_id)

    def guest(self, sb_id: str) -> GuestClient:
        """The guest client of a running sandbox, now (a stream's check that it still runs)."""
        self._exits.check(sb_id)  # its container died: not running, even once it is removed
        sb = self._running(sb_id)
        if sb.checkpointing:
            raise InvalidState(f"sandbox {sb_id} is being paused")
        return self._guest(sb)

    def _touch(self, sb: HostSandbox) -> None:
        sb.last_active_at = clock.time_s()

    def touch(self, sb_id: str) -> None:
        """Activity on a running sandbox (a command, stdin, a signal): its idle time restarts."""
        sb = self._sandboxes.get(sb_id)
        if sb is not None:
            self._touch(sb)

    @contextlib.contextmanager
    def in_use(self, sb_id: str) -> Iterator[None]:
        """Around a command (exec, exec stream, attach): activity at its start and end, and
        never idle in between, however long it runs."""
        sb = self._sandboxes.get(sb_id)
        if sb is None:
            yield
            return
        sb.busy += 1
        self._touch(sb)
        try:
            yield
        finally:
            sb.busy -= 1
            self._touch(sb)

    def _idle(self, sb: HostSandbox, now: float) -> bool:
        return sb.busy == 0 and sb.timeout_sec > 0 and now - sb.last_active_at > sb.timeout_sec

    def _save(self, sb: HostSandbox) -> None:
        record.save(self._dir(sb.id), sb)

    def _guest(self, sb: HostSandbox) -> GuestClient:
        if sb.guest is None:
            where = self._runtimes.guest_address(sb, self._dir(sb.id))
            sb.guest = GuestClient(where, max_output=self.settings.max_exec_output)
        return sb.guest

    def list_sandboxes(self) -> tuple[list[HostSandbox], list[str]]:
        auto, self._auto_paused = self._auto_paused, []
        return list(self._sandboxes.values()), auto

    def status_counts(self) -> dict[str, int]:
        """Registered sandboxes by status (for the metrics endpoint; no side effects)."""
        counts: dict[str, int] = {}
        for sb in self._sandboxes.values():
            counts[sb.status] = counts.get(sb.status, 0) + 1
        if self._teardown.quarantined:  # destroyed, but something of them may live (teardown.py)
            counts["quarantined"] = len(self._teardown.quarantined)
        return counts

    def running(self) -> dict[str, str]:
        """Running sandboxes' container ids → tenants, but those a pause or resume holds."""
        live = [sb for sb in self._sandboxes.values() if sb.status == "running" and not sb.lock.locked()]
        return {self.runtime.container_id(sb.id): sb.tenant for sb in live}

    def _chains(self) -> set[str]:
        """The layers the registered sandboxes run on (paused and re-adopted ones included)."""
        return {
            d for sb in self._sandboxes.values() if sb.chain for d in sb.chain.get("layers", ())
        } | self.warm_pools.chains()

    def template_config(self, sb_id: str) -> TemplateConfig:
        """A sandbox's template defaults (exec's and files' user and cwd): empty for a legacy one."""
        return TemplateConfig.from_record(self._get(sb_id).template_config)

    def creating(self) -> list[str]:
        """Creates received and not finished (queued or under way): the CP leaves their
        `pending` records alone."""
        return self._admission.creating()

    # ========================================================================== create

    async def create(
        self,
        *,
        sandbox_id: str = "",
        team_id: str = "",
        template_id: str = "",
        template: str = "",
        vcpus: int = 0,
        memory_mb: int = 0,
        disk_size_mb: int = 0,
        timeout_sec: int = 0,
        internet: bool = True,
        env: dict[str, str] | None = None,
        egress_allow: Sequence[str] = (),
        chain: Chain | None = None,
        config: TemplateConfig | None = None,
        egress: EgressRules | None = None,
        runtime: str = "",
        owner_team: str = "",
        owner_account: str = "",
    ) -> HostSandbox:
        """``egress_allow``: CIDRs the sandbox may reach past the default egress deny. ``chain``:
        the rootfs is these layers (``config`` applies), not the template_id's. ``runtime``:
        one this host offers ("" its default); a memory snapshot's sandbox is gVisor's."""
        req = check_request(
            sandbox_id=sandbox_id, team_id=team_id, template_id=template_id, template=template,
            vcpus=vcpus, memory_mb=memory_mb, disk_size_mb=disk_size_mb, timeout_sec=timeout_sec,
            internet=internet, env=env, egress_allow=egress_allow, chain=chain, config=config,
            egress=egress, owner_team=owner_team, owner_account=owner_account,
        )  # fmt: skip
        self._runtimes.choose(req, runtime)
        sandbox_id = req.sandbox_id
        self._admission.check_accepting()
        if sandbox_id in self._sandboxes or sandbox_id in self._admission or self._dir(sandbox_id).exists():
            raise InvalidState(f"sandbox {sandbox_id} already exists")
        pause_all_epoch = self._pause_all_epoch
        with self._admission.in_flight(sandbox_id):
            try:
                with self.layers.hold(req.chain):
                    # A pool of the request's runtime, if any (warm_pool.py: Pool.matches).
                    sb, queued, admitted = await self._claim_or_build(req)
            except BaseException:
                if sandbox_id not in self._sandboxes:
                    self.runtimes.forget(sandbox_id)
                raise
        done = time.monotonic()
        log.info(
            "event=sandbox_created sandbox_id=%s team_id=%s template_id=%s host_ip=%s ms=%.1f "
            "queued_ms=%.1f",
            sb.id, sb.team_id, sb.template_id, sb.host_ip, (done - admitted) * 1000,
            (admitted - queued) * 1000,
        )  # fmt: skip
        if self._pause_all_epoch != pause_all_epoch:
            # PauseAll ran while this create waited or ran: it is paused like the rest.
            await self._pause_for_pause_all(sb.id)
        return sb

    async def lower_layers(self, req: CreateRequest) -> tuple[list[Path], dict[str, Any]]:
        """The overlay's lower layers (topmost first) and the base config of a request."""
        if req.chain is None:
            tpl = await self.templates.resolve(req.ref)
            return tpl.lower_layers, tpl.config
        lower = await self.layers.lower(req.chain, self.templates.ensure_minimal)
        return lower, {"kind": "chain", "name": req.chain.base}

    def admission(self, req: CreateRequest, times: list[float]) -> AbstractAsyncContextManager[None]:
        """A create's turn (admission.py), its owner's; appends when it queued and was admitted."""
        return self._admission.turn(req.sandbox_id, req.tenant, times)

    async def _claim_or_build(self, req: CreateRequest) -> tuple[HostSandbox, float, float]:
        """A warm-pool member when one matches (warm_pool.py), else a cold build."""
        claimed = await self.warm_pools.claim_started(req, guest_of=self._guest, discard=self._discard)
        if claimed is None:
            return await self._admit_and_build(req)
        sb, t = claimed
        self._register(sb)
        return sb, t, t

    async def _admit_and_build(self, req: CreateRequest) -> tuple[HostSandbox, float, float]:
        """Resolve the template, wait for a create slot, build; the new sandbox is registered.
        Returns it with the monotonic times it was queued and admitted."""
        lower, base_config = await self.lower_layers(req)
        times: list[float] = []
        admission = self.admission(req, times)
        sb = await self._builder.build(req, lower, base_config, admission=admission)
        self._register(sb)
        return sb, times[0], times[1]

    async def build_transient(self, req: CreateRequest) -> HostSandbox:
        """A build step's sandbox: made like any other (admission included) but not registered,
        so never listed, reaped or re-adopted; ``steps.end`` removes it (step_sandboxes.py). The
        caller holds its chain (``layers.hold``)."""
        lower, base_config = await self.lower_layers(req)
        self.steps.making(req.sandbox_id)
        try:
            sb = await self._builder.build(req, lower, base_config, admission=self.admission(req, []))
        except BaseException:
            self.steps.not_made(req.sandbox_id)
            raise
        if not self.steps.made(sb):  # Terminate began while it was made
            await self.steps.end(sb)
            raise out_of_service()
        return sb

    async def _discard(self, sb: HostSandbox) -> None:
        """An unregistered sandbox's teardown, shielded (shielded_ops.py)."""
        await self._ops.run(self._teardown.cleanup(sb.id, slot=sb.slot, pid=sb.pid))

    def guest_of(self, sb: HostSandbox) -> GuestClient:
        return self._guest(sb)

    # ========================================================================= destroy

    async def destroy(self, sb_id: str) -> None:
        """Shielded, and a second destroy of the same sandbox joins the first (shielded_ops.py)."""
        await self._ops.run_once(sb_id, lambda: self._destroy(sb_id), self._log_detached_failure)

    @staticmethod
    def _log_detached_failure(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (e := task.exception()) is not None and not isinstance(e, NotFound):
            log.error("event=destroy_failed error=%s", e)

    async def _destroy(self, sb_id: str) -> None:
        sb = self._sandboxes.get(sb_id)
        if sb is None:
            if sb_id in self.steps:
                raise NotFound(f"sandbox {sb_id} not found")  # a build step's: its own
            if sb_id in self._admission:
                raise InvalidState(f"sandbox {sb_id} is being created")
            if not self._dir(sb_id).exists() and await self.runtime.state(sb_id) is None:
                raise NotFound(f"sandbox {sb_id} not found")
            # Files (or a container) without a live entry: a crash's leftovers. Clean them.
            await self._teardown.cleanup(sb_id, slot=self._teardown.leftover_slot(sb_id), pid=0)
            return
        async with sb.lock:
            if self._sandboxes.get(sb_id) is not sb:
                raise NotFound(f"sandbox {sb_id} not found")
            del self._sandboxes[sb_id]
            self.holds.release(sb_id)
            self._exits.forget(sb_id)
            await self._teardown.cleanup(sb_id, slot=sb.slot, pid=sb.pid)
            self.runtimes.forget(sb_id)
        log.info("event=sandbox_destroyed sandbox_id=%s", sb_id)

    # ===================================================================== pause/resume

    async def pause(
        self, sb_id: str, *, reason: str = "request", only_if_idle: bool = False, resume_after: bool = False
    ) -> bool:
        """Freeze it. Shielded: a caller that gives up (deadline, cancel) must not leave the
        cgroup frozen while the record says running. ``only_if_idle`` (the TTL reaper) decides
        under the lock, so a command that started meanwhile keeps it running; returns whether
        it paused. ``resume_after``: calls wait for the CP's resume (resume_holds.py)."""
        return await self._ops.run(self._pause(sb_id, reason, only_if_idle, resume_after))

    async def _pause(self, sb_id: str, reason: str, only_if_idle: bool, resume_after: bool = False) -> bool:
        sb = self._get(sb_id)
        async with sb.lock:
            self._still_there(sb)
            if only_if_idle and (sb.status != "running" or not self._idle(sb, clock.time_s())):
                return False
            if sb.status != "running":
                raise InvalidState(f"sandbox {sb_id} is not running (status {sb.status})")
            with self.holds.during_pause(sb_id, resume_after):
                await self._runtimes.pause(sb)  # gVisor to disk when it can be (gvisor_ops.py)
            sb.status = "paused"
            sb.last_cpu = None
            self._save(sb)
            self._exits.watch_sandbox(sb)  # frozen: a kill from the host is polled for
        log.info("event=sandbox_paused sandbox_id=%s reason=%s", sb_id, reason)
        return True

    def _still_there(self, sb: HostSandbox) -> None:
        """After waiting for a sandbox's lock: a destroy that held it may have removed it."""
        if self._sandboxes.get(sb.id) is not sb:
            raise NotFound(f"sandbox {sb.id} not found")

    async def resume(self, sb_id: str, timeout_sec: int | None = None) -> HostSandbox:
        """Thaw it; shielded like :meth:`pause`. Calls held for it then go on (resume_holds.py)."""
        return await self._ops.run(self.holds.released_after(sb_id, self._resume(sb_id, timeout_sec)))

    async def _resume(self, sb_id: str, timeout_sec: int | None) -> HostSandbox:
        self._exits.check(sb_id)  # it died while paused: not running, even once removed
        sb = self._get(sb_id)
        async with sb.lock:
            self._still_there(sb)
            if sb.status != "paused":
                raise InvalidState(f"sandbox {sb_id} is not paused (status {sb.status})")
            if gone(sb):  # killed while frozen: a thaw would only let it die
                self._ops.detach(self._died(sb))  # once the lock is free
                raise InvalidState(gone_message(sb_id))
            await self._runtimes.resume(sb, self._dir(sb_id), self._guest)
            sb.status, sb.paused_state = "running", ""
            self._exits.watch_sandbox(sb)  # a gVisor sandbox's process is a new one
            if timeout_sec is not None and timeout_sec >= 0:
                sb.timeout_sec = timeout_sec
            self._touch(sb)
            self._save(sb)
        log.info("event=sandbox_resumed sandbox_id=%s", sb_id)
        return sb

    async def ping(self, sb_id: str) -> None:
        self._touch(self._running(sb_id))

    async def pause_all(self) -> list[str]:
        """Pause every running sandbox, best effort (the CP link calls this on lost contact).
        Creates under way or queued at this moment pause their sandbox as soon as it is up."""
        self._pause_all_epoch += 1
        await self.warm_pools.clear(reason="pause_all")
        paused = []
        for sb_id in [s.id for s in self._sandboxes.values() if s.status == "running"]:
            if await self._pause_for_pause_all(sb_id):
                paused.append(sb_id)
        return paused

    async def _pause_for_pause_all(self, sb_id: str) -> bool:
        try:
            await self.pause(sb_id, reason="pause_all")
        except WarrenError as e:
            log.error("event=pause_failed sandbox_id=%s reason=pause_all error=%s", sb_id, e)
            return False
        self._auto_paused.append(sb_id)
        return True

    async def reap_idle(self) -> None:
        """TTL reaper: auto-pause running sandboxes idle longer than their timeout (no command
        under way, no activity for ``timeout_sec``)."""
        now = clock.time_s()
        idle = [sb.id for sb in self._sandboxes.values() if sb.status == "running" and self._idle(sb, now)]
        for sb_id in idle:
            try:
                # Decided again under the sandbox's lock: a command, a pause or a destroy may
                # have come first.
                if await self.pause(sb_id, reason="idle", only_if_idle=True):
                    self._auto_paused.append(sb_id)
            except NotFound:
                continue
            except InternalError as e:
                # The freeze itself failed: an idle sandbox that cannot be paused is destroyed.
                log.error("event=auto_pause_failed sandbox_id=%s error=%s; destroying", sb_id, e)
                with contextlib.suppress(WarrenError):
                    await self.destroy(sb_id)

    # ========================================================================= metrics

    def _register(self, sb: HostSandbox) -> None:
        self._sandboxes[sb.id] = sb
        self._exits.watch_sandbox(sb)
        self._sample(sb)

    async def _exited(self, sb_id: str, pid: int) -> None:
        """The watch said the sandbox's process ended (or, frozen, was killed)."""
        if (sb := await confirmed_gone(self._sandboxes, sb_id, pid)) is not None:
            await self._died(sb)

    async def _died(self, sb: HostSandbox) -> None:
        """Its guest (PID 1) died with its container: its calls end, everything is freed (the CP
        sees it missing from ListSandboxes)."""
        log.error("event=sandbox_died sandbox_id=%s pid=%d", sb.id, sb.pid)
        self._exits.died(sb.id, sb.guest)
        with contextlib.suppress(WarrenError):
            await self.destroy(sb.id)

    def _sample(self, sb: HostSandbox) -> None:
        metrics.sample(sb, self.runtime, self._dir(sb.id) / "disk")

    async def _sample_all(self) -> None:
        for sb in list(self._sandboxes.values()):
            if sb.lock.locked():
                continue  # a pause or resume under way (a gVisor checkpoint ends the process)
            if gone(sb):
                await self._died(sb)  # where no pidfd told (container_exits.py) or it came first
                continue
            self._sample(sb)

    def metrics(self, sb_id: str, range_: str) -> list[MetricPoint]:
        return metrics.points(self._get(sb_id), range_)
