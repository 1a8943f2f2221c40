"""Making one sandbox: the request's checks, then the build steps with an undo stack.

:func:`check_request` refuses a malformed or oversize request before anything is made.
:class:`SandboxBuilder` runs the steps: claim a network slot (started first: it is independent
and the slowest), mount the disk, run tmpfs and overlay, write the OCI bundle and the record,
start the container and wait for the guest's health answer. Each step pushes its undo; any
failure, cancellation included, runs them in reverse, so a failed create leaves nothing behind.
Admission (how many creates run at once) is the manager's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warren import clock, ids
from warren.agent import gvisor_ops, record, sandbox_fs
from warren.agent.chain import Chain, TemplateConfig, check_env, start_template
from warren.agent.container_exits import until_exit
from warren.agent.egress import parse_allow
from warren.agent.guest_client import GuestClient
from warren.agent.guest_wire import GuestError
from warren.agent.network import NetworkSlots, Slot
from warren.agent.record import HostSandbox, SandboxSpec
from warren.agent.runtime.base import Runtime
from warren.agent.runtime.bundle import GUEST_MOUNT, GUEST_SOCKET, BundleSpec, oci_config
from warren.agent.sandbox_fs import DiskSize, SandboxFs
from warren.agent.templates import MAPPED_BASE, TemplateRef, uid_base
from warren.aio import until_first
from warren.egress_rules import EgressRules
from warren.errors import InternalError, InvalidRequest, WarrenError

log = logging.getLogger("warren.agent")

DEFAULT_VCPUS = 1
DEFAULT_MEMORY_MB = 512
DEFAULT_DISK_MB = 5120
# How long a new sandbox's guest has to answer (a dead init ends the wait at once: _wait_guest).
# The environment's value is for tests that must tell the two apart.
GUEST_READY_TIMEOUT = float(os.environ.get("WARREN_AGENT_GUEST_READY_TIMEOUT", "30"))
# No sandbox may be larger than the host itself (the CP sets the platform's own maxima).
MAX_VCPUS, MAX_MEMORY_MB = sandbox_fs.host_capacity()


def _disk(req: CreateRequest) -> DiskSize:
    """The sandbox's disk: on gVisor beside its /tmp, which shares the budget (sandbox_fs)."""
    tmp_mb = sandbox_fs.gvisor_tmp_mb(req.memory_mb) if req.runtime == "gvisor" else 0
    return sandbox_fs.disk_size(req.memory_mb, req.disk_size_mb, beside_mb=tmp_mb)


# PID 1 of every sandbox: the stdlib-only guest agent, from the read-only guest mount. -B: a
# chain without the stdlib's bytecode (an imported image) gets none written into its sandboxes'
# writable layers (and so into build steps' layers and snapshots) by the guest's imports.
GUEST_ARGV = ["/usr/bin/python3", "-I", "-S", "-B", f"{GUEST_MOUNT}/guest.py", "--socket", GUEST_SOCKET]

Undo = list[Callable[[], Awaitable[Any]]]


@dataclass
class CreateRequest(SandboxSpec):
    """A create that passed :func:`check_request`: sizes defaulted and within the host."""

    sandbox_id: str
    ref: TemplateRef
    allow: list[str]  # CIDRs open past the default egress deny
    chain: Chain | None = None  # set: the rootfs is these layers (ref is ignored)
    config: TemplateConfig = field(default_factory=TemplateConfig)
    egress: EgressRules = field(default_factory=EgressRules)  # the sandbox's own rules (issue 14)
    # The runtime (RuntimeSet.resolve: never empty once the manager has it). gVisor: the guest's
    # secret, and for a fork of a memory snapshot its image and the secret its guest wakes with.
    runtime: str = ""
    guest_secret: str = ""
    restore_image: Path | None = None
    source_secret: str = ""
    owner_team: str = ""  # the team that owns it ("": not said)
    owner_account: str = ""  # the account that owns that team ("": none, or not said)

    @property
    def owner(self) -> str:
        """Its owning account, else its team ("": an older CP said neither)."""
        return self.owner_account or self.owner_team

    @property
    def tenant(self) -> str:
        """Whose share of the agent's per-tenant limits it takes (as ``HostSandbox.tenant``)."""
        return self.owner or self.sandbox_id


def slot_uid_base(slot: Slot) -> int:
    """Host uid of root in a sandbox on ``slot``: the slot's own range when it has a user
    namespace of its own (runc/crun), else the canonical one (gVisor's plain slots, and hosts
    that refuse unprivileged user namespaces, where the layers cannot be id-mapped either)."""
    return MAPPED_BASE if slot.userns_path is None else uid_base(slot.index)


def check_request(
    *,
    sandbox_id: str,
    team_id: str,
    template_id: str,
    template: str,
    vcpus: int,
    memory_mb: int,
    disk_size_mb: int,
    timeout_sec: int,
    internet: bool,
    env: dict[str, str] | None,
    egress_allow: Sequence[str],
    chain: Chain | None = None,
    config: TemplateConfig | None = None,
    egress: EgressRules | None = None,
    owner_team: str = "",
    owner_account: str = "",
) -> CreateRequest:
    """``env`` wins over the template's (``config.env``); the record keeps the merged env.
    ``owner_team``: the team that owns the sandbox (``team_id`` is its template's);
    ``owner_account``: the account that owns that team."""
    if not sandbox_id:
        _, sandbox_id = ids.new_id(ids.Kind.SANDBOX)
    ids.parse_id(ids.Kind.SANDBOX, sandbox_id, what="sandbox_id")
    vcpus = vcpus or DEFAULT_VCPUS
    memory_mb = memory_mb or DEFAULT_MEMORY_MB
    disk_size_mb = disk_size_mb or DEFAULT_DISK_MB
    if not 0 < vcpus <= MAX_VCPUS:
        raise InvalidRequest(f"vcpus must be 1-{MAX_VCPUS} (this host's CPUs)")
    if not sandbox_fs.MIN_MEMORY_MB <= memory_mb <= MAX_MEMORY_MB:
        raise InvalidRequest(
            f"memory_mb must be {sandbox_fs.MIN_MEMORY_MB}-{MAX_MEMORY_MB} (this host's memory)"
        )
    if disk_size_mb < sandbox_fs.MIN_DISK_MB:
        raise InvalidRequest(f"disk_size_mb must be at least {sandbox_fs.MIN_DISK_MB}")
    if timeout_sec < 0:
        raise InvalidRequest("timeout_sec must be >= 0")
    config = config or TemplateConfig()
    env = {**config.env, **check_env(env or {})}
    allow = parse_allow(egress_allow)
    # With a chain, team_id/template_id do not choose the rootfs; they are still recorded.
    ref = TemplateRef.parse(team_id, template_id)
    return CreateRequest(
        template=template, vcpus=vcpus, memory_mb=memory_mb, disk_size_mb=disk_size_mb,
        timeout_sec=timeout_sec, internet=internet, env=env, sandbox_id=sandbox_id, ref=ref,
        allow=allow, chain=chain, config=config, egress=egress or EgressRules(),
        owner_team=_owner(owner_team, "owner_team_id"),
        owner_account=_owner(owner_account, "owner_account_id"),
    )  # fmt: skip


def _owner(value: str, name: str) -> str:
    """A UUID string, or "" (not said); anything else is refused."""
    if not value:
        return ""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidRequest(f"{name} must be a UUID") from None


@dataclass(frozen=True)
class BuildLimits:
    """Per-sandbox limits that come from the agent's settings."""

    max_open_files: int
    max_processes: int


class SandboxBuilder:
    """Builds one sandbox from a checked request and its resolved template."""

    def __init__(
        self,
        *,
        sandboxes_dir: Path,
        runtime: Runtime,
        network: NetworkSlots,
        guest_dir: Path,
        limits: BuildLimits,
        guest_of: Callable[[HostSandbox], GuestClient],
        reap: Callable[[int], None] = lambda pid: None,
    ) -> None:
        self.sandboxes_dir = sandboxes_dir
        self.runtime = runtime
        self.network = network
        self.guest_dir = guest_dir
        self.limits = limits
        self.guest_of = guest_of
        self.reap = reap  # a killed container init, for the agent (its subreaper) to reap
        # gVisor forks: start a sandbox from a memory image (GvisorRuntime.restore); the manager's.
        self.restore: Callable[[str, Path, Path], Awaitable[int]] | None = None

    def moved(self, sandboxes_dir: Path) -> SandboxBuilder:
        """The same builder making its sandboxes under another dir (warm-pool members), with
        guest clients of their sockets there."""
        return SandboxBuilder(
            sandboxes_dir=sandboxes_dir, runtime=self.runtime, network=self.network,
            guest_dir=self.guest_dir, limits=self.limits, reap=self.reap,
            guest_of=lambda sb: GuestClient(str(SandboxFs(sandboxes_dir / sb.id).guest_socket)),
        )  # fmt: skip

    async def build(
        self,
        req: CreateRequest,
        lower: list[Path],
        base_config: dict[str, Any],
        admission: AbstractAsyncContextManager[Any] | None = None,
    ) -> HostSandbox:
        """The running sandbox, its guest answering and its template's start command ready; on
        any failure, nothing of it is left. ``admission`` is held while the sandbox is made, not
        while its template gets ready (mostly waiting, and bounded only by the template)."""
        sb_id = req.sandbox_id
        fs = SandboxFs(self.sandboxes_dir / sb_id)
        disk = _disk(req)
        undo: Undo = []
        try:
            async with admission or contextlib.nullcontext():
                sb = await self._make(req, fs, disk, lower, base_config, undo)
            if req.config.start_cmd or req.config.ready_cmd:
                await start_template(self.guest_of(sb), req.config)
            record.save(fs.root, sb)
            return sb
        except BaseException as e:
            await self._roll_back(sb_id, e, undo)
            if isinstance(e, WarrenError | asyncio.CancelledError):
                raise
            if isinstance(e, Exception):
                raise InternalError(f"create sandbox {sb_id}: {e}") from e
            raise

    async def _make(
        self, req: CreateRequest, fs: SandboxFs, disk: DiskSize, lower: list[Path],
        base_config: dict[str, Any], undo: Undo,
    ) -> HostSandbox:  # fmt: skip
        sb_id = req.sandbox_id
        t0 = time.monotonic()
        net_task = self._claim_network(req, undo)

        async def base() -> int:  # the sandbox's uid range comes with its slot
            return slot_uid_base(await net_task)

        # A chain's layers are immutable and kept while in use (layer_cache): mounted in place.
        lower = await fs.build(sb_id, lower, disk, undo, link_layers=req.chain is None, uid_base=base)
        t_mounts = time.monotonic()
        slot: Slot = await net_task
        if req.internet:  # before the container starts: it never runs without its rules
            await self.network.rules.apply(slot, req.egress, fs.identity / "resolv.conf", req.tenant)
        t_net = time.monotonic()
        self._write_bundle(req, fs, slot)
        sb = self._new_record(req, slot, disk, lower, base_config)
        sb.runtime, sb.guest_secret = req.runtime, req.source_secret or req.guest_secret
        # Record before starting the container: a crash from here on leaves a record that
        # startup either re-adopts or cleans up, never an unknown container.
        record.save(fs.root, sb)
        t_start = time.monotonic()
        await self._start(sb, fs, undo, req.restore_image)
        t_runtime = time.monotonic()
        await self._wait_guest(sb)
        if req.source_secret:  # a fork: its guest woke up with the source's secret
            await gvisor_ops.rekey(self.guest_of(sb), req.guest_secret, sb.id)
            sb.guest_secret, sb.guest = req.guest_secret, None
            record.save(fs.root, sb)
        log.debug(
            "event=create_steps sandbox_id=%s mounts=%.1f net_wait=%.1f runtime=%.1f guest=%.1f (ms)",
            sb_id, (t_mounts - t0) * 1000, (t_net - t_mounts) * 1000, (t_runtime - t_start) * 1000,
            (time.monotonic() - t_runtime) * 1000,
        )  # fmt: skip
        return sb

    def _claim_network(self, req: CreateRequest, undo: Undo) -> asyncio.Task[Slot]:
        # Network first: it is independent of the mounts and slower, so start it now.
        net_task = asyncio.create_task(
            # gVisor cannot join a user namespace by path: its slot is a plain one.
            self.network.acquire(
                req.sandbox_id, internet=req.internet, allow=req.allow, userns=req.runtime != "gvisor"
            )
        )

        async def undo_net() -> None:
            with contextlib.suppress(BaseException):
                slot = await net_task
                await self.network.release(slot)

        undo.append(undo_net)
        return net_task

    def _write_bundle(self, req: CreateRequest, fs: SandboxFs, slot: Slot) -> None:
        gvisor = req.runtime == "gvisor"
        spec = BundleSpec(
            sandbox_id=req.sandbox_id,
            rootfs=fs.rootfs,
            guest_dir=self.guest_dir,
            run_dir=fs.run,
            identity_dir=fs.identity,
            shm_dir=fs.shm,
            max_open_files=self.limits.max_open_files,
            userns_path=slot.userns_path,
            uid_base=slot_uid_base(slot),
            netns_path=slot.netns_path,
            hostname=req.sandbox_id,
            vcpus=req.vcpus,
            memory_mb=req.memory_mb,
            pids_limit=self.limits.max_processes,
            env=req.env,
            guest_argv=list(GUEST_ARGV),
            cmds_cgroup=not gvisor,  # runtime/cmds_cgroup.py
            tmp_mb=sandbox_fs.gvisor_tmp_mb(req.memory_mb) if gvisor else None,
            ipc_owner=gvisor,
        )
        if gvisor:  # the guest also listens on TCP (gvisor_ops, guest_agent/tcp.py)
            spec.guest_argv += gvisor_ops.GUEST_SECRET_ARGS
            gvisor_ops.open_to_sandbox_root(fs)
            gvisor_ops.write_secret(fs, req.guest_secret)
        sandbox_fs.write_private(fs.root / "config.json", json.dumps(oci_config(spec)))

    @staticmethod
    def _new_record(
        req: CreateRequest, slot: Slot, disk: DiskSize, lower: list[Path], base_config: dict[str, Any]
    ) -> HostSandbox:
        now = clock.time_s()
        if req.chain is None:
            snapshot_layers = [str(p) for p in reversed(lower[:-1])]
        else:  # a legacy snapshot of a chain sandbox copies its store layers only
            snapshot_layers = [str(p) for p in reversed(lower[: len(set(req.chain.layers))])]
        return HostSandbox(
            id=req.sandbox_id, status="running", team_id=str(req.ref.team_id),
            template_id=str(req.ref.template_id),
            template=req.template or str(base_config.get("name", "")), vcpus=req.vcpus,
            memory_mb=req.memory_mb, disk_size_mb=disk.mb, timeout_sec=req.timeout_sec,
            internet=req.internet, env=req.env, slot=slot.index, host_ip=slot.sandbox_ip,
            created_at=now, last_active_at=now, lower_layers=[str(p) for p in lower],
            snapshot_layers=snapshot_layers, base_config=base_config,
            chain=None if req.chain is None else req.chain.to_record(),
            template_config=req.config.to_record(), uid_base=slot_uid_base(slot),
            owner_team=req.owner_team, owner_account=req.owner_account,
        )  # fmt: skip

    async def _start(self, sb: HostSandbox, fs: SandboxFs, undo: Undo, image: Path | None = None) -> None:
        # Undo first: a create cancelled inside the runtime call may leave a container.
        async def undo_start() -> None:
            await self.runtime.destroy(sb.id)
            if sb.pid:
                self.reap(sb.pid)

        undo.append(undo_start)
        if image is not None and self.restore is not None:  # a fork of a memory snapshot
            sb.pid = await self.restore(sb.id, fs.root, image)
            return
        sb.pid = await self.runtime.create(sb.id, fs.root)

    async def _wait_guest(self, sb: HostSandbox) -> None:
        """The guest's first answer; a container whose init exits first (a template whose
        python3 is no guest, a guest crashing at start) fails the create at once, not after
        :data:`GUEST_READY_TIMEOUT`."""
        ready = asyncio.create_task(self.guest_of(sb).wait_ready(GUEST_READY_TIMEOUT))
        exited = asyncio.create_task(until_exit(sb.pid))  # the one pidfd watch (container_exits)
        await until_first(ready, exited)
        if ready.done() and not ready.cancelled():
            return ready.result()  # an answer (or its error) wins over an exit right after it
        how = exited.result()
        raise GuestError("unavailable", f"sandbox {sb.id}'s init exited{how} before its guest answered")

    @staticmethod
    async def _roll_back(sb_id: str, e: BaseException, undo: Undo) -> None:
        log.error("event=create_failed sandbox_id=%s error=%s", sb_id, e)
        for fn in reversed(undo):
            try:
                await fn()
            except Exception as ue:
                log.error("event=create_rollback_failed sandbox_id=%s error=%s", sb_id, ue)
