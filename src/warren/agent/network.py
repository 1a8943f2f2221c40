"""Per-sandbox networking: a network namespace, a veth pair, NAT, and iptables isolation.

Slot ``n`` owns the /30 ``10.11.0.0/16 + 4n``: the host end of the veth (``wv<n>``) is ``.1``,
the sandbox end (``eth0`` inside netns ``warren-s<n>``) is ``.2`` and is the sandbox's
``host_ip``. Every sandbox is routed through the host, where our own chains decide:

* ``WARREN-FWD`` (from FORWARD): first the egress policy (``WARREN-EGRESS``, see egress.py:
  private, link-local, CGNAT, loopback, reserved ranges and the platform's addresses are
  closed unless an operator opened a range for the team); a sandbox created with
  ``internet=false`` has the host end of its veth in device group :data:`BLOCKED_GROUP`, which
  one rule at the top of the chain drops (a per-slot DROP rule on a kernel without
  ``xt_devgroup``); sandbox↔sandbox traffic is dropped; everything else from a sandbox (the
  public internet) is accepted.
* ``WARREN-IN`` (from INPUT): a sandbox may not open connections to the host itself (the agent,
  a database, ... on any of the host's addresses); replies to connections the host opened are
  accepted.
* ``WARREN-NAT`` (nat POSTROUTING): MASQUERADE sandbox traffic that leaves 10.11.0.0/16.

IPv6 is off on both ends of every veth, and ip6tables drops whatever crosses ``wv+`` anyway.

Keeping every rule in our own chains makes cleanup a flush, and a leftover is easy to spot.

Several agents may share one machine (tests play several hosts on loopback addresses): a slot
is claimed host-wide by creating ``/run/warren/netslots/<n>`` (O_EXCL) naming the owner's data
dir, and an agent only ever cleans up slots it owns or that nobody claims.
"""

# ruff: noqa: ASYNC230, ASYNC240
# (blocking calls here read tiny /proc, /sys and lock files: microseconds)

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warren.agent import egress, slot_userns
from warren.agent.egress_rules import SandboxEgress
from warren.agent.egress_usage import EndedEgress
from warren.agent.proc import run, umount
from warren.aio import cancel_and_wait

log = logging.getLogger("warren.agent.network")

SUBNET = ipaddress.IPv4Network("10.11.0.0/16")
MAX_SLOTS = SUBNET.num_addresses // 4
NETNS_PREFIX = "warren-s"
VETH_PREFIX = "wv"
FWD_CHAIN = "WARREN-FWD"
IN_CHAIN = "WARREN-IN"
NAT_CHAIN = "WARREN-NAT"
NETNS_DIR = Path("/run/netns")
CLAIMS_DIR = Path("/run/warren/netslots")
# internet=false, as a device group of the slot's host-side veth: set with one sysfs write (no
# iptables exec or xtables lock on a create's or a warm claim's path, ~3-10 ms here, more when
# other agents hold the lock). The group is the kernel's, in the host's netns (out of sandbox
# root's reach), and goes with the veth. ("wRn0": any value no one else on a host uses.)
BLOCKED_GROUP = 0x77526E30
# What one sandbox may hold of the host's connection tracking table (net.netfilter.
# nf_conntrack_max, 262144 here, for everything on the host): its new flows past these are
# refused. Before (session 14), 20000 UDP datagrams to distinct public ports, as nobody in 1.8
# s, left 20000 entries in the host's table for 30 s: one sandbox could keep it full, and a
# full table drops every new flow of the host (other sandboxes, the agent, the database).
# Forwarded flows: 4096 (TCP's 120 s TIME_WAIT: ~34 new connections a second, sustained); to
# the host (its resolver, the only thing it answers): 1024 (~34 queries a second). Not more:
# connlimit walks a source's live flows for each new one (~0.1 us each; at 8192 a sandbox's
# new flows cost ~1 ms of CPU each, in the softirq of whoever sends them).
FLOWS_OUT_PER_SANDBOX = 4096
FLOWS_IN_PER_SANDBOX = 1024
_SYS_NET = Path("/sys/class/net")
# How long a destroy waits for the kernel to remove a slot's veth pair with its namespace
# before it deletes the pair itself (an `ip` fork+exec; see _veth_gone).
VETH_GONE_WAIT_S = 0.05


@dataclass(frozen=True, slots=True)
class Slot:
    index: int

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.index}"

    @property
    def netns_path(self) -> str:
        return str(NETNS_DIR / self.netns)

    @property
    def veth(self) -> str:
        return f"{VETH_PREFIX}{self.index}"

    @property
    def gateway(self) -> str:
        return str(SUBNET.network_address + 4 * self.index + 1)

    @property
    def sandbox_ip(self) -> str:
        return str(SUBNET.network_address + 4 * self.index + 2)

    @property
    def userns_path(self) -> str | None:
        """The slot's own user namespace (slot_userns.py), None for a plain (gVisor) slot."""
        return str(slot_userns.path(self.index)) if slot_userns.present(self.index) else None


class NetworkError(RuntimeError):
    pass


async def _iptables(*args: str, table: str = "filter", check: bool = True) -> bool:
    res = await run("iptables", "-w", "-t", table, *args, check=False)
    if check and res.returncode != 0:
        raise NetworkError(f"iptables -t {table} {' '.join(args)}: {res.stderr.strip()}")
    return res.returncode == 0


class NetworkSlots:
    """Allocates slots and builds/tears down each slot's namespace, veth pair and rules."""

    def __init__(
        self,
        owner: str,
        claims_dir: Path = CLAIMS_DIR,
        *,
        pool_size: int = 0,
        platform_deny: Sequence[ipaddress.IPv4Network] = (),
        dns_upstream: str = "",
        ended_egress: Path | None = None,
    ) -> None:
        self.owner = owner
        # The last egress reading of each sandbox whose slot was torn down lately (issue 18),
        # kept in ``ended_egress`` across restarts; ListSandboxes reports them.
        self.ended = EndedEgress(ended_egress)
        self.claims_dir = claims_dir
        # The platform's own addresses (the CP's, WARREN_AGENT_EGRESS_DENY): closed to every
        # sandbox, whatever ranges its team has opened.
        self.platform_deny = list(platform_deny)
        # Each sandbox's own egress rules and resolver (issue 14), by slot.
        self.rules = SandboxEgress(claims_dir.parent / "egress-rules", dns_upstream)
        self._used: set[int] = set()
        # Slots kept for a sandbox that may still live (teardown.py): no sweep tears them down.
        self.quarantined: set[int] = set()
        self._lock = asyncio.Lock()
        # Whether slots get a user namespace of their own (slot_userns.py): checked in setup_host.
        self.own_userns = False
        # Whether internet=false is the device group (the rule is in: setup_host), else a rule per slot.
        self.group_block = False
        # Slots built ahead of time (internet on): a create takes one instead of spending
        # ~20-40 ms of `ip` calls on its critical path.
        self.pool_size = pool_size
        self._pool: list[Slot] = []
        self._refill: asyncio.Task[None] | None = None
        # Awaited before each refill slot (the manager's: no create queued or under way), so
        # building a slot's `ip` and iptables processes never competes with a create.
        self.wait_idle: Callable[[], Awaitable[Any]] | None = None

    # A claim file is "<owner>\n<holder>\n<allowed CIDRs, comma-separated>\n": the CIDRs are
    # written before their rules are installed, so whoever tears the slot down (this agent,
    # or the next one after a crash) knows which rules to remove.

    def _claim(self, index: int, holder: str, allow: Sequence[str] = ()) -> bool:
        """Claim slot ``index`` (:meth:`_claim_first`)."""
        return self._claim_first((index,), holder, allow) is not None

    def _claim_first(self, indices: Iterable[int], holder: str, allow: Sequence[str] = ()) -> int | None:
        """Claim the first of ``indices`` no one holds, with its content whole: written aside,
        then linked in place (``link`` fails if the claim exists, as O_EXCL did). A claim
        created empty and written after was read in between by another agent's start-up sweep
        as ownerless: it tore the new slot's namespace down ("open /run/netns/warren-s18: No
        such file", CI). One file written for all the candidates: a file per candidate cost
        ~0.1 ms each (an inode made and freed, on a /run that is no tmpfs), ~6 ms a slot on a
        host whose other agents held 60 (session 28)."""
        tmp = self.claims_dir / f".new.{os.getpid()}.{threading.get_ident()}.claim"
        tmp.write_text(f"{self.owner}\n{holder}\n{','.join(allow)}\n")
        try:
            for index in indices:
                try:
                    os.link(tmp, self.claims_dir / str(index))
                except FileExistsError:
                    continue
                return index
            return None
        finally:
            tmp.unlink(missing_ok=True)

    def _set_holder(self, index: int, holder: str, allow: Sequence[str] = ()) -> None:
        tmp = self.claims_dir / f".{index}.tmp"
        tmp.write_text(f"{self.owner}\n{holder}\n{','.join(allow)}\n")
        os.replace(tmp, self.claims_dir / str(index))

    def _claim_allow(self, index: int) -> list[str]:
        try:
            lines = (self.claims_dir / str(index)).read_text().split("\n")
        except FileNotFoundError:
            return []
        return [c for c in lines[2].split(",") if c] if len(lines) > 2 else []

    def _read_claim(self, index: int) -> tuple[str, str] | None:
        """(owner, holder) of slot ``index``'s claim file, or None when unclaimed."""
        try:
            owner, _, rest = (self.claims_dir / str(index)).read_text().partition("\n")
        except FileNotFoundError:
            return None
        return owner, rest.split("\n", 1)[0]

    def _claim_owner(self, index: int) -> str | None:
        claim = self._read_claim(index)
        return claim[0] if claim else None

    def _unclaim(self, index: int) -> None:
        if self._claim_owner(index) == self.owner:
            (self.claims_dir / str(index)).unlink(missing_ok=True)

    # ------------------------------------------------------------------ host setup / cleanup

    async def setup_host(self) -> None:
        """Enable forwarding and install our chains and base rules (idempotent, never flushes:
        other agents' per-slot rules on this machine stay)."""
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")
        await self._check_own_userns()
        self.claims_dir.mkdir(parents=True, exist_ok=True)
        for table, chain, parent in (
            ("filter", FWD_CHAIN, "FORWARD"),
            ("filter", IN_CHAIN, "INPUT"),
            ("nat", NAT_CHAIN, "POSTROUTING"),
        ):
            await _iptables("-N", chain, table=table, check=False)
            if not await _iptables("-C", parent, "-j", chain, table=table, check=False):
                await _iptables("-I", parent, "1", "-j", chain, table=table)
        sandboxes = f"{VETH_PREFIX}+"
        established = ("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
        # Per-slot DROP rules for internet=false are inserted at position 1, above these.
        base_rules: list[tuple[str, str, tuple[str, ...]]] = [
            ("filter", FWD_CHAIN, ("-i", sandboxes, "-o", sandboxes, "-j", "DROP")),
            ("filter", FWD_CHAIN, ("-i", sandboxes, "-j", "ACCEPT")),
            ("filter", FWD_CHAIN, ("-o", sandboxes, *established)),
            ("filter", IN_CHAIN, ("-i", sandboxes, *established)),
            ("filter", IN_CHAIN, ("-i", sandboxes, "-j", "DROP")),
            ("nat", NAT_CHAIN, ("-s", str(SUBNET), "!", "-d", str(SUBNET), "-j", "MASQUERADE")),
        ]
        for table, chain, rule in base_rules:
            if not await _iptables("-C", chain, *rule, table=table, check=False):
                await _iptables("-A", chain, *rule, table=table)
        # Inserted at the top of WARREN-FWD, so it holds above the final ACCEPT (also on a host
        # whose chains an older agent built).
        await egress.setup(
            FWD_CHAIN, self.platform_deny, owner=self.owner, state_dir=self.claims_dir.parent / "egress-deny"
        )
        self.group_block = await self._blocked_group_rule()
        await self._flow_caps()

    @staticmethod
    async def _flow_caps() -> None:
        """First in WARREN-FWD and WARREN-IN: a sandbox's new flows past its share of the
        host's connection tracking table are refused (FLOWS_*_PER_SANDBOX, per address)."""
        for chain, cap in ((FWD_CHAIN, FLOWS_OUT_PER_SANDBOX), (IN_CHAIN, FLOWS_IN_PER_SANDBOX)):
            rule = (
                "-i", f"{VETH_PREFIX}+", "-m", "conntrack", "--ctstate", "NEW", "-m", "connlimit",
                "--connlimit-above", str(cap), "--connlimit-mask", "32", "--connlimit-saddr", "-j", "REJECT",
            )  # fmt: skip
            if await _iptables("-C", chain, *rule, check=False):
                continue
            if not await _iptables("-I", chain, "1", *rule, check=False):
                log.warning("event=flow_cap_unavailable chain=%s consequence=shared_conntrack_table", chain)

    @staticmethod
    async def _blocked_group_rule() -> bool:
        """The one DROP of internet=false slots, first in WARREN-FWD (above the egress policy,
        whose operator ranges ACCEPT). False, logged, on a kernel without ``xt_devgroup``."""
        rule = ("-i", f"{VETH_PREFIX}+", "-m", "devgroup", "--src-group", hex(BLOCKED_GROUP), "-j", "DROP")
        if await _iptables("-C", FWD_CHAIN, *rule, check=False):
            return True
        if await _iptables("-I", FWD_CHAIN, "1", *rule, check=False):
            return True
        log.warning("event=devgroup_unavailable consequence=internet_off_by_per_slot_rule")
        return False

    async def _check_own_userns(self) -> None:
        reason = await slot_userns.unavailable()
        self.own_userns = not reason
        if reason:  # the sandboxes still run, but share the kernel's per-user counts with host root
            await slot_userns.stop_maker()  # nothing for it to make
            log.warning(
                "event=slot_userns_unavailable error=%r consequence=per_user_counts_shared_with_host_root "
                "fix=allow_unprivileged_user_namespaces", reason,
            )  # fmt: skip

    async def cleanup_leftovers(self, keep: set[int]) -> list[int]:
        """Remove namespaces, veths and rules of slots not in ``keep`` (a crash's leftovers)."""
        found: set[int] = set()
        if NETNS_DIR.is_dir():
            for name in os.listdir(NETNS_DIR):
                if name.startswith(NETNS_PREFIX) and name[len(NETNS_PREFIX) :].isdigit():
                    found.add(int(name[len(NETNS_PREFIX) :]))
        for name in os.listdir("/sys/class/net"):
            if name.startswith(VETH_PREFIX) and name[len(VETH_PREFIX) :].isdigit():
                found.add(int(name[len(VETH_PREFIX) :]))
        if slot_userns.USERNS_DIR.is_dir():
            found |= {int(n[1:]) for n in os.listdir(slot_userns.USERNS_DIR) if n[1:].isdigit()}
        found |= {int(n) for n in os.listdir(self.claims_dir) if n.isdigit()}
        stale_allow = await egress.allow_rules_by_slot(VETH_PREFIX)
        found |= set(stale_allow)
        await self.rules.restore_slots({i: Slot(i) for i in keep})
        found |= self.rules.mark_stale(await egress.user_rule_slots() - keep)
        removed = []
        for idx in sorted(found - keep - self.quarantined):
            owner = self._claim_owner(idx)
            if owner is not None and owner != self.owner and os.path.isdir(owner):
                continue  # another agent's sandbox
            await self._teardown(Slot(idx), extra_allow=stale_allow.get(idx, ()))
            if owner is not None:
                (self.claims_dir / str(idx)).unlink(missing_ok=True)
            removed.append(idx)
        return removed

    # ------------------------------------------------------------------------- allocation

    def mark_used(self, index: int, holder: str) -> None:
        """Re-adoption: a recorded sandbox already owns this slot."""
        self._used.add(index)
        if self._claim_owner(index) is None:
            self._claim(index, holder)

    async def acquire(
        self, holder: str, *, internet: bool, allow: Sequence[str] = (), userns: bool = True
    ) -> Slot:
        """A ready slot from the pool, or the lowest free slot built now; freed on failure.
        ``holder`` (the sandbox id) is written into the claim file for operators and checks.
        ``allow``: CIDRs (validated by :func:`egress.parse_allow`) opened for this sandbox on
        top of the default policy; none when ``internet`` is off (nothing leaves the slot).
        ``userns``: the slot has a user namespace of its own (slot_userns.py; pooled slots
        do); off for gVisor, which cannot join one."""
        allow = list(allow) if internet else []
        userns = userns and self.own_userns
        if self._pool and userns:
            slot = self._pool.pop(0)
            self._set_holder(slot.index, holder, allow)
            self._start_refill()
            try:
                await self._slot_rules(slot, internet=internet, allow=allow)
            except BaseException:
                await self.release(slot)
                raise
            return slot
        self._start_refill()
        return await self._new_slot(holder, internet=internet, allow=allow, userns=userns)

    async def reassign(self, slot: Slot, holder: str, *, internet: bool, allow: Sequence[str] = ()) -> None:
        """A warm-pool member's slot (built as :meth:`acquire` builds one: internet on, nothing
        opened) handed to the sandbox that claimed it: the claim names it, and its policy is
        installed exactly as :meth:`acquire` installs it on a pooled slot."""
        allow = list(allow) if internet else []
        self._set_holder(slot.index, holder, allow)
        await self._slot_rules(slot, internet=internet, allow=allow)

    def _start_refill(self) -> None:
        if self.pool_size > 0 and (self._refill is None or self._refill.done()):
            self._refill = asyncio.create_task(self._fill_pool(), name="netslot-pool")

    async def _fill_pool(self) -> None:
        while len(self._pool) < self.pool_size:
            if self.wait_idle is not None:
                await self.wait_idle()
            try:
                self._pool.append(await self._new_slot("pool", internet=True))
            except Exception as e:
                log.warning("event=netslot_pool_error error=%s", e)
                return

    async def start_pool(self) -> None:
        self._start_refill()

    async def drain_pool(self) -> None:
        """Tear down the pre-built slots (agent shutdown)."""
        if self._refill is not None:
            await cancel_and_wait(self._refill)
        pool, self._pool = self._pool, []
        for slot in pool:
            with contextlib.suppress(Exception):
                await self.release(slot)
        await self.rules.close()  # the resolvers' sockets; the rules stay for the next agent
        await slot_userns.stop_maker()

    async def _new_slot(
        self, holder: str, *, internet: bool, allow: Sequence[str] = (), userns: bool = True
    ) -> Slot:
        async with self._lock:
            idx = self._claim_first((i for i in range(MAX_SLOTS) if i not in self._used), holder, allow)
            if idx is None:
                raise NetworkError("no free network slot")
            self._used.add(idx)
        slot = Slot(idx)
        try:
            await self._build(slot, internet=internet, allow=allow, userns=userns and self.own_userns)
        except BaseException:
            await self.release(slot)
            raise
        return slot

    def held_by(self, index: int, holder: str) -> bool:
        """Whether this agent's claim on slot ``index`` names ``holder``. A slot named in a
        leftover record may have been freed and handed to another sandbox (of this agent or of
        another on the machine) since: then it is not the leftover's to tear down."""
        return self._read_claim(index) == (self.owner, holder)

    def quarantine(self, index: int) -> None:
        """Keep slot ``index`` claimed and built: its sandbox's teardown left something alive,
        which would share the slot's host uid range and address with its next holder."""
        self.quarantined.add(index)
        self._used.add(index)

    async def release(self, slot: Slot) -> None:
        """Tear the slot down and free it. Always frees the index, then reports failures."""
        try:
            await self._teardown(slot)
        finally:
            self._unclaim(slot.index)
            self._used.discard(slot.index)
            self.quarantined.discard(slot.index)

    # ------------------------------------------------------------------------ build/teardown

    async def _build(self, slot: Slot, *, internet: bool, allow: Sequence[str] = (), userns: bool) -> None:
        # Two batches instead of ~8 separate `ip` runs: each fork+exec of ip costs ~2-3 ms.
        host_side = (
            ("" if userns else f"netns add {slot.netns}\n")
            + f"link add {slot.veth} type veth peer name eth0 netns {slot.netns}\n"
            f"addr add {slot.gateway}/30 dev {slot.veth}\n"
            f"link set {slot.veth} up\n"
        )
        if userns:
            await slot_userns.make(slot.index, slot.netns)
        ns_side = (
            f"addr add {slot.sandbox_ip}/30 dev eth0\n"
            "link set eth0 up\n"
            "link set lo up\n"
            f"route add default via {slot.gateway}\n"
        )
        await egress.install_account(slot.veth)  # the slot's egress counter, from zero
        await run("ip", "-batch", "-", input=host_side.encode())
        # Once the veth exists (a device group needs it); nothing runs in the slot before the
        # create has it back.
        await self._slot_rules(slot, internet=internet, allow=allow)
        await egress.disable_ipv6(slot.veth, slot.netns_path, "eth0")
        await run("ip", "-n", slot.netns, "-batch", "-", input=ns_side.encode())

    async def _slot_rules(self, slot: Slot, *, internet: bool, allow: Sequence[str]) -> None:
        if not internet:
            await self.block_internet(slot)
        else:
            await egress.install_allow(slot.veth, allow)

    async def block_internet(self, slot: Slot) -> None:
        """Drop everything the sandbox would send through the host (it stays reachable from it):
        its veth joins :data:`BLOCKED_GROUP`, or (no ``xt_devgroup``, or no veth: a re-adopted
        sandbox whose slot lost it) a DROP rule of its own, which holds by name."""
        if self.group_block and (_SYS_NET / slot.veth).exists():
            set_group(slot.veth, BLOCKED_GROUP)
            return
        await _iptables("-I", FWD_CHAIN, "1", "-i", slot.veth, "-j", "DROP")

    async def _teardown(self, slot: Slot, *, extra_allow: Sequence[str] = ()) -> None:
        errors: list[str] = []
        allow = list(dict.fromkeys([*self._claim_allow(slot.index), *extra_allow]))
        # Deleting the namespace destroys eth0 and with it the host end of the pair.
        deleted = False
        if os.path.exists(slot.netns_path):
            try:
                delete_netns(slot.netns_path)
                deleted = True
            except OSError as e:
                errors.append(str(e))
        try:
            await slot_userns.remove(slot.index)
        except slot_userns.SlotUsernsError as e:
            errors.append(str(e))
        if not await _veth_gone(slot.veth, VETH_GONE_WAIT_S if deleted else 0.0):
            res = await run("ip", "link", "delete", slot.veth, check=False)
            if res.returncode != 0 and os.path.exists(f"/sys/class/net/{slot.veth}"):
                errors.append(res.stderr.strip())
        while await _iptables("-D", FWD_CHAIN, "-i", slot.veth, "-j", "DROP", check=False):
            pass
        # Nothing is sent any more: the counter's last value is the sandbox's final egress.
        sent = await egress.remove_account(slot.veth)
        claim = self._read_claim(slot.index)
        if sent is not None and claim is not None and claim[1] not in ("", "pool"):
            self.ended.add(claim[1], sent)
        await egress.remove_allow(slot.veth, allow)
        await self.rules.remove(slot)
        if errors:
            raise NetworkError(f"network slot {slot.index} cleanup: {'; '.join(errors)}")

    async def egress_bytes(self, slots: Iterable[int]) -> dict[int, int]:
        """Bytes each of ``slots`` has sent out since it was built (egress.py, WARREN-ACCT); a
        slot without a counter (built before counting existed, or its rule removed by hand)
        gets one now and is left out this time. Empty when the counters cannot be read."""
        counts = await egress.read_accounts()
        if counts is None:
            return {}
        out: dict[int, int] = {}
        for index in set(slots):
            veth = Slot(index).veth
            if veth in counts:
                out[index] = counts[veth]
            elif os.path.exists(f"/sys/class/net/{veth}"):  # not a slot torn down meanwhile
                await egress.install_account(veth)
        return out

    async def remove_host_rules(self) -> None:
        """Remove our chains entirely (used by tests and `Terminate` with no sandboxes left)."""
        for table, chain, parent in (
            ("filter", FWD_CHAIN, "FORWARD"),
            ("filter", IN_CHAIN, "INPUT"),
            ("nat", NAT_CHAIN, "POSTROUTING"),
        ):
            while await _iptables("-D", parent, "-j", chain, table=table, check=False):
                pass
            await _iptables("-F", chain, table=table, check=False)
            await _iptables("-X", chain, table=table, check=False)
        await egress.remove()


async def _veth_gone(veth: str, wait_s: float) -> bool:
    """Whether the host end of a slot's pair is gone, given up to ``wait_s`` for it to go: the
    kernel removes the pair in a worker once the namespace's last reference went, ~2 ms after
    :func:`delete_netns` here (`ip netns delete`'s own fork+exec used to cover that time)."""
    path = _SYS_NET / veth
    deadline = time.monotonic() + wait_s
    while path.exists():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.002)
    return True


def delete_netns(netns_path: str) -> None:
    """What ``ip netns delete`` does, without its fork+exec (~2-3 ms of CPU a destroy): the
    namespace's bind mount detached (it may be gone already), then its file removed. The
    namespace ends once nothing else holds it (the sandbox's processes, its user namespace)."""
    with contextlib.suppress(OSError):
        umount(netns_path, lazy=True)
    os.unlink(netns_path)


def set_group(veth: str, group: int) -> None:
    """The veth's device group (``ip link set <veth> group``), through sysfs, read back: a
    failure raises, and the sandbox is not handed out."""
    path = _SYS_NET / veth / "netdev_group"
    try:
        path.write_text(str(group))
        got = int(path.read_text())
    except (OSError, ValueError) as e:
        raise NetworkError(f"device group of {veth}: {e}") from e
    if got != group:
        raise NetworkError(f"device group of {veth} is {got}, not {group}")


def slot_rules(dump: str) -> list[str]:
    """Rules in an `iptables -S` dump that mention a sandbox veth (for leak checks)."""
    return [line for line in dump.splitlines() if re.search(rf"\b{VETH_PREFIX}\d+\b", line)]
