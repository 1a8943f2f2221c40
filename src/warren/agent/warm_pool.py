"""Warm pools (issue 17, docs/agent.md "Warm pools"): per template, N sandboxes kept ready.

A pool is named by the template it holds ("minimal", or the reference the control plane
resolved), with ``@runc`` or ``@crun`` when it holds another runtime than the agent's default
(``minimal@runc``), and keyed by what a sandbox cannot change once started: its rootfs (the
chain, or the host-local ``minimal``), its template's config and its runtime. A create claims
from a pool of its own runtime only (the one it names, or the agent's default). Its members are built like any
sandbox (``SandboxBuilder``) but under ``<data-dir>/warm/<wp-id>/`` and a ``wp-`` name, with the
default shape (1 vCPU, 512 MB, internet on), then frozen: running, guest answering, no CPU.

A create whose template matches a pool claims a member (warm_claim.py: limits, identity and
network policy applied, then renamed into a sandbox); anything else, an empty pool, or a team
past its share of the pool while another team asks it (warm_share.py), takes the cold path with
the reason logged. Members belong to no team: they are in no list and no count,
Terminate, PauseAll and a stopping agent destroy them, and an agent that starts destroys any it
finds (they are rebuilt, never adopted).

Members are watched as sandboxes are (container_exits.py: a pidfd each, and a poll for a kill
that waits on a frozen one): a member whose container dies while it waits leaves its pool at
once (``event=pool_member_died``, with why) and is replaced; a claim also checks the member it
takes, so a dead one is never handed out.

Refills run one member at a time, and only once no create has been in flight, received or ended
for a moment (admission.py ``wait_quiet``): a burst reaches the agent as a stream with gaps, and
a refill begun in a gap would build beside the burst's next creates. A build that fails backs off
before the next try.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from warren.agent import warm_claim
from warren.agent.chain import Chain, TemplateConfig, start_template
from warren.agent.container_exits import ContainerExits, ending, process_gone
from warren.agent.container_ids import ContainerIds
from warren.agent.create import (
    DEFAULT_DISK_MB,
    DEFAULT_MEMORY_MB,
    DEFAULT_VCPUS,
    CreateRequest,
    SandboxBuilder,
)
from warren.agent.guest_client import GuestClient
from warren.agent.network import NetworkSlots
from warren.agent.proc import mounts_under, process_alive
from warren.agent.record import HostSandbox
from warren.agent.runtime.oci import cgroup_dir
from warren.agent.teardown import Teardown
from warren.agent.templates import TemplateRef
from warren.agent.warm_share import PoolShare
from warren.aio import cancel_and_wait
from warren.egress_rules import EgressRules
from warren.errors import InvalidRequest, InvalidState, WarrenError

log = logging.getLogger("warren.agent")

MINIMAL_POOL = "minimal"
POOL_ID_PREFIX = "wp-"
WARM_DIR = "warm"
# What one call can make a host build and keep.
MAX_POOL_SIZE = 256
MAX_POOLS = 32
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$")
# The runtimes a pool may hold: members are frozen and claimed by cgroup and netns updates, which
# gVisor's sandboxes do not take.
POOL_RUNTIMES = ("runc", "crun")
# A failing build (a missing layer, a full host) is retried after this, doubling up to the cap.
RETRY_S, RETRY_MAX_S = 2.0, 60.0
DESTROY_AT_ONCE = 4
_ZERO = "00000000-0000-0000-0000-000000000000"

LowerLayers = Callable[[CreateRequest], Awaitable[tuple[list[Path], dict[str, Any]]]]


@dataclass(frozen=True)
class PoolStatus:
    template: str
    target: int
    ready: int


@dataclass
class Pool:
    """One pool: its template, runtime and target, and its ready members (oldest first)."""

    name: str
    target: int
    chain: Chain | None = None  # None: the host-local `minimal`
    config: TemplateConfig = field(default_factory=TemplateConfig)
    ready: list[HostSandbox] = field(default_factory=list)
    building: int = 0
    runtime: str = ""  # the runtime its members run on ("": not known yet, a unit test's pool)
    # Each team's claims since it was last full (warm_share.py).
    share: PoolShare = field(default_factory=PoolShare, compare=False, repr=False)

    def matches(self, req: CreateRequest) -> bool:
        if req.runtime != self.runtime:
            return False
        if self.chain is None:
            return req.chain is None and req.ref.is_minimal
        return req.chain == self.chain and req.config == self.config


def split_name(name: str) -> tuple[str, str]:
    """``minimal@crun`` -> ``("minimal", "crun")``; ``minimal`` -> ``("minimal", "")`` (the
    agent's default runtime). ValueError for a runtime a pool cannot hold."""
    template, at, runtime = name.rpartition("@")
    if not at:
        return name, ""
    if runtime not in POOL_RUNTIMES:
        what = "gVisor sandboxes are not pooled" if runtime == "gvisor" else "unknown runtime"
        want = " or ".join(POOL_RUNTIMES)
        raise ValueError(f"warm pool {name[:80]!r}: {what} {runtime[:20]!r} (want {want})")
    return template, runtime


def check_pool(name: str, size: int, chain: Chain | None) -> None:
    if not _NAME.match(name):
        raise InvalidRequest(f"invalid warm pool template {name[:80]!r}")
    try:
        template, _ = split_name(name)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None
    if not 0 <= size <= MAX_POOL_SIZE:
        raise InvalidRequest(f"warm pool size must be 0-{MAX_POOL_SIZE}")
    if chain is None and template != MINIMAL_POOL and size > 0:
        raise InvalidRequest(f"warm pool {name!r}: a template other than minimal needs its chain")


def parse_spec(spec: str) -> dict[str, int]:
    """``minimal=4`` (comma-separated for several; settings and ``--warm-pool``), the agent's
    default runtime; ``minimal@runc=2,minimal@crun=4`` names the runtime. Only pools of the
    host-local ``minimal`` can be named here, the others need their chain from the CP."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, size = part.partition("=")
        name = name.strip()
        if not sep or not size.strip().isdigit():
            raise ValueError(f"warm pool {part!r}: want TEMPLATE[@RUNTIME]=SIZE: minimal=4, minimal@runc=2")
        template, _ = split_name(name)
        if template != MINIMAL_POOL:
            raise ValueError(f"warm pool {name!r}: only minimal here (set others through the API)")
        if int(size) > MAX_POOL_SIZE:
            raise ValueError(f"warm pool {name!r}: at most {MAX_POOL_SIZE}")
        if name in out:
            raise ValueError(f"warm pool {name!r} is named twice")
        out[name] = int(size)
    return out


class WarmPools:
    """The pools of one agent, their refill loop and their claims."""

    def __init__(
        self,
        data_dir: Path,
        *,
        sandboxes_dir: Path,
        runtime: ContainerIds,
        network: NetworkSlots,
        builder: SandboxBuilder,
        lower_layers: LowerLayers,
        hold: Callable[[Chain | None], AbstractContextManager[Any]],
        missing_layers: Callable[[list[str]], list[str]],
        creates_idle: Callable[[], Awaitable[Any]],
        assign: Callable[[str, str], None] = lambda member_id, runtime: None,
        resolve: Callable[[str], str] = lambda runtime: runtime,
        sandboxes_teardown: Teardown | None = None,
    ) -> None:
        """``resolve``: the runtime a pool's name says ("" the agent's default), refused
        (Conflict) when the host lacks it; ``assign``: a new member runs on it
        (runtime/select.py). ``sandboxes_teardown``: the agent's own teardown of
        ``sandboxes_dir``, whose quarantines the agent sweeps (a claim undone after the
        member's rename)."""
        self.dir = data_dir / WARM_DIR
        self.sandboxes_dir = sandboxes_dir
        self.runtime = runtime
        self.network = network
        self.builder = builder
        self._lower_layers = lower_layers
        self._hold = hold
        self._missing = missing_layers
        self._creates_idle = creates_idle
        self._assign = assign
        self._resolve = resolve
        self._teardown = Teardown(self.dir, runtime, network)
        self._sandboxes_teardown = sandboxes_teardown or Teardown(sandboxes_dir, runtime, network)
        self.pools: dict[str, Pool] = {}
        self.claims = 0
        self.cold: dict[str, int] = {}  # creates that took the cold path, by reason
        self.freeze = True
        self._wake = asyncio.Event()
        self._suspended = False
        self._task: asyncio.Task[None] | None = None
        self._building: asyncio.Task[HostSandbox] | None = None
        self._exits = ContainerExits(self._member_exited)
        self._dead: set[asyncio.Task[None]] = set()  # dead members' destroys under way

    # ------------------------------------------------------------------------ configuration

    def configure(self, spec: str, *, freeze: bool) -> None:
        """The pools of the agent's settings (``WARREN_AGENT_WARM_POOL``, :func:`parse_spec`) and
        whether members wait frozen."""
        self.freeze = freeze
        for name, size in parse_spec(spec).items():
            self.pools[name] = Pool(name, size, runtime=self._runtime_of(name))

    def _runtime_of(self, name: str) -> str:
        """The runtime of the pool ``name`` (InvalidRequest when it names one the host lacks)."""
        try:
            return self._resolve(split_name(name)[1])
        except (ValueError, WarrenError) as e:
            raise InvalidRequest(f"warm pool {name[:80]!r}: {e}") from None

    async def set(self, name: str, size: int, chain: Chain | None, config: TemplateConfig | None) -> None:
        """A pool's target (0 removes it and destroys its members). Members beyond a smaller
        target are destroyed now; a larger one is filled in the background."""
        check_pool(name, size, chain)
        runtime = self._runtime_of(name)
        config = config or TemplateConfig()
        if chain is not None and (missing := self._missing(list(chain.layers))):
            raise InvalidState(f"missing layers: {', '.join(missing[:8])}")
        pool = self.pools.get(name)
        if pool is None and size == 0:
            return  # nothing to remove (a caller that only wants the pools' state)
        if pool is None or (pool.target, pool.chain, pool.config) != (size, chain, config):
            log.info("event=warm_pool_set template=%s target=%d", name, size)
        surplus: list[HostSandbox] = []
        if pool is not None and (pool.chain != chain or pool.config != config or size == 0):
            surplus, pool.ready = pool.ready, []  # another template under this name: rebuilt
            del self.pools[name]
            pool = None
        if size > 0:
            if pool is None:
                if len(self.pools) >= MAX_POOLS:
                    raise InvalidRequest(f"at most {MAX_POOLS} warm pools per host")
                pool = self.pools[name] = Pool(name, size, chain, config, runtime=runtime)
            pool.target = size
            surplus += pool.ready[size:]
            del pool.ready[size:]
            if len(pool.ready) >= size:
                pool.share.full()
        self._suspended = False
        self._wake.set()
        await self._destroy_members(surplus, reason="pool_shrunk")

    def statuses(self) -> list[PoolStatus]:
        return [PoolStatus(p.name, p.target, len(p.ready)) for _, p in sorted(self.pools.items())]

    def report(self) -> list[dict[str, Any]]:
        """The heartbeat's ``warm_pools`` (host_report.py)."""
        return [{"template": s.template, "target": s.target, "ready": s.ready} for s in self.statuses()]

    def chains(self) -> frozenset[str]:
        """Layers the pools' members run on (in use: DeleteLayers keeps them)."""
        return frozenset(d for p in self.pools.values() if p.chain for d in p.chain.layers)

    # ------------------------------------------------------------------------- start / stop

    async def cleanup_leftovers(self) -> None:
        """At startup, before re-adoption: every member a previous agent left is destroyed
        (members are rebuilt, never adopted), and the container-id map loses entries whose
        sandbox is gone."""
        # As the sandboxes dir: sandbox root (an unprivileged host uid, one per slot) walks to
        # its rootfs.
        self.dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.dir, 0, 0)
        os.chmod(self.dir, 0o711)  # noqa: S103 - search only, as sandboxes/
        for d in sorted(self.dir.iterdir()):
            if d.is_dir():
                log.info("event=warm_pool_leftover_destroyed member=%s", d.name)
                await self._cleanup(d.name, slot=self._teardown.leftover_slot(d.name), pid=0)
        for c in await self.runtime.list():
            if c.id.startswith(POOL_ID_PREFIX):
                await self._cleanup(c.id, slot=None, pid=0)
        for sb_id in list(self.runtime.aliases()):
            if not (self.sandboxes_dir / sb_id).exists():
                self.runtime.forget(sb_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._refill_loop(), name="warm-pool-refill")
        self._wake.set()  # the pools of the settings fill now

    async def stop(self) -> None:
        """Stop refilling and destroy every member (a stopping agent, Terminate)."""
        self._suspended = True
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        self._exits.close()
        await self.clear(reason="stop")
        if self._dead:
            await asyncio.wait(set(self._dead))

    async def clear(self, *, reason: str) -> None:
        """Destroy every ready member (targets stay). PauseAll calls this and suspends refills
        until the control plane is heard from again (a create or a SetWarmPool)."""
        if reason == "pause_all":
            self._suspended = True
        members = [sb for p in self.pools.values() for sb in p.ready]
        for p in self.pools.values():
            p.ready = []
        await self._destroy_members(members, reason=reason)

    def resume_refills(self) -> None:
        """The control plane is there (a create arrived): refills may run again."""
        if self._suspended and self._task is not None:
            self._suspended = False
            self._wake.set()

    # ------------------------------------------------------------------------------- claims

    def take(self, req: CreateRequest) -> HostSandbox | str:
        """A ready member for this request, or why there is none (logged, counted). Two names
        may hold one pool's sandboxes (``minimal`` and ``minimal@crun`` where crun is the
        default): either serves. A team past its share of a pool while another team asks it
        goes cold, leaving the member to them (warm_share.py)."""
        pools = [p for p in self.pools.values() if p.matches(req)]
        if not pools:
            return self._cold(req, "no_pool")
        past_share = ""
        for pool in pools:
            refusal = pool.share.ask(req.owner, pool.target)
            if refusal is not None:
                if pool.ready and not past_share:
                    past_share = f"{pool.name} tenant={req.owner} {refusal.detail()}"
                continue
            while pool.ready:
                member = pool.ready.pop(0)
                self._wake.set()
                self._exits.forget(member.id)  # claimed: the manager watches it as a sandbox
                if not process_gone(member.pid):
                    pool.share.claimed(req.owner)
                    return member
                self._member_died(pool, member)  # its death not told yet: never handed out
        if past_share:
            return self._cold(req, "team_share", past_share)
        return self._cold(req, "pool_empty", pools[0].name)

    async def claim_started(
        self,
        req: CreateRequest,
        *,
        guest_of: Callable[[HostSandbox], GuestClient],
        discard: Callable[[HostSandbox], Awaitable[None]],
    ) -> tuple[HostSandbox, float] | None:
        """A ready member claimed as the request's sandbox, its template's start and ready
        commands run, with the monotonic time the claim began; None when the create goes cold.
        ``discard`` removes a claimed sandbox whose commands failed (the error is raised)."""
        self.resume_refills()
        member = self.take(req)
        if not isinstance(member, HostSandbox):
            return None
        t = time.monotonic()
        sb = await self.claim(member, req)
        if sb is None:
            return None
        if req.config.start_cmd or req.config.ready_cmd:
            try:
                await start_template(guest_of(sb), req.config)
            except BaseException:
                await discard(sb)
                raise
        return sb, t

    def _cold(self, req: CreateRequest, reason: str, pool: str = "") -> str:
        if self.pools:  # an agent without pools: every create is cold, nothing to say
            log.info("event=create_cold sandbox_id=%s reason=%s pool=%s", req.sandbox_id, reason, pool or "-")
        self.cold[reason] = self.cold.get(reason, 0) + 1
        return reason

    async def claim(self, member: HostSandbox, req: CreateRequest) -> HostSandbox | None:
        """The member as the request's sandbox, or None when the claim failed (logged; the
        member is gone and the caller takes the cold path)."""
        t0 = time.monotonic()
        try:
            sb = await warm_claim.claim(
                member=member, warm_dir=self.dir, sandboxes_dir=self.sandboxes_dir, req=req,
                runtime=self.runtime, network=self.network, builder=self.builder, frozen=self.freeze,
            )  # fmt: skip
        except BaseException as e:
            log.error(
                "event=warm_claim_failed sandbox_id=%s member=%s error=%s", req.sandbox_id, member.id, e
            )
            await asyncio.shield(self._undo_claim(member, req.sandbox_id))
            if isinstance(e, Exception):
                self._cold(req, "claim_failed")
                return None
            raise
        self.claims += 1
        log.info(
            "event=warm_claimed sandbox_id=%s member=%s ms=%.1f",
            req.sandbox_id, member.id, (time.monotonic() - t0) * 1000,
        )  # fmt: skip
        return sb

    async def _undo_claim(self, member: HostSandbox, sb_id: str) -> None:
        # Wherever the claim stopped: the member's dir (either name), container and slot go.
        renamed = (self.sandboxes_dir / sb_id).exists()
        teardown = self._sandboxes_teardown if renamed else self._teardown
        with contextlib.suppress(WarrenError):
            await teardown.cleanup(sb_id if renamed else member.id, slot=member.slot, pid=member.pid)
        with contextlib.suppress(WarrenError):
            await self.runtime.destroy(member.id)
        self.runtime.forget(sb_id)

    async def sweep_quarantines(self) -> None:
        """Retry the destroys that quarantined a slot (teardown.py): the members' own, and,
        through the same loop, the agent's sandboxes' (``sandboxes_teardown``)."""
        await self._teardown.sweep()
        await self._sandboxes_teardown.sweep()

    # ------------------------------------------------------------------------------ refills

    def _short(self) -> Pool | None:
        """The pool furthest below its target (none when all are full or refills are off)."""
        if self._suspended:
            return None
        short = [p for p in self.pools.values() if len(p.ready) + p.building < p.target]
        return min(short, key=lambda p: (len(p.ready) + p.building) / p.target, default=None)

    async def _refill_loop(self) -> None:
        backoff = RETRY_S
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (pool := self._short()) is not None:
                await self._creates_idle()  # user creates first, and the rest of their burst
                if self._short() is not pool:
                    continue
                try:
                    await self._refill_one(pool)
                    backoff = RETRY_S
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.error("event=warm_pool_refill_failed template=%s error=%s", pool.name, e)
                    await asyncio.sleep(backoff)
                    backoff = min(RETRY_MAX_S, backoff * 2)

    async def _refill_one(self, pool: Pool) -> None:
        chain, config = pool.chain, pool.config
        pool.building += 1
        t0 = time.monotonic()
        try:
            member = await self._build(pool)
        finally:
            pool.building -= 1
        if (
            self.pools.get(pool.name) is not pool
            or pool.chain != chain
            or pool.config != config
            or (len(pool.ready) >= pool.target or self._suspended)
        ):
            await self._destroy_members([member], reason="not_needed")  # changed meanwhile
            return
        pool.ready.append(member)
        if len(pool.ready) >= pool.target:
            pool.share.full()  # refilled: the teams' claims start again from none
        self._exits.watch(member.id, member.pid, frozen=self.freeze)
        log.info(
            "event=warm_pool_refilled template=%s member=%s ready=%d target=%d ms=%.1f",
            pool.name, member.id, len(pool.ready), pool.target, (time.monotonic() - t0) * 1000,
        )  # fmt: skip

    async def _build(self, pool: Pool) -> HostSandbox:
        member_id = POOL_ID_PREFIX + secrets.token_hex(8)
        # The template's start and ready commands run at the claim, with the sandbox's own
        # environment, as they would on a cold create: a member has run nothing.
        build_config = replace(pool.config, start_cmd="", ready_cmd="")
        req = CreateRequest(
            template=pool.name, vcpus=DEFAULT_VCPUS, memory_mb=DEFAULT_MEMORY_MB,
            disk_size_mb=DEFAULT_DISK_MB, timeout_sec=0, internet=True, env=dict(pool.config.env),
            sandbox_id=member_id, ref=TemplateRef.parse(_ZERO, _ZERO), allow=[], chain=pool.chain,
            config=build_config, egress=EgressRules(),
        )  # fmt: skip
        self._assign(member_id, pool.runtime)
        with self._hold(pool.chain):
            lower, base_config = await self._lower_layers(req)
            sb = await self.builder.build(req, lower, base_config)
        if self.freeze:
            try:
                await self.runtime.pause(member_id)
            except BaseException:
                await self._destroy_members([sb], reason="freeze_failed")
                raise
        return sb

    def _member_exited(self, member_id: str, pid: int) -> None:
        """The watch says a member's container ended (or, frozen, was killed)."""
        for pool in self.pools.values():
            member = next((m for m in pool.ready if m.id == member_id and m.pid == pid), None)
            if member is not None:
                pool.ready.remove(member)
                self._member_died(pool, member)
                self._wake.set()  # a replacement
                return

    def _member_died(self, pool: Pool, member: HostSandbox) -> None:
        """A member out of its pool (the caller took it out) that died: logged, destroyed."""
        log.warning(
            "event=pool_member_died template=%s member=%s pid=%d why=%s",
            pool.name, member.id, member.pid, _why_dead(member),
        )  # fmt: skip
        task = asyncio.create_task(self._destroy_members([member], reason="died"))
        self._dead.add(task)
        task.add_done_callback(self._dead.discard)

    async def _destroy_members(self, members: list[HostSandbox], *, reason: str) -> None:
        """A few at a time (a pool of 40 goes in seconds, not minutes); each runs to its end
        even if the caller is cancelled."""
        limit = asyncio.Semaphore(DESTROY_AT_ONCE)

        for sb in members:
            self._exits.forget(sb.id)

        async def one(sb: HostSandbox) -> None:
            async with limit:
                log.info("event=warm_member_destroyed member=%s reason=%s", sb.id, reason)
                await self._cleanup(sb.id, slot=sb.slot, pid=sb.pid)

        if members:
            await asyncio.shield(asyncio.gather(*(one(sb) for sb in members)))

    async def _cleanup(self, member_id: str, *, slot: int | None, pid: int) -> None:
        try:
            await self._teardown.cleanup(member_id, slot=slot, pid=pid)
        except WarrenError as e:
            log.error("event=warm_member_destroy_failed member=%s error=%s", member_id, e)
            d = self.dir / member_id
            if d.exists() and not mounts_under(d):
                shutil.rmtree(d, ignore_errors=True)


def _why_dead(member: HostSandbox) -> str:
    """Why a member's container ended, as far as the host tells: its memory cgroup's OOM kills,
    a SIGKILL that waits on it (or its exit under way), or only that it exited."""
    try:
        with open(cgroup_dir("memory", member.id) / "memory.oom_control") as f:
            for line in f:
                key, _, count = line.partition(" ")
                if key == "oom_kill" and count.strip() not in ("", "0"):
                    return "out_of_memory"
    except OSError:
        pass
    if process_alive(member.pid) and ending(member.pid):
        return "killed"  # not dead yet: frozen (it dies when thawed), or dying
    return "exited"
