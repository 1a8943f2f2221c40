"""What a sandbox may reach beyond its own netns: the egress policy, in the host's tables.

Every rule lives in the host's network namespace, where the sandbox cannot touch it (sandbox
root has no CAP_NET_ADMIN over its netns, which belongs to the host's user namespace).

IPv4 (``iptables``, filter table):

* ``WARREN-IN`` (network.py, from INPUT): a sandbox opens no connection to the host itself:
  every address of the host, on every interface, is local delivery and dropped there.
* ``WARREN-FWD`` (network.py, from FORWARD) starts with ``-i wv+ -j WARREN-EGRESS``; after it
  come the per-slot DROP of ``internet=false`` sandboxes and the final ``-i wv+ -j ACCEPT``.
* ``WARREN-EGRESS`` (shared, rebuilt atomically at every agent start), in order:
  sandbox → sandbox DROP; REJECT the platform's addresses (the control plane's, and
  ``WARREN_AGENT_EGRESS_DENY``); jump to ``WARREN-USER`` (each sandbox's own rules, which only
  RETURN or REJECT: egress_rules.py); jump to ``WARREN-ALLOW``; DNS (udp/tcp 53) to the host's
  own resolvers returns (they are often at a private address); REJECT every range of
  :data:`DENIED_V4`. What is left (the public internet) returns to ``WARREN-FWD``.
* ``WARREN-ALLOW``: per slot, ``-i wv<n> -d <cidr> -j ACCEPT`` for the ranges an operator opened
  for the sandbox's team (``CreateSandboxRequest.egress_allow``). No rule for most sandboxes, so a
  create costs no extra ``iptables`` call unless its team has ranges opened.

IPv6: sandboxes get none. ``disable_ipv6`` is set on both ends of every veth (network.py), and
``ip6tables`` chains ``WARREN-IN``/``WARREN-FWD`` drop everything to or from ``wv+`` as a second
layer, in case a link ever comes up with IPv6 on.

REJECT (ICMP admin-prohibited) rather than DROP, so a client in the sandbox fails at once
instead of hanging until its timeout.

Egress accounting (``iptables -t security``): ``WARREN-ACCT``, appended to the security table's
FORWARD for ``-i wv+``, holds one ``-i wv<n> -j RETURN`` per slot, whose byte counter is what the
sandbox has sent out through the host. The security table's FORWARD runs after the filter
table's, so it counts only what the policy above let through (the internet, ranges opened for
the team, the host's resolvers), never what was rejected; traffic to the host itself (INPUT)
and to other sandboxes (dropped) is not egress. The counter lives in the host's netns, out of
the tenant's reach, and survives agent restarts (the chain is never flushed at start); a slot's
rule is made with the slot and removed with it (network.py), its last value read first.
"""

# ruff: noqa: ASYNC230, ASYNC240
# (blocking calls here read /etc/resolv.conf and tiny /proc/sys files: microseconds)

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import hashlib
import ipaddress
import logging
import os
import re
import socket
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from warren.agent.proc import run
from warren.egress_ranges import ipv4_network
from warren.errors import InvalidRequest

log = logging.getLogger("warren.agent.egress")

EGRESS_CHAIN = "WARREN-EGRESS"
ALLOW_CHAIN = "WARREN-ALLOW"
USER_CHAIN = "WARREN-USER"  # per-sandbox rules (egress_rules.py); never flushed here
DNS_CHAIN = "WARREN-DNS"  # from WARREN-IN: DNS to a sandbox's own resolver (egress_rules.py)
IN_CHAIN = "WARREN-IN"
ACCT_CHAIN = "WARREN-ACCT"  # security table: one counting rule per slot
_ACCT = ("iptables", "-w", "-t", "security")
# Same names as the IPv4 chains, in ip6tables' own tables.
IN6_CHAIN = "WARREN-IN"
FWD6_CHAIN = "WARREN-FWD"
SANDBOXES = "wv+"
MAX_ALLOW = 64  # CIDRs per sandbox: one ACCEPT rule each
DENY_ENV = "WARREN_AGENT_EGRESS_DENY"

# Closed to every sandbox unless an operator opens a range of them for its team.
DENIED_V4: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "CGNAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local, cloud metadata 169.254.169.254"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, broadcast"),
)
_REJECT = ("-j", "REJECT", "--reject-with", "icmp-admin-prohibited")
REJECT_ARGS = " ".join(_REJECT)
_IPV6_SYSCTL = "/proc/sys/net/ipv6/conf"
_CLONE_NEWNET = 0x40000000


class EgressError(RuntimeError):
    pass


# --------------------------------------------------------------------------- validation


def parse_allow(values: Iterable[str]) -> list[str]:
    """The CIDRs of a CreateSandboxRequest, normalized; InvalidRequest for anything else."""
    out: list[str] = []
    for v in values:
        try:
            cidr = ipv4_network(v.strip())
        except ValueError as e:
            raise InvalidRequest(f"egress_allow: {e}") from None
        if cidr not in out:
            out.append(cidr)
    if len(out) > MAX_ALLOW:
        raise InvalidRequest(f"egress_allow: {len(out)} ranges, at most {MAX_ALLOW}")
    return out


def parse_deny(text: str) -> list[ipaddress.IPv4Network]:
    """``WARREN_AGENT_EGRESS_DENY``: comma-separated IPv4 addresses or CIDRs."""
    nets: list[ipaddress.IPv4Network] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError as e:
            raise SystemExit(f"{DENY_ENV}: {item!r} is not an address or CIDR ({e})") from None
        if isinstance(net, ipaddress.IPv4Network):
            nets.append(net)  # IPv6 needs no entry: all IPv6 from sandboxes is dropped
    return nets


async def platform_deny(cp_url: str | None, deny: str = "") -> list[ipaddress.IPv4Network]:
    """The platform's own addresses, closed to sandboxes whatever ranges a team has opened:
    the control plane's (its URL's host, resolved once now) and ``WARREN_AGENT_EGRESS_DENY``
    (PostgreSQL, or anything else on a public address the agent cannot learn by itself)."""
    nets = parse_deny(deny)
    host = urlsplit(cp_url).hostname if cp_url else None
    if host:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, family=socket.AF_INET)
        except OSError as e:
            log.warning("event=egress_cp_unresolved host=%s error=%s", host, e)
            infos = []
        for info in infos:
            nets.append(ipaddress.IPv4Network(info[4][0]))
    return sorted(set(nets))


def host_resolvers(path: str = "/etc/resolv.conf") -> list[str]:
    """The host's IPv4 nameservers that sandboxes are given (loopback ones are not)."""
    found: list[str] = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        ip = ipaddress.ip_address(parts[1])
                    except ValueError:
                        continue
                    if ip.version == 4 and not ip.is_loopback and str(ip) not in found:
                        found.append(str(ip))
    except OSError:
        pass
    return found


# ------------------------------------------------------------------------ host chains


def _egress_rules(platform: Sequence[ipaddress.IPv4Network], resolvers: Sequence[str]) -> list[str]:
    rules = [f"-o {SANDBOXES} -j DROP"]
    rules += [f"-d {net} {' '.join(_REJECT)}" for net in platform]
    rules += [f"-j {USER_CHAIN}", f"-j {ALLOW_CHAIN}"]
    for ip in resolvers:
        rules += [f"-d {ip}/32 -p {proto} --dport 53 -j RETURN" for proto in ("udp", "tcp")]
    rules += [f"-d {cidr} {' '.join(_REJECT)}" for cidr, _ in DENIED_V4]
    return [f"-A {EGRESS_CHAIN} {r}" for r in rules]


async def _restore(tool: str, lines: Sequence[str], *, check: bool = True) -> bool:
    """One atomic ``*-restore --noflush`` transaction on the filter table. A chain declared in
    ``lines`` (``:NAME - [0:0]``) is created or flushed; others are left as they are."""
    text = "*filter\n" + "".join(f"{line}\n" for line in lines) + "COMMIT\n"
    res = await run(tool, "-w", "--noflush", input=text.encode(), check=False)
    if check and res.returncode != 0:
        raise EgressError(f"{tool}: {res.stderr.strip()}\n{text}")
    return res.returncode == 0


async def restore(lines: Sequence[str], *, check: bool = True) -> bool:
    """One atomic ``iptables-restore --noflush`` transaction (see :func:`_restore`)."""
    return await _restore("iptables-restore", lines, check=check)


async def _ensure_jump(tool: str, parent: str, *match: str, chain: str) -> None:
    rule = (*match, "-j", chain)
    if (await run(tool, "-w", "-C", parent, *rule, check=False)).returncode != 0:
        await run(tool, "-w", "-I", parent, "1", *rule)


def _all_platform_deny(
    state_dir: Path, owner: str, mine: Sequence[ipaddress.IPv4Network]
) -> list[ipaddress.IPv4Network]:
    """Record this agent's platform addresses and return those of every live agent on the
    machine (tests play several hosts on one; each must keep the others' addresses closed).
    A record whose owner's data dir is gone is stale and removed."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    mine_file = state_dir / hashlib.sha256(owner.encode()).hexdigest()[:24]
    mine_file.write_text(f"{owner}\n{','.join(map(str, mine))}\n")
    union: set[ipaddress.IPv4Network] = set()
    for f in state_dir.iterdir():
        if f.name.startswith("."):
            continue
        who, _, nets = f.read_text().partition("\n")
        if who != owner and not os.path.isdir(who):
            f.unlink(missing_ok=True)
            continue
        union |= {ipaddress.IPv4Network(n) for n in nets.strip().split(",") if n}
    return sorted(union)


async def setup(
    fwd_chain: str, platform: Sequence[ipaddress.IPv4Network], *, owner: str, state_dir: Path
) -> None:
    """Install or refresh the shared chains (idempotent; per-slot ACCEPTs in WARREN-ALLOW stay).
    ``platform``: this agent's platform addresses; WARREN-EGRESS closes those of every agent
    on the machine (``state_dir`` keeps them, under a lock so two starting agents agree)."""
    resolvers = host_resolvers()
    for chain in (ALLOW_CHAIN, USER_CHAIN, DNS_CHAIN):  # per-slot rules: created, never flushed
        await run("iptables", "-w", "-N", chain, check=False)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = os.open(state_dir / ".lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        platform = _all_platform_deny(state_dir, owner, platform)
        await _restore("iptables-restore", [f":{EGRESS_CHAIN} - [0:0]", *_egress_rules(platform, resolvers)])
    finally:
        os.close(lock)  # releases the lock
    await _ensure_jump("iptables", fwd_chain, "-i", SANDBOXES, chain=EGRESS_CHAIN)
    # Above WARREN-IN's DROP: a sandbox's own resolver on its gateway (per-slot ACCEPTs).
    for proto in ("udp", "tcp"):
        dns = ("-i", SANDBOXES, "-p", proto, "--dport", "53")
        await _ensure_jump("iptables", IN_CHAIN, *dns, chain=DNS_CHAIN)
    ipv6 = os.path.isdir(_IPV6_SYSCTL)
    if ipv6:  # a kernel booted with ipv6.disable=1 has nothing to filter
        await _restore("ip6tables-restore", [
            f":{IN6_CHAIN} - [0:0]", f":{FWD6_CHAIN} - [0:0]",
            f"-A {IN6_CHAIN} -i {SANDBOXES} -j DROP",
            f"-A {FWD6_CHAIN} -i {SANDBOXES} -j DROP",
            f"-A {FWD6_CHAIN} -o {SANDBOXES} -j DROP",
        ])  # fmt: skip
        await _ensure_jump("ip6tables", "INPUT", chain=IN6_CHAIN)
        await _ensure_jump("ip6tables", "FORWARD", chain=FWD6_CHAIN)
    counted = await setup_accounting()
    log.info(
        "event=egress_rules deny=%s platform=%s dns_allowed=%s ipv6=%s egress_counted=%s",
        ",".join(c for c, _ in DENIED_V4), ",".join(map(str, platform)) or "-",
        ",".join(resolvers) or "-", "dropped" if ipv6 else "absent", counted,
    )  # fmt: skip


async def setup_accounting() -> bool:
    """WARREN-ACCT and its jump from the security table's FORWARD (idempotent; the per-slot
    rules and their counters stay). False when the kernel has no security table: sandboxes
    then run uncounted, and their egress_bytes is never reported."""
    await run(*_ACCT, "-N", ACCT_CHAIN, check=False)
    jump = ("FORWARD", "-i", SANDBOXES, "-j", ACCT_CHAIN)
    if (await run(*_ACCT, "-C", *jump, check=False)).returncode == 0:
        return True
    res = await run(*_ACCT, "-A", *jump, check=False)
    if res.returncode != 0:
        log.error("event=egress_accounting_off error=%s", res.stderr.strip())
    return res.returncode == 0


async def install_account(veth: str) -> None:
    """The slot's counting rule (a failure is logged: the sandbox runs, uncounted)."""
    res = await run(*_ACCT, "-A", ACCT_CHAIN, "-i", veth, "-j", "RETURN", check=False)
    if res.returncode != 0:
        log.warning("event=egress_account_failed veth=%s error=%s", veth, res.stderr.strip())


async def read_accounts() -> dict[str, int] | None:
    """Bytes counted per veth (None when the chain cannot be read)."""
    res = await run(*_ACCT, "-S", ACCT_CHAIN, "-v", check=False)
    if res.returncode != 0:
        return None
    return _accounts(res.stdout)


def _accounts(dump: str) -> dict[str, int]:
    """``-S -v`` lines (``-A WARREN-ACCT -i wv3 -c <packets> <bytes> -j RETURN``) → bytes by
    veth (a veth listed twice, after a crash between add and check, is summed)."""
    found: dict[str, int] = {}
    for line in dump.splitlines():
        veth, count = re.search(r" -i (\S+)", line), re.search(r" -c \d+ (\d+)", line)
        if line.startswith(f"-A {ACCT_CHAIN} ") and veth and count:
            found[veth.group(1)] = found.get(veth.group(1), 0) + int(count.group(1))
    return found


async def remove_account(veth: str) -> int | None:
    """Remove the slot's counting rule(s); their last byte count (None: there was none)."""
    res = await run(*_ACCT, "-S", ACCT_CHAIN, "-v", check=False)
    lines = [x for x in res.stdout.splitlines() if re.search(rf" -i {re.escape(veth)} ", x)]
    for _ in lines:
        await run(*_ACCT, "-D", ACCT_CHAIN, "-i", veth, "-j", "RETURN", check=False)
    return _accounts("\n".join(lines)).get(veth) if lines else None


async def remove() -> None:
    """Drop the shared chains (after WARREN-FWD, which jumps here, was flushed)."""
    res = await run("iptables", "-w", "-S", check=False)
    per_slot = re.findall(r"^-N (WARREN-[UL]\d+)$", res.stdout, re.MULTILINE)
    chains = (EGRESS_CHAIN, ALLOW_CHAIN, USER_CHAIN, DNS_CHAIN, *per_slot)
    for chain in chains:
        await run("iptables", "-w", "-F", chain, check=False)
    for chain in chains:
        await run("iptables", "-w", "-X", chain, check=False)
    jump = ("FORWARD", "-i", SANDBOXES, "-j", ACCT_CHAIN)
    while (await run(*_ACCT, "-D", *jump, check=False)).returncode == 0:
        pass
    await run(*_ACCT, "-F", ACCT_CHAIN, check=False)
    await run(*_ACCT, "-X", ACCT_CHAIN, check=False)
    for parent, chain in (("INPUT", IN6_CHAIN), ("FORWARD", FWD6_CHAIN)):
        while (await run("ip6tables", "-w", "-D", parent, "-j", chain, check=False)).returncode == 0:
            pass
        await run("ip6tables", "-w", "-F", chain, check=False)
        await run("ip6tables", "-w", "-X", chain, check=False)


# ---------------------------------------------------------------------------- per slot


def _allow_rule(veth: str, cidr: str) -> str:
    return f"{ALLOW_CHAIN} -i {veth} -d {cidr} -j ACCEPT"


async def install_allow(veth: str, cidrs: Sequence[str]) -> None:
    """The slot's opened ranges, in one transaction (no call at all when there are none)."""
    if cidrs:
        await _restore("iptables-restore", [f"-A {_allow_rule(veth, c)}" for c in cidrs])


async def remove_allow(veth: str, cidrs: Sequence[str]) -> None:
    if not cidrs or await _restore(
        "iptables-restore", [f"-D {_allow_rule(veth, c)}" for c in cidrs], check=False
    ):
        return
    for c in cidrs:  # some were never installed (a create that failed halfway): one by one
        await run("iptables", "-w", "-D", *_allow_rule(veth, c).split(), check=False)


async def user_rule_slots() -> set[int]:
    """Slots with a chain of their own rules (leftover clean-up after a crash)."""
    res = await run("iptables", "-w", "-S", check=False)
    return {int(n) for n in re.findall(r"^-N WARREN-[UL](\d+)$", res.stdout, re.MULTILINE)}


async def allow_rules_by_slot(veth_prefix: str) -> dict[int, list[str]]:
    """Every per-slot ACCEPT in WARREN-ALLOW, by slot (leftover clean-up after a crash)."""
    res = await run("iptables", "-w", "-S", ALLOW_CHAIN, check=False)
    found: dict[int, list[str]] = {}
    for line in res.stdout.splitlines():  # iptables prints the matches in its own order
        veth = re.search(rf" -i {re.escape(veth_prefix)}(\d+)\b", line)
        dest = re.search(r" -d (\S+)", line)
        if line.startswith(f"-A {ALLOW_CHAIN} ") and veth and dest:
            found.setdefault(int(veth.group(1)), []).append(dest.group(1))
    return found


# ------------------------------------------------------------------------------- IPv6 off


def _in_netns(netns_path: str, write: tuple[str, str]) -> None:
    """Write one /proc/sys file as seen from inside ``netns_path`` (/proc/sys/net follows the
    writing thread's netns). Runs in a thread of its own: setns moves that thread for good."""
    err: list[BaseException] = []

    def work() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns_path}")
            finally:
                os.close(fd)
            # Never write the host's own sysctl by mistake.
            if os.stat("/proc/thread-self/ns/net").st_ino != os.stat(netns_path).st_ino:
                raise OSError(f"not inside {netns_path}")
            with open(write[0], "w") as f:
                f.write(write[1])
        except BaseException as e:
            err.append(e)

    t = threading.Thread(target=work, name="netns-sysctl", daemon=True)
    t.start()
    t.join()
    if err:
        raise EgressError(f"{write[0]} in {netns_path}: {err[0]}")


async def disable_ipv6(host_if: str, netns_path: str, ns_if: str) -> None:
    """No IPv6 on either end of a sandbox's veth: no link-local address, no route (D4).
    ``lo`` inside keeps ::1, which reaches nothing but the sandbox itself."""
    if not os.path.isdir(_IPV6_SYSCTL):
        return
    with open(f"{_IPV6_SYSCTL}/{host_if}/disable_ipv6", "w") as f:
        f.write("1")
    await asyncio.to_thread(_in_netns, netns_path, (f"{_IPV6_SYSCTL}/{ns_if}/disable_ipv6", "1"))
