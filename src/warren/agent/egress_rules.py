"""A sandbox's own egress rules (issue 14), enforced in the host's tables.

The rules themselves (parsing, matching) are ``warren.egress_rules``; here they become
iptables chains of the host's netns, where sandbox root cannot reach them, and a DNS proxy
(``dns_proxy.py``) for sandboxes with name rules. Per slot ``n`` with rules:

* ``WARREN-USER -i wv<n> -j WARREN-U<n>``: ``WARREN-USER`` is jumped to from ``WARREN-EGRESS``
  (egress.py) after the platform's REJECTs and before the operator's ranges and the default
  denials, so a sandbox's rules only ever RETURN or REJECT: they narrow what it may reach and
  never open what the platform closes.
* ``WARREN-U<n>``: RETURN for connections already open (a change of rules, or an expired
  learned address, applies to new connections); with name rules, REJECT DNS (53/udp, 53/tcp)
  to any resolver (the sandbox's own resolver is on its gateway, which is not forwarded
  traffic); RETURN to each allowed CIDR; go to ``WARREN-L<n>`` (``-g``: its RETURNs end the
  sandbox's rules, not just that chain).
* ``WARREN-L<n>``: RETURN to each address learned from the answer to an allowed name (bounded,
  each kept for its record's TTL, at least :data:`MIN_TTL_S`); then REJECT each denied CIDR.
* ``WARREN-DNS -i wv<n> -d <gateway> -m limit … -j ACCEPT`` then ``… -j DROP`` (jumped to from
  ``WARREN-IN`` for port 53): only while the sandbox has name rules, whose resolver then
  listens there; past :data:`DNS_PACKETS_PER_S` its packets never reach the agent.

Every change of a slot's rules is one ``iptables-restore --noflush`` transaction: the sandbox
never runs with half its rules. The rules of each slot are also written to
``<state dir>/<n>.json`` before they are installed, so a restarted agent restarts the resolver
of a re-adopted sandbox, and the clean-up of a crashed one finds its chains.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from warren.agent.dns_proxy import Budget, DnsProxy, upstreams_from
from warren.agent.egress import DNS_CHAIN, REJECT_ARGS, USER_CHAIN, host_resolvers, restore
from warren.agent.proc import run
from warren.egress_rules import EgressRules, from_json

if TYPE_CHECKING:
    from warren.agent.network import Slot

log = logging.getLogger("warren.agent.egress")

MAX_LEARNED = 1024  # addresses learned from DNS answers, per sandbox
MIN_TTL_S = 60  # a learned address is kept at least this long (clients cache a little)
MAX_TTL_S = 86400
SWEEP_S = 30.0
# Packets a second a sandbox may send its resolver (a burst of twice that); the rest are dropped
# by the kernel. Every packet that reaches the resolver costs the agent's event loop: one
# process in a 1-vCPU sandbox had ~10 000 queries a second answered (session 12, load 14).
DNS_PACKETS_PER_S = 1000
# Rewrites of a slot's learned addresses start at least this far apart: each is one
# iptables-restore (~10 ms of CPU at MAX_LEARNED rules), and a tenant whose allowed name answers
# a new address every query ran them back to back for as long as it liked (session 12). What is
# learned meanwhile waits and goes in together; an answer so waits at most this plus one rewrite
# (~50 ms at MAX_LEARNED) before it is released, and only once its address is allowed.
LEARN_INTERVAL_S = 0.1


def user_chain(index: int) -> str:
    return f"WARREN-U{index}"


def learned_chain(index: int) -> str:
    return f"WARREN-L{index}"


@dataclass
class _SlotState:
    slot: Slot
    rules: EgressRules
    resolv: Path | None  # the sandbox's resolv.conf on the host (its identity file)
    learned: dict[str, float] = field(default_factory=dict)  # address -> expiry (monotonic)
    installed: set[str] = field(default_factory=set)  # the learned addresses in the kernel now
    proxy: DnsProxy | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    written: float = float("-inf")  # when the last rewrite of WARREN-L<n> started (monotonic)
    tenant: str = ""  # whose share of the resolvers' upstream count its resolver takes


def _raise_nofile() -> None:
    """Each resolver holds sockets: let the agent use its hard limit of file descriptors (often
    1024 soft against a million hard), as it may run hundreds of them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _write_in_place(path: Path, text: str) -> None:
    """Rewrite a bind-mounted identity file keeping its inode (the sandbox sees the mount of
    that inode). Its directory is the agent's own: no tenant path is resolved.

    Sandbox root owns the file, so it may hold a lease on it (``fcntl(F_SETLEASE)``), and a
    plain open then waits up to ``/proc/sys/fs/lease-break-time`` (45 s) for it: done on the
    event loop, that froze the whole agent. The open is tried without blocking; under a lease
    (which that try starts breaking) the blocking open waits in a thread of its own, and only
    this sandbox's update waits. While it waits the file counts as open for writing, so no new
    lease can be taken: it ends within the kernel's break time."""
    flags = os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_NONBLOCK)
    except BlockingIOError:
        fd = await _open_in_thread(path, flags)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


async def _open_in_thread(path: Path, flags: int) -> int:
    """``os.open`` in a daemon thread of its own (not the loop's executor, whose few threads a
    tenant's leases could all hold), its fd handed to the awaiting coroutine."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()

    def settle(fd: int | None, error: BaseException | None) -> None:
        if done.cancelled():  # the update was given up: the fd is nobody's
            if fd is not None:
                os.close(fd)
        elif error is not None:
            done.set_exception(error)
        else:
            done.set_result(cast(int, fd))

    def work() -> None:
        try:
            fd = os.open(path, flags)
        except BaseException as e:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, fd, None)

    threading.Thread(target=work, name="egress-resolv-open", daemon=True).start()
    return await done


class SandboxEgress:
    """The rules and resolvers of the sandboxes of one agent, by slot."""

    def __init__(self, state_dir: Path, dns_upstream: str = "") -> None:
        self.state_dir = state_dir
        self.dns_upstream = dns_upstream
        self._slots: dict[int, _SlotState] = {}
        self._stale: set[int] = set()  # slots whose chains a crash left behind
        self._sweeper: asyncio.Task[None] | None = None
        self._budget = Budget()  # upstream queries in flight, all resolvers together

    # --------------------------------------------------------------------------- chains

    @staticmethod
    def _chain_lines(slot: Slot, rules: EgressRules, learned: list[str]) -> list[str]:
        u, lc = user_chain(slot.index), learned_chain(slot.index)
        # Chains are declared (created or flushed) before any rule of the transaction.
        lines = [
            f":{u} - [0:0]",
            f":{lc} - [0:0]",
            f"-A {u} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        ]
        if rules.has_names:
            lines += [f"-A {u} -p {p} --dport 53 {REJECT_ARGS}" for p in ("udp", "tcp")]
        lines += [f"-A {u} -d {c} -j RETURN" for c in rules.allow_cidrs]
        # A goto: a RETURN in WARREN-L<n>, or its end, leaves the sandbox's rules altogether
        # (back to WARREN-USER after its jump), not just WARREN-L<n>.
        lines.append(f"-A {u} -g {lc}")
        return [*lines, *SandboxEgress._learned_lines(slot, rules, learned)[1:]]

    @staticmethod
    def _learned_lines(slot: Slot, rules: EgressRules, learned: list[str]) -> list[str]:
        """``WARREN-L<n>``: the learned addresses (exceptions, like allowed CIDRs), then the
        denied CIDRs; rewritten whole when an address is learned or expires."""
        lc = learned_chain(slot.index)
        lines = [f":{lc} - [0:0]", *(f"-A {lc} -d {ip}/32 -j RETURN" for ip in learned)]
        return lines + [f"-A {lc} -d {c} {REJECT_ARGS}" for c in rules.deny_cidrs]

    @staticmethod
    def _jump(slot: Slot) -> str:
        return f"{USER_CHAIN} -i {slot.veth} -j {user_chain(slot.index)}"

    @staticmethod
    def _dns_accept(slot: Slot) -> list[str]:
        """DNS to the sandbox's resolver, at most DNS_PACKETS_PER_S; the rest dropped here."""
        to_it = f"{DNS_CHAIN} -i {slot.veth} -d {slot.gateway}/32"
        limit = f"-m limit --limit {DNS_PACKETS_PER_S}/sec --limit-burst {2 * DNS_PACKETS_PER_S}"
        return [f"{to_it} {limit} -j ACCEPT", f"{to_it} -j DROP"]

    async def _remove_dns_accept(self, slot: Slot) -> None:
        # One by one and unchecked: a slot's rules may be an older agent's (the ACCEPT alone).
        legacy = f"{DNS_CHAIN} -i {slot.veth} -d {slot.gateway}/32 -j ACCEPT"
        for rule in (*self._dns_accept(slot), legacy):
            await run("iptables", "-w", "-D", *rule.split(), check=False)

    # ---------------------------------------------------------------------------- apply

    async def apply(self, slot: Slot, rules: EgressRules, resolv: Path | None, tenant: str = "") -> None:
        """Install, replace or (empty rules) remove a slot's rules, atomically; start or stop
        its resolver and point its resolv.conf at it (or back at the host's resolvers).
        ``tenant``: the sandbox's (``HostSandbox.tenant``), whose share its resolver takes."""
        state = self._slots.get(slot.index)
        if state is None:
            if rules.empty:
                return  # the common create: nothing to do, no iptables call
            state = _SlotState(slot=slot, rules=EgressRules(), resolv=resolv)
            self._slots[slot.index] = state
            first = True
        else:
            first = False
        state.tenant = tenant or state.tenant
        async with state.lock:
            old = state.rules
            if rules.empty:
                await self._remove_locked(slot, state)
            else:
                try:
                    await self._install(slot, state, rules, first=first)
                except BaseException:
                    if first:
                        self._slots.pop(slot.index, None)
                    raise
            if old.has_names != rules.has_names:
                state.rules = rules
                await self._point_resolv(slot, state)
        log.info(
            "event=egress_rules_applied slot=%d allow=%d deny=%d names=%s",
            slot.index, len(rules.allow_cidrs) + len(rules.allow_names),
            len(rules.deny_cidrs) + len(rules.deny_names), rules.has_names,
        )  # fmt: skip

    async def _install(self, slot: Slot, state: _SlotState, rules: EgressRules, *, first: bool) -> None:
        old = state.rules
        self._save(slot, rules, state)  # before the kernel: a crash leaves a findable record
        if not rules.allow_names:
            state.learned.clear()
        live = self._live(state)
        lines = self._chain_lines(slot, rules, live)
        if first:
            lines.append(f"-A {self._jump(slot)}")
        started = rules.has_names and not old.has_names
        if started:
            await self._start_proxy(slot, state)
            lines += [f"-A {rule}" for rule in self._dns_accept(slot)]
        try:
            await restore(lines)
        except BaseException:
            if started:
                await self._stop_proxy(state)
            raise
        if old.has_names and not rules.has_names:
            await self._remove_dns_accept(slot)
        state.rules, state.installed = rules, set(live)
        if not rules.has_names:
            await self._stop_proxy(state)

    @staticmethod
    async def _point_resolv(slot: Slot, state: _SlotState) -> None:
        if state.resolv is None:
            return
        if state.rules.has_names:
            text = f"nameserver {slot.gateway}\n"
        else:  # the host's resolvers again, as at create (never the file's own text: the tenant's)
            text = "".join(f"nameserver {ip}\n" for ip in host_resolvers())
        with contextlib.suppress(FileNotFoundError):  # a sandbox being destroyed
            await _write_in_place(state.resolv, text)

    async def _start_proxy(self, slot: Slot, state: _SlotState) -> None:
        upstreams = upstreams_from(self.dns_upstream)
        if not upstreams:
            log.warning("event=dns_no_upstream slot=%d: names will not resolve", slot.index)

        async def learn(records: list[tuple[str, int]]) -> None:
            await self._learn(slot, state, records)

        proxy = DnsProxy(
            slot.gateway, slot.sandbox_ip, verdict=lambda name: state.rules.verdict(name),
            learn=learn, upstreams=upstreams, budget=self._budget, tenant=state.tenant,
        )  # fmt: skip
        _raise_nofile()
        await proxy.start()
        state.proxy = proxy
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep(), name="egress-learned-sweep")

    @staticmethod
    async def _stop_proxy(state: _SlotState) -> None:
        proxy, state.proxy = state.proxy, None
        if proxy is not None:
            await proxy.close()

    # -------------------------------------------------------------------------- learned

    @staticmethod
    def _live(state: _SlotState) -> list[str]:
        now = time.monotonic()
        for ip in [ip for ip, exp in state.learned.items() if exp <= now]:
            del state.learned[ip]
        return list(state.learned)

    async def _learn(self, slot: Slot, state: _SlotState, records: list[tuple[str, int]]) -> None:
        """Allow the addresses of an allowed name's answer (rewriting ``WARREN-L<n>`` only when
        one is new); the soonest to expire go first past :data:`MAX_LEARNED`."""
        now = time.monotonic()
        new = False
        for ip, ttl in records:
            exp = now + min(max(ttl, MIN_TTL_S), MAX_TTL_S)
            new |= ip not in state.learned
            state.learned[ip] = max(exp, state.learned.get(ip, 0.0))
        if not new:
            return
        if len(state.learned) > MAX_LEARNED:
            keep = sorted(state.learned.items(), key=lambda kv: kv[1])[-MAX_LEARNED:]
            state.learned = dict(keep)
        wanted = {ip for ip, _ in records}
        async with state.lock:
            # Answers that came together share one rewrite: whoever writes first writes every
            # address learned so far (after waiting out LEARN_INTERVAL_S, while more may come),
            # and the others find theirs installed. One pushed out past MAX_LEARNED meanwhile
            # needs no rewrite: it would not be in it.
            current = self._slots.get(slot.index) is state and state.rules.allow_names
            if current and wanted & state.learned.keys() - state.installed:
                # A loop, not one sleep: the event loop may run a timer up to its clock's
                # resolution early, and the interval is a guarantee (the attack test checks it).
                while (wait := state.written + LEARN_INTERVAL_S - time.monotonic()) > 0:  # noqa: ASYNC110
                    await asyncio.sleep(wait)
                await self._write_learned(slot, state)

    async def _write_learned(self, slot: Slot, state: _SlotState) -> None:
        live = self._live(state)
        state.written = time.monotonic()
        await restore(self._learned_lines(slot, state.rules, live))
        state.installed = set(live)

    async def _sweep(self) -> None:
        """Expired learned addresses leave the chains (every :data:`SWEEP_S`)."""
        while any(s.learned for s in self._slots.values()) or any(s.proxy for s in self._slots.values()):
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            for index, state in list(self._slots.items()):
                if any(exp <= now for exp in state.learned.values()):
                    try:
                        async with state.lock:
                            await self._write_learned(state.slot, state)
                    except Exception as e:
                        log.warning("event=egress_sweep_failed slot=%d error=%s", index, e)

    # --------------------------------------------------------------- remove, state files

    def _state_file(self, index: int) -> Path:
        return self.state_dir / f"{index}.json"

    def _save(self, slot: Slot, rules: EgressRules, state: _SlotState) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {"rules": rules.to_json(), "resolv": str(state.resolv or ""), "tenant": state.tenant}
        tmp = self.state_dir / f".{slot.index}.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._state_file(slot.index))

    async def remove(self, slot: Slot) -> None:
        """Everything of a slot's rules (destroy, a failed create, a crash's leftover)."""
        state = self._slots.get(slot.index)
        if state is not None:
            async with state.lock:
                await self._remove_locked(slot, state)
        elif slot.index in self._stale or self._state_file(slot.index).exists():
            await self._remove_kernel(slot)
            self._state_file(slot.index).unlink(missing_ok=True)
            self._stale.discard(slot.index)

    def mark_stale(self, indexes: set[int]) -> set[int]:
        """Slots with chains of rules but no sandbox (a crash's): their teardown removes them."""
        self._stale |= indexes
        return indexes

    async def _remove_locked(self, slot: Slot, state: _SlotState) -> None:
        await self._stop_proxy(state)
        await self._remove_kernel(slot, dns=state.rules.has_names)
        self._slots.pop(slot.index, None)
        self._state_file(slot.index).unlink(missing_ok=True)

    async def _remove_kernel(self, slot: Slot, *, dns: bool = True) -> None:
        u, lc = user_chain(slot.index), learned_chain(slot.index)
        ok = await restore(
            [f"-D {self._jump(slot)}", f"-F {u}", f"-F {lc}", f"-X {u}", f"-X {lc}"], check=False
        )
        if dns:
            await self._remove_dns_accept(slot)
        if ok:
            return
        # Some were never installed (a create that failed halfway, a crash): one by one.
        await run("iptables", "-w", "-D", *self._jump(slot).split(), check=False)
        for args in (("-F", u), ("-F", lc), ("-X", u), ("-X", lc)):
            await run("iptables", "-w", *args, check=False)

    async def restore_slots(self, keep: dict[int, Slot]) -> None:
        """After re-adoption: the rules of the slots kept are known again and their resolvers
        restarted (the chains stayed in the kernel)."""
        for index, slot in keep.items():
            f = self._state_file(index)
            if index in self._slots or not f.exists():
                continue
            try:
                data = json.loads(f.read_text())
                rules = from_json(data["rules"])
                resolv = Path(data["resolv"]) if data.get("resolv") else None
            except (OSError, ValueError, KeyError) as e:
                log.error("event=egress_state_unreadable slot=%d error=%s", index, e)
                continue
            state = _SlotState(slot=slot, rules=rules, resolv=resolv, tenant=str(data.get("tenant") or ""))
            self._slots[index] = state
            if rules.has_names:
                try:
                    await self._start_proxy(slot, state)
                except OSError as e:
                    log.error("event=dns_proxy_restart_failed slot=%d error=%s", index, e)

    async def close(self) -> None:
        """Agent shutdown: the resolvers stop (their sandboxes' rules stay, for the next agent)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for state in self._slots.values():
            await self._stop_proxy(state)
