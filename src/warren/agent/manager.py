"""SandboxManager: every sandbox on this host, its lifecycle, the TTL reaper and re-adoption.

Per sandbox, under ``<data-dir>/sandboxes/<id>/``::

    record.json    what re-adoption needs (config, slot, layers, status); written atomically
    config.json    the OCI bundle config (the sandbox dir *is* the bundle)
    disk/          a tmpfs of `disk_size_mb`: the disk cap. Holds upper/ and work/
    rootfs/        the overlayfs mount: template layer(s) + disk/upper
    run/           bind-mounted at /run/warren; the guest agent's socket

A sandbox is running or paused (frozen; memory kept). The agent's state is rebuilt from the
records plus the runtime's own view at startup, so a restarted agent — even after ``kill -9`` —
keeps serving the sandboxes that survived it, and removes whatever a crash left half-made.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ctypes
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from warren import clock, ids
from warren.agent.guest_client import EntryInfo, ExecResult, ExecSession, GuestClient, ProcessInfo
from warren.agent.network import NetworkSlots, Slot
from warren.agent.proc import MS_NODEV, MS_NOSUID, mount, mounts_under, run, umount
from warren.agent.runtime.base import ContainerStatus, Runtime
from warren.agent.runtime.bundle import GUEST_SOCKET, BundleSpec, oci_config
from warren.agent.templates import MAPPED_BASE, TemplateRef, TemplateStore
from warren.errors import InternalError, InvalidRequest, InvalidState, NotFound, WarrenError

log = logging.getLogger("warren.agent")

DEFAULT_VCPUS = 1
DEFAULT_MEMORY_MB = 512
DEFAULT_DISK_MB = 5120
DEFAULT_EXEC_TIMEOUT = 30
GUEST_READY_TIMEOUT = 30.0
REAPER_INTERVAL = 2.0
PIDS_LIMIT = 1024
MAX_VCPUS = 64
MAX_MEMORY_MB = 256 * 1024
# Sampling period of the metrics ring buffers and how many points each range keeps.
METRICS_INTERVAL = float(os.environ.get("WARREN_AGENT_METRICS_INTERVAL", "5"))
METRIC_RANGES = {"10m": (600, 120), "2h": (7200, 120), "24h": (86400, 144)}
PR_SET_CHILD_SUBREAPER = 36
NET_POOL = int(os.environ.get("WARREN_AGENT_NET_POOL", "4"))
# How long stopping the agent waits for destroys under way.
TEARDOWN_WAIT_S = 60.0


def create_concurrency_from_env() -> int:
    """How many creates run at once; the rest wait in arrival order. A create is mostly CPU
    (runc, the namespaces, the guest's start), so past a couple per core more of them at once
    only share the CPU: with no limit a burst of 30 on one core finished nearly all together at
    1.5-2.3 s, with 2 at a time the median was ready after 1.0-1.2 s and the first within
    0.1 s (bench/schedule.py, docs/agent.md). ``WARREN_AGENT_CREATE_CONCURRENCY`` overrides the
    default of two per usable CPU; 0 means no limit."""
    raw = os.environ.get("WARREN_AGENT_CREATE_CONCURRENCY", "").strip()
    if not raw:
        # CPUs this process may run on; a CPU quota on the agent's own cgroup is not looked at.
        return 2 * len(os.sched_getaffinity(0))
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise SystemExit(
            f"WARREN_AGENT_CREATE_CONCURRENCY={raw!r}: expected a whole number >= 0 (0 = no limit)"
        )
    return value


T = TypeVar("T")


class ExecTimeout(WarrenError):
    code = "timeout"


@dataclass
class Sandbox:
    id: str
    status: str  # running | paused
    team_id: str
    template_id: str
    template: str
    vcpus: int
    memory_mb: int
    disk_size_mb: int
    timeout_sec: int
    internet: bool
    env: dict[str, str]
    slot: int
    host_ip: str
    created_at: float
    last_active_at: float
    lower_layers: list[str]  # overlay lowerdir, topmost first
    snapshot_layers: list[str]  # the non-base lower layers, bottom first (copied by snapshots)
    base_config: dict[str, Any] = field(default_factory=dict)
    pid: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    guest: GuestClient | None = field(default=None, repr=False)
    metrics: dict[str, deque[tuple[int, float, int, int]]] = field(default_factory=dict, repr=False)
    last_cpu: tuple[float, int] | None = field(default=None, repr=False)
    # Commands under way (unary exec, exec streams): the sandbox is in use, whatever the time
    # since they started — the TTL reaper leaves it alone.
    busy: int = field(default=0, repr=False)

    RECORD_FIELDS = (
        "id", "status", "team_id", "template_id", "template", "vcpus", "memory_mb", "disk_size_mb",
        "timeout_sec", "internet", "env", "slot", "host_ip", "created_at", "last_active_at",
        "lower_layers", "snapshot_layers", "base_config", "pid",
    )  # fmt: skip

    def record(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every field, the lock (and the futures of any
        # call waiting on it) included, which fails while another call waits for the sandbox.
        return {k: copy.deepcopy(getattr(self, k)) for k in self.RECORD_FIELDS}


def _set_subreaper() -> None:
    # Container inits are re-parented to the agent when runc exits, so the agent reaps them
    # (some hosts' PID 1 does not). They survive the agent's death: nothing kills them with it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # unknown: never tear down on a guess
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def _umount_lazy(path: Path) -> None:
    with contextlib.suppress(OSError):
        umount(str(path), lazy=True)


class SandboxManager:
    def __init__(
        self,
        data_dir: Path,
        runtime: Runtime,
        *,
        templates: TemplateStore | None = None,
        network: NetworkSlots | None = None,
        guest_dir: Path | None = None,
        create_concurrency: int | None = None,
    ) -> None:
        """``create_concurrency``: creates admitted at once (0 = no limit, None = from the
        environment, see :func:`create_concurrency_from_env`)."""
        self.data_dir = data_dir
        self.sandboxes_dir = data_dir / "sandboxes"
        self.runtime = runtime
        self.templates = templates or TemplateStore(data_dir / "templates")
        self.network = network or NetworkSlots(owner=str(data_dir), pool_size=NET_POOL)
        import warren.guest

        self.guest_dir = guest_dir or Path(warren.guest.__file__).resolve().parent
        self._sandboxes: dict[str, Sandbox] = {}
        self._creating: set[str] = set()
        # Cleared while any create (queued or under way) is in `_creating`.
        self._no_creates = asyncio.Event()
        self._no_creates.set()
        self._accepting_creates = True
        # Bumped by every PauseAll: a create that sees it change pauses its new sandbox too.
        self._pause_all_epoch = 0
        self._auto_paused: list[str] = []
        self._zombies: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []
        # Destroys, pauses and resumes under way, run to completion whatever their caller does
        # (see _shield); stopping the agent lets them finish.
        self._shielded: set[asyncio.Task[Any]] = set()
        # The destroys among them, by sandbox: a second destroy of the same sandbox joins the
        # first instead of running the leftover clean-up against a slot the first just freed.
        self._teardowns: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        limit = create_concurrency_from_env() if create_concurrency is None else create_concurrency
        self.create_concurrency = limit
        # asyncio.Semaphore wakes its waiters first come, first served.
        self._create_slots = asyncio.Semaphore(limit) if limit > 0 else None

    # ====================================================================== start / stop

    async def start(self) -> None:
        """Host setup, clean up a crash's leftovers, re-adopt survivors, start the loops."""
        with contextlib.suppress(OSError):
            _set_subreaper()
        self.sandboxes_dir.mkdir(parents=True, exist_ok=True)
        self._check_traversable()
        await self.network.setup_host()
        await self._readopt()
        for p in await self.templates.remove_leftovers():
            log.info("event=template_leftover_removed path=%s", p)
        await self.network.start_pool()
        self._tasks = [
            asyncio.create_task(self._loop(REAPER_INTERVAL, self.reap_idle), name="ttl-reaper"),
            asyncio.create_task(self._loop(METRICS_INTERVAL, self._sample_all), name="metrics"),
            asyncio.create_task(self._loop(1.0, self._reap_zombies), name="zombies"),
            # Build `minimal` now rather than inside the first CreateSandbox (debootstrap takes
            # 30-60 s); a create that comes earlier waits for this same build.
            asyncio.create_task(self._prepare_minimal(), name="template-minimal"),
        ]

    async def _prepare_minimal(self) -> None:
        try:
            await self.templates.ensure_minimal()
        except Exception as e:  # the next create retries the build and reports the error
            log.error("event=template_build_failed template=minimal error=%s", e)

    def _check_traversable(self) -> None:
        """Root in a sandbox is an unprivileged host uid: it must be able to walk down to its
        rootfs, templates and the guest dir, or the runtime fails with a bare EACCES."""
        for target in (self.sandboxes_dir, self.templates.minimal_dir.parent, self.guest_dir):
            for p in [target, *target.parents]:
                if p.exists() and not os.stat(p).st_mode & 0o001:
                    raise SystemExit(
                        f"{p} is not searchable by other users (mode {oct(os.stat(p).st_mode & 0o777)}); "
                        f"sandbox root is an unprivileged host uid and must reach {target}: chmod o+x {p}"
                    )

    async def stop(self) -> None:
        """Stop the loops. Sandboxes keep running: a restarted agent re-adopts them."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._shielded:
            # Destroys, pauses and resumes under way finish (they are not interruptible
            # halfway); bounded, so a stuck one cannot keep the agent from exiting.
            log.info("event=waiting_for_operations count=%d", len(self._shielded))
            await asyncio.wait(set(self._shielded), timeout=TEARDOWN_WAIT_S)
        await self.network.drain_pool()

    async def destroy_all(self) -> None:
        """`Terminate`: the host is being taken out of service, so every sandbox goes. Creates
        stop first: queued ones are refused, and those under way are destroyed once they finish,
        so that no sandbox comes up after the rest were destroyed and runs on unrecorded. The
        caller bounds the wait; creates still running then are cancelled with the server and
        roll themselves back."""
        self._accepting_creates = False

        async def destroy(sb_id: str) -> None:
            try:
                await self.destroy(sb_id)
            except WarrenError as e:
                log.error("event=destroy_failed sandbox_id=%s error=%s", sb_id, e)

        while True:
            # The sandboxes there are first, all at once: a slow create, or one sandbox held by
            # a long snapshot, must not hold up the rest.
            await asyncio.gather(*(destroy(sb_id) for sb_id in list(self._sandboxes)))
            if self._no_creates.is_set():
                return
            await self._no_creates.wait()

    async def _loop(self, interval: float, fn: Callable[[], Awaitable[Any]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event=background_error task=%s", getattr(fn, "__name__", fn))

    # ========================================================================= helpers

    def _dir(self, sb_id: str) -> Path:
        return self.sandboxes_dir / sb_id

    def _get(self, sb_id: str) -> Sandbox:
        sb = self._sandboxes.get(sb_id)
        if sb is None:
            raise NotFound(f"sandbox {sb_id} not found")
        return sb

    def _running(self, sb_id: str) -> Sandbox:
        sb = self._get(sb_id)
        if sb.status != "running":
            raise InvalidState(f"sandbox {sb_id} is not running (status {sb.status})")
        return sb

    def _touch(self, sb: Sandbox) -> None:
        sb.last_active_at = clock.time_s()

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

    def _idle(self, sb: Sandbox, now: float) -> bool:
        return sb.busy == 0 and sb.timeout_sec > 0 and now - sb.last_active_at > sb.timeout_sec

    def _save(self, sb: Sandbox) -> None:
        path = self._dir(sb.id) / "record.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sb.record()))
        os.replace(tmp, path)

    def _guest(self, sb: Sandbox) -> GuestClient:
        if sb.guest is None:
            sb.guest = GuestClient(str(self._dir(sb.id) / "run" / "guest.sock"))
        return sb.guest

    def list_sandboxes(self) -> tuple[list[Sandbox], list[str]]:
        auto, self._auto_paused = self._auto_paused, []
        return list(self._sandboxes.values()), auto

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
    ) -> Sandbox:
        if not sandbox_id:
            _, sandbox_id = ids.new_id(ids.Kind.SANDBOX)
        ids.parse_id(ids.Kind.SANDBOX, sandbox_id, what="sandbox_id")
        vcpus = vcpus or DEFAULT_VCPUS
        memory_mb = memory_mb or DEFAULT_MEMORY_MB
        disk_size_mb = disk_size_mb or DEFAULT_DISK_MB
        if not (0 < vcpus <= MAX_VCPUS) or not (16 <= memory_mb <= MAX_MEMORY_MB) or disk_size_mb < 16:
            raise InvalidRequest("vcpus, memory_mb or disk_size_mb out of range")
        if timeout_sec < 0:
            raise InvalidRequest("timeout_sec must be >= 0")
        for k in env or {}:
            if not k or "=" in k or "\0" in k:
                raise InvalidRequest(f"invalid environment variable name {k!r}")
        ref = TemplateRef.parse(team_id, template_id)
        self._check_accepting_creates()
        if sandbox_id in self._sandboxes or sandbox_id in self._creating or self._dir(sandbox_id).exists():
            raise InvalidState(f"sandbox {sandbox_id} already exists")
        self._creating.add(sandbox_id)
        self._no_creates.clear()
        pause_all_epoch = self._pause_all_epoch
        try:
            tpl = await self.templates.resolve(ref)
            self._check_accepting_creates()
            queued = time.monotonic()
            if self._create_slots is not None and self._create_slots.locked():
                log.info("event=create_queued sandbox_id=%s", sandbox_id)
            async with self._create_slots or contextlib.nullcontext():
                self._check_accepting_creates()  # the agent may have begun terminating meanwhile
                admitted = time.monotonic()
                sb = await self._create(
                    sandbox_id, ref, template, tpl.lower_layers, tpl.config,
                    vcpus, memory_mb, disk_size_mb, timeout_sec, internet, env or {},
                )  # fmt: skip
        finally:
            self._creating.discard(sandbox_id)
            if not self._creating:
                self._no_creates.set()
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

    def _check_accepting_creates(self) -> None:
        if not self._accepting_creates:
            raise InvalidState("the agent is shutting down (host removed): it creates no more sandboxes")

    async def _create(
        self,
        sb_id: str,
        ref: TemplateRef,
        template: str,
        lower: list[Path],
        base_config: dict[str, Any],
        vcpus: int,
        memory_mb: int,
        disk_mb: int,
        timeout_sec: int,
        internet: bool,
        env: dict[str, str],
    ) -> Sandbox:
        d = self._dir(sb_id)
        t0 = time.monotonic()
        undo: list[Callable[[], Awaitable[Any]]] = []
        try:
            d.mkdir(parents=True)
            undo.append(lambda: asyncio.to_thread(shutil.rmtree, d, True))
            for sub in ("disk", "rootfs", "run"):
                (d / sub).mkdir()
            os.chown(d / "run", MAPPED_BASE, MAPPED_BASE)
            # Network first: it is independent of the mounts and slower, so start it now.
            net_task = asyncio.create_task(self.network.acquire(sb_id, internet=internet))

            async def undo_net() -> None:
                with contextlib.suppress(BaseException):
                    slot = await net_task
                    await self.network.release(slot)

            undo.append(undo_net)
            # A snapshot's layers are hard-linked into the sandbox's own dir and mounted from
            # there: deleting or overwriting the snapshot later must not pull files out from
            # under a sandbox made from it. Layers are never written, so links cost no copy.
            own = d / "layers"
            for i, layer in enumerate(lower[:-1]):
                own.mkdir(exist_ok=True)
                await run("cp", "-al", str(layer), str(own / str(i)))
            lower = [*(own / str(i) for i in range(len(lower) - 1)), lower[-1]]
            # The disk cap: the writable layer lives on a tmpfs of the requested size.
            disk_opts = f"size={disk_mb}m,mode=755"
            mount(f"warren-{sb_id}", str(d / "disk"), "tmpfs", disk_opts, MS_NOSUID | MS_NODEV)
            undo.append(lambda: _umount_lazy(d / "disk"))
            (d / "disk" / "upper").mkdir()
            (d / "disk" / "work").mkdir()
            os.chown(d / "disk" / "upper", MAPPED_BASE, MAPPED_BASE)
            lowerdir = ":".join(str(p) for p in lower)
            opts = f"lowerdir={lowerdir},upperdir={d}/disk/upper,workdir={d}/disk/work"
            mount(f"warren-{sb_id}", str(d / "rootfs"), "overlay", opts)
            undo.append(lambda: _umount_lazy(d / "rootfs"))
            self._write_identity(d / "rootfs", sb_id)
            t_mounts = time.monotonic()
            slot: Slot = await net_task
            t_net = time.monotonic()
            spec = BundleSpec(
                sandbox_id=sb_id,
                rootfs=d / "rootfs",
                guest_dir=self.guest_dir,
                run_dir=d / "run",
                netns_path=slot.netns_path,
                hostname=sb_id,
                vcpus=vcpus,
                memory_mb=memory_mb,
                pids_limit=PIDS_LIMIT,
                env=env,
                guest_argv=[
                    "/usr/bin/python3",
                    "-I",
                    "-S",
                    "/.warren/guest/guest.py",
                    "--socket",
                    GUEST_SOCKET,
                ],
            )
            (d / "config.json").write_text(json.dumps(oci_config(spec)))
            now = clock.time_s()
            snapshot_layers = [str(p) for p in reversed(lower[:-1])]
            sb = Sandbox(
                id=sb_id, status="running", team_id=str(ref.team_id), template_id=str(ref.template_id),
                template=template or str(base_config.get("name", "")), vcpus=vcpus, memory_mb=memory_mb,
                disk_size_mb=disk_mb, timeout_sec=timeout_sec, internet=internet, env=env, slot=slot.index,
                host_ip=slot.sandbox_ip, created_at=now, last_active_at=now,
                lower_layers=[str(p) for p in lower], snapshot_layers=snapshot_layers,
                base_config=base_config,
            )  # fmt: skip
            # Record before starting the container: a crash from here on leaves a record that
            # startup either re-adopts or cleans up, never an unknown container.
            self._save(sb)
            t_start = time.monotonic()
            # Undo first: a create cancelled inside the runtime call may leave a container.
            undo.append(lambda: self.runtime.destroy(sb_id))
            sb.pid = await self.runtime.create(sb_id, d)
            t_runtime = time.monotonic()
            await self._guest(sb).wait_ready(GUEST_READY_TIMEOUT)
            log.debug(
                "event=create_steps sandbox_id=%s mounts=%.1f net_wait=%.1f runtime=%.1f guest=%.1f (ms)",
                sb_id, (t_mounts - t0) * 1000, (t_net - t_mounts) * 1000, (t_runtime - t_start) * 1000,
                (time.monotonic() - t_runtime) * 1000,
            )  # fmt: skip
            self._save(sb)
            self._sandboxes[sb_id] = sb
            self._sample(sb)
            return sb
        except BaseException as e:
            log.error("event=create_failed sandbox_id=%s error=%s", sb_id, e)
            for fn in reversed(undo):
                try:
                    await fn()
                except Exception as ue:
                    log.error("event=create_rollback_failed sandbox_id=%s error=%s", sb_id, ue)
            if isinstance(e, WarrenError | asyncio.CancelledError):
                raise
            if isinstance(e, Exception):
                raise InternalError(f"create sandbox {sb_id}: {e}") from e
            raise

    @staticmethod
    def _write_identity(rootfs: Path, sb_id: str) -> None:
        """Per-sandbox /etc/hostname, /etc/hosts and /etc/resolv.conf, owned by sandbox root."""
        nameservers = []
        with contextlib.suppress(OSError), open("/etc/resolv.conf") as f:
            for line in f:
                parts = line.split()
                # A loopback resolver on the host is unreachable from the sandbox's netns.
                if len(parts) >= 2 and parts[0] == "nameserver" and not parts[1].startswith(("127.", "::1")):
                    nameservers.append(parts[1])
        files = {
            "etc/hostname": f"{sb_id}\n",
            "etc/hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{sb_id}\n",
            "etc/resolv.conf": "".join(f"nameserver {ns}\n" for ns in nameservers),
        }
        for rel, text in files.items():
            p = rootfs / rel
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            p.write_text(text)
            os.chown(p, MAPPED_BASE, MAPPED_BASE)
            os.chmod(p, 0o644)

    # ========================================================================= destroy

    async def destroy(self, sb_id: str) -> None:
        # Shielded: a caller that gives up (an RPC deadline, a cancelled request) must not stop
        # a teardown halfway — the entry is gone by then, so nothing would ever finish it and
        # its mounts, netns, cgroups and processes would stay behind.
        task = self._teardowns.get(sb_id)
        if task is None:
            task = self._detach(self._destroy(sb_id))  # tracked for stop() too
            task.add_done_callback(self._log_detached_failure)
            self._teardowns[sb_id] = task
            task.add_done_callback(lambda _t: self._teardowns.pop(sb_id, None))
        await asyncio.shield(task)

    @staticmethod
    def _log_detached_failure(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (e := task.exception()) is not None and not isinstance(e, NotFound):
            log.error("event=destroy_failed error=%s", e)

    async def _destroy(self, sb_id: str) -> None:
        sb = self._sandboxes.get(sb_id)
        if sb is None:
            if sb_id in self._creating:
                raise InvalidState(f"sandbox {sb_id} is being created")
            if not self._dir(sb_id).exists() and await self.runtime.state(sb_id) is None:
                raise NotFound(f"sandbox {sb_id} not found")
            # Files (or a container) without a live entry: a crash's leftovers. Clean them.
            await self._cleanup(sb_id, slot=self._leftover_slot(sb_id), pid=0)
            return
        async with sb.lock:
            if self._sandboxes.get(sb_id) is not sb:
                raise NotFound(f"sandbox {sb_id} not found")
            del self._sandboxes[sb_id]
            await self._cleanup(sb_id, slot=sb.slot, pid=sb.pid)
        log.info("event=sandbox_destroyed sandbox_id=%s", sb_id)

    def _slot_from_record(self, sb_id: str) -> int | None:
        try:
            return int(json.loads((self._dir(sb_id) / "record.json").read_text())["slot"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _leftover_slot(self, sb_id: str) -> int | None:
        """The slot a leftover's record names, if its claim still names this sandbox."""
        slot = self._slot_from_record(sb_id)
        if slot is None or not self.network.held_by(slot, sb_id):
            return None
        return slot

    async def _cleanup(self, sb_id: str, *, slot: int | None, pid: int) -> None:
        """Remove everything of one sandbox; try every step, then report what failed."""
        errors: list[str] = []
        try:
            await self.runtime.destroy(sb_id)
        except Exception as e:
            errors.append(f"runtime: {e}")
        if pid:
            self._zombies.add(pid)
            self._reap_pid(pid)
        d = self._dir(sb_id)
        for mp in mounts_under(d):
            try:
                umount(mp)
            except OSError:
                # Busy (a process still holds it): detach now, the kernel frees it later.
                try:
                    umount(mp, lazy=True)
                except OSError as e:
                    errors.append(str(e))
        if slot is not None:
            try:
                await self.network.release(Slot(slot))
            except Exception as e:
                errors.append(f"network: {e}")
        if not mounts_under(d):
            await asyncio.to_thread(shutil.rmtree, d, True)
            if d.exists():
                errors.append(f"cannot remove {d}")
        if errors:
            raise InternalError(f"destroy {sb_id}: " + "; ".join(errors))

    def _reap_pid(self, pid: int) -> None:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            self._zombies.discard(pid)  # not our child (adopted after a restart) or reaped
            return
        if done:
            self._zombies.discard(pid)

    async def _reap_zombies(self) -> None:
        for pid in list(self._zombies):
            self._reap_pid(pid)

    # ===================================================================== pause/resume

    async def pause(self, sb_id: str, *, reason: str = "request", only_if_idle: bool = False) -> bool:
        """Freeze it. Shielded: a caller that gives up (deadline, cancel) must not leave the
        cgroup frozen while the record says running. ``only_if_idle`` (the TTL reaper) decides
        under the lock, so a command that started meanwhile keeps it running; returns whether
        it paused."""
        return await self._shield(self._pause(sb_id, reason, only_if_idle))

    async def _pause(self, sb_id: str, reason: str, only_if_idle: bool) -> bool:
        sb = self._get(sb_id)
        async with sb.lock:
            self._still_there(sb)
            if only_if_idle and (sb.status != "running" or not self._idle(sb, clock.time_s())):
                return False
            if sb.status != "running":
                raise InvalidState(f"sandbox {sb_id} is not running (status {sb.status})")
            try:
                await self.runtime.pause(sb_id)
            except Exception as e:
                raise InternalError(f"pause {sb_id}: {e}") from e
            sb.status = "paused"
            sb.last_cpu = None
            self._save(sb)
        log.info("event=sandbox_paused sandbox_id=%s reason=%s", sb_id, reason)
        return True

    def _detach(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task that runs to completion even if whoever awaits it is cancelled; stop() waits
        for it (asyncio.run would otherwise cancel it halfway at exit)."""
        task = asyncio.create_task(coro)
        self._shielded.add(task)
        task.add_done_callback(self._shielded.discard)
        return task

    async def _shield(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.shield(self._detach(coro))

    def _still_there(self, sb: Sandbox) -> None:
        """After waiting for a sandbox's lock: a destroy that held it may have removed it."""
        if self._sandboxes.get(sb.id) is not sb:
            raise NotFound(f"sandbox {sb.id} not found")

    async def resume(self, sb_id: str, timeout_sec: int | None = None) -> Sandbox:
        """Thaw it; shielded like :meth:`pause`."""
        return await self._shield(self._resume(sb_id, timeout_sec))

    async def _resume(self, sb_id: str, timeout_sec: int | None) -> Sandbox:
        sb = self._get(sb_id)
        async with sb.lock:
            self._still_there(sb)
            if sb.status != "paused":
                raise InvalidState(f"sandbox {sb_id} is not paused (status {sb.status})")
            try:
                await self.runtime.resume(sb_id)
            except Exception as e:
                raise InternalError(f"resume {sb_id}: {e}") from e
            sb.status = "running"
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

    # ============================================================================ exec

    async def exec(
        self,
        sb_id: str,
        cmd: str,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str = "",
        timeout_sec: int = 0,
        stdin: bytes | None = None,
    ) -> ExecResult:
        if not cmd:
            raise InvalidRequest("cmd is required")
        sb = self._running(sb_id)
        timeout = timeout_sec if timeout_sec > 0 else DEFAULT_EXEC_TIMEOUT
        with self.in_use(sb_id):
            res = await self._guest(sb).exec(cmd, list(args), env=env or None, cwd=cwd or None,
                                             timeout=timeout, stdin=stdin)  # fmt: skip
        if res.timed_out:
            raise ExecTimeout(f"command timed out after {timeout}s")
        return res

    async def exec_stream(
        self,
        sb_id: str,
        cmd: str,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str = "",
        timeout_sec: int = 0,
        tag: str = "",
        background: bool = False,
    ) -> ExecSession:
        if not cmd:
            raise InvalidRequest("cmd is required")
        sb = self._running(sb_id)
        self._touch(sb)
        return await self._guest(sb).exec_stream(
            cmd, list(args), env=env or None, cwd=cwd or None, timeout=timeout_sec or None,
            tag=tag or None, background=background,
        )  # fmt: skip

    def touch(self, sb_id: str) -> None:
        sb = self._sandboxes.get(sb_id)
        if sb is not None:
            self._touch(sb)

    async def attach(self, sb_id: str, selector: int | str) -> ExecSession:
        return await self._guest(self._running(sb_id)).attach(selector)

    async def list_processes(self, sb_id: str) -> list[ProcessInfo]:
        return await self._guest(self._running(sb_id)).list_processes()

    async def signal(self, sb_id: str, selector: int | str, sig: int) -> None:
        await self._guest(self._running(sb_id)).signal(selector, sig)

    async def send_stdin(self, sb_id: str, selector: int | str, data: bytes) -> None:
        await self._guest(self._running(sb_id)).send_stdin(selector, data)

    async def close_stdin(self, sb_id: str, selector: int | str) -> None:
        await self._guest(self._running(sb_id)).close_stdin(selector)

    # =========================================================================== files

    @staticmethod
    def _check_path(path: str) -> str:
        # The guest resolves paths inside the sandbox's own mount namespace, so `..` and
        # symlinks cannot leave its rootfs; here we only refuse what is malformed.
        if not path or "\0" in path:
            raise InvalidRequest("path is required")
        return path

    async def read_file(self, sb_id: str, path: str) -> AsyncIterator[bytes]:
        guest = self._guest(self._running(sb_id))
        async for chunk in guest.read_file(self._check_path(path)):
            yield chunk

    async def write_file(self, sb_id: str, path: str, chunks: AsyncIterable[bytes], mode: int = 0) -> int:
        guest = self._guest(self._running(sb_id))
        return await guest.write_file(self._check_path(path), chunks, mode or None)

    async def list_dir(self, sb_id: str, path: str, depth: int) -> list[EntryInfo]:
        return await self._guest(self._running(sb_id)).list_dir(self._check_path(path), max(1, depth))

    async def stat(self, sb_id: str, path: str) -> EntryInfo:
        return await self._guest(self._running(sb_id)).stat(self._check_path(path))

    async def make_dir(self, sb_id: str, path: str) -> None:
        await self._guest(self._running(sb_id)).make_dir(self._check_path(path))

    async def remove(self, sb_id: str, path: str) -> None:
        await self._guest(self._running(sb_id)).remove(self._check_path(path))

    async def move(self, sb_id: str, src: str, dst: str) -> None:
        await self._guest(self._running(sb_id)).move(self._check_path(src), self._check_path(dst))

    # ======================================================================= snapshots

    async def create_snapshot(self, sb_id: str, team_id: str, template_id: str) -> int:
        """Filesystem snapshot. Like SPEC §6.2 the sandbox is paused first and stays paused."""
        ref = TemplateRef.parse(team_id, template_id)
        if ref.is_minimal:
            raise InvalidRequest("template_id is required (the all-zero id is the built-in minimal)")
        sb = self._get(sb_id)
        if sb.status == "running":
            with contextlib.suppress(InvalidState):
                await self.pause(sb_id, reason="snapshot")
        async with sb.lock:
            if sb.status != "paused" or self._sandboxes.get(sb_id) is not sb:
                raise InvalidState(f"sandbox {sb_id} is not paused")
            config = {
                "vcpus": sb.vcpus,
                "memory_mb": sb.memory_mb,
                "disk_size_mb": sb.disk_size_mb,
                "parent_template_id": sb.template_id,
                "source_sandbox_id": sb.id,
                "created_at": int(clock.time_s()),
            }
            try:
                size = await self.templates.create_snapshot(
                    ref,
                    upper=self._dir(sb_id) / "disk" / "upper",
                    snapshot_layers=[Path(p) for p in sb.snapshot_layers],
                    config=config,
                )
            except WarrenError:
                raise
            except Exception as e:
                raise InternalError(f"snapshot {sb_id}: {e}") from e
        log.info("event=snapshot_created sandbox_id=%s template_id=%s bytes=%d", sb_id, ref.template_id, size)
        return size

    async def delete_snapshot(self, team_id: str, template_id: str) -> None:
        ref = TemplateRef.parse(team_id, template_id)
        try:
            existed = await self.templates.delete_snapshot(ref)
        except WarrenError:
            raise
        except Exception as e:
            raise InternalError(f"delete snapshot {ref.template_id}: {e}") from e
        log.info("event=snapshot_deleted template_id=%s existed=%s", ref.template_id, existed)

    # ========================================================================= metrics

    def _sample(self, sb: Sandbox) -> None:
        stats = self.runtime.stats(sb.id)
        if stats is None:
            return
        now = clock.time_s()
        cpu_pct = 0.0
        if sb.last_cpu is not None and now > sb.last_cpu[0]:
            cpu_pct = (stats.cpu_ns - sb.last_cpu[1]) / 1e9 / (now - sb.last_cpu[0]) * 100 / sb.vcpus
        sb.last_cpu = (now, stats.cpu_ns)
        try:
            st = os.statvfs(self._dir(sb.id) / "disk")
            disk = (st.f_blocks - st.f_bfree) * st.f_frsize
        except OSError:
            disk = 0
        point = (int(now), max(0.0, cpu_pct), stats.mem_bytes, disk)
        for name, (span, keep) in METRIC_RANGES.items():
            ring = sb.metrics.setdefault(name, deque(maxlen=keep))
            # Coarser ranges keep one point per span/keep seconds.
            if not ring or point[0] - ring[-1][0] >= span / keep or name == "10m":
                ring.append(point)

    async def _sample_all(self) -> None:
        for sb in list(self._sandboxes.values()):
            if not _alive(sb.pid):
                # The guest (PID 1) died, so did the container: free everything; the CP sees
                # the sandbox missing from ListSandboxes.
                log.error("event=sandbox_died sandbox_id=%s pid=%d", sb.id, sb.pid)
                with contextlib.suppress(WarrenError):
                    await self.destroy(sb.id)
                continue
            self._sample(sb)

    def metrics(self, sb_id: str, range_: str) -> list[tuple[int, float, int, int]]:
        sb = self._get(sb_id)
        key = range_ or "10m"
        if key not in METRIC_RANGES:
            raise InvalidRequest(f"invalid range {range_!r} (10m, 2h or 24h)")
        cutoff = clock.time_s() - METRIC_RANGES[key][0]
        return [p for p in sb.metrics.get(key, ()) if p[0] >= cutoff]

    # ==================================================================== re-adoption

    async def _readopt(self) -> None:
        """Rebuild state from records + the runtime; remove everything else we own."""
        adopted: set[str] = set()
        for d in sorted(self.sandboxes_dir.iterdir()):
            if not d.is_dir():
                continue
            try:
                rec = json.loads((d / "record.json").read_text())
                sb = Sandbox(**{k: rec[k] for k in Sandbox.RECORD_FIELDS})
            except (OSError, ValueError, KeyError, TypeError):
                continue
            state = await self.runtime.state(sb.id)
            alive = state is not None and state.status in (ContainerStatus.RUNNING, ContainerStatus.PAUSED)
            if not alive or not os.path.ismount(d / "rootfs"):  # noqa: ASYNC240
                continue
            assert state is not None
            sb.status = "paused" if state.status == ContainerStatus.PAUSED else "running"
            sb.pid = state.pid
            sb.last_active_at = clock.time_s()  # activity before the restart is unknown
            self.network.mark_used(sb.slot, sb.id)
            if not sb.internet:
                await self.network.block_internet(Slot(sb.slot))
            self._sandboxes[sb.id] = sb
            self._save(sb)
            adopted.add(sb.id)
            self._sample(sb)
            log.info("event=sandbox_readopted sandbox_id=%s status=%s", sb.id, sb.status)
        # Leftovers: sandbox dirs and containers that are not adopted.
        leftovers = {d.name for d in self.sandboxes_dir.iterdir() if d.is_dir()} - adopted
        leftovers |= {c.id for c in await self.runtime.list()} - adopted
        for sb_id in sorted(leftovers):
            log.info("event=leftover_cleanup sandbox_id=%s", sb_id)
            try:
                await self._cleanup(sb_id, slot=self._leftover_slot(sb_id), pid=0)
            except WarrenError as e:
                log.error("event=leftover_cleanup_failed sandbox_id=%s error=%s", sb_id, e)
        await self.network.cleanup_leftovers(keep={sb.slot for sb in self._sandboxes.values()})
