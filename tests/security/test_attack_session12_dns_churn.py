"""Session 12: an allowed name whose answers keep changing ran the agent's iptables without end.

A sandbox with name rules has its resolver add each allowed name's addresses to its chain, one
``iptables-restore`` per rewrite (~10 ms of CPU at 1024 rules). A tenant that controls an
allowed name's DNS answers a new address every query: each answer was a rewrite, back to back,
for as long as it liked. Fixed: a slot's rewrites start at least ``LEARN_INTERVAL_S`` apart,
and what is learned meanwhile goes in together; an answer is still released only once its
address is in the kernel.

Driven as the attacker would, without the internet: the agent's real ``SandboxEgress`` and
resolver and the real ``iptables-restore``, in a network namespace of the test's own (``unshare
-n``: nothing of the host's tables is touched, nothing stays behind), a sandbox process on the
slot's address sending 16 queries at a time (its resolver's limit) and an upstream answering a
new address each query. Rewrites are counted, not timed: however slow the machine, the code
cannot start two within ``LEARN_INTERVAL_S`` (as its monotonic clock reads them).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

QUERIES = 400  # K: every answer a new address
AT_ONCE = 16  # the resolver's UDP queries in flight per sandbox (dns_proxy.MAX_INFLIGHT)
UPSTREAM = ("127.0.0.1", 5353)
NAME = b"\x05churn\x07example\x00\x00\x01\x00\x01"  # churn.example, A, IN
SLOT = 7


class _Churner(asyncio.DatagramProtocol):
    """The tenant's name server: a fresh public address in every answer (TTL 300)."""

    def __init__(self) -> None:
        self.n = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.n += 1
        head = struct.pack("!HHHHHH", struct.unpack_from("!H", data)[0], 0x8180, 1, 1, 0, 0)
        rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 300, 4) + struct.pack("!HH", 0xCB00 | (self.n >> 16), self.n)
        self.t.sendto(head + data[12:] + rr, addr)  # type: ignore[attr-defined]


async def _scenario(state_dir: Path) -> dict[str, object]:
    from warren.agent import egress_rules
    from warren.agent.network import Slot
    from warren.egress_rules import parse

    slot = Slot(SLOT)
    real_restore = egress_rules.restore
    lc = egress_rules.learned_chain(SLOT)
    rewrites: list[float] = []  # when each rewrite of WARREN-L<n> started, by the agent's clock
    in_kernel: set[str] = set()

    async def counted(lines: Sequence[str], *, check: bool = True) -> bool:
        """The real iptables-restore, its rewrites of the learned chain and what they installed
        noted (the start stamp is the one the agent keeps: no scheduling delay of the test's)."""
        rewrite = bool(lines) and lines[0].startswith(f":{lc} ")
        if rewrite:
            # (getattr: the tree before the fix kept no stamp, and fails on the count instead)
            rewrites.append(getattr(egress._slots[SLOT], "written", time.monotonic()))
        ok = await real_restore(lines, check=check)
        if rewrite:
            in_kernel.clear()
            mine = [x.split()[3] for x in lines if x.startswith(f"-A {lc} -d ") and "RETURN" in x]
            in_kernel.update(ip.removesuffix("/32") for ip in mine)
        return ok

    egress_rules.restore = counted  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    upstream, _ = await loop.create_datagram_endpoint(_Churner, local_addr=UPSTREAM)
    egress = egress_rules.SandboxEgress(state_dir, dns_upstream=f"{UPSTREAM[0]}:{UPSTREAM[1]}")
    await egress.apply(slot, parse(["churn.example"], ["0.0.0.0/0"]), None)
    released_before_allowed = 0
    answered = 0

    async def sandbox_process(first: int) -> None:
        nonlocal released_before_allowed, answered
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((slot.sandbox_ip, 0))
        s.setblocking(False)
        try:
            for qid in range(first, QUERIES, AT_ONCE):
                query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + NAME
                await loop.sock_sendto(s, query, (slot.gateway, 53))
                async with asyncio.timeout(60):
                    resp = await loop.sock_recv(s, 512)
                ip = socket.inet_ntoa(resp[-4:])
                answered += 1
                released_before_allowed += ip not in in_kernel  # the connection that follows would fail
        finally:
            s.close()

    t0 = time.monotonic()
    await asyncio.gather(*(sandbox_process(i) for i in range(AT_ONCE)))
    elapsed = time.monotonic() - t0
    await egress.remove(slot)
    upstream.close()
    in_window = [t for t in rewrites if t >= t0]  # all of them: the first answer comes after t0
    return {
        "rewrites": len(rewrites),
        "in_window": len(in_window),
        "gaps": [b - a for a, b in itertools.pairwise(rewrites)],
        "elapsed": elapsed,
        "answered": answered,
        "released_before_allowed": released_before_allowed,
        "interval": egress_rules.LEARN_INTERVAL_S,
    }


def _netns_setup() -> None:
    from warren.agent.network import Slot

    slot = Slot(SLOT)
    for cmd in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "addr", "add", f"{slot.gateway}/32", "dev", "lo"],
        ["ip", "addr", "add", f"{slot.sandbox_ip}/32", "dev", "lo"],
        ["iptables", "-w", "-N", "WARREN-USER"],  # egress.py's chains, which apply() jumps from
        ["iptables", "-w", "-N", "WARREN-DNS"],
    ):
        subprocess.run(cmd, check=True)


def test_changing_answers_rewrite_a_slots_rules_at_most_once_an_interval(tmp_path: Path) -> None:
    out = subprocess.run(
        ["unshare", "-n", sys.executable, __file__, str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["answered"] == QUERIES
    assert r["released_before_allowed"] == 0, "an answer came back before its address was allowed"
    interval = r["interval"]
    assert all(g >= interval for g in r["gaps"]), f"two rewrites within {interval} s: {min(r['gaps'])}"
    # Before: one rewrite per answer (QUERIES), however fast iptables-restore ran.
    assert r["in_window"] == r["rewrites"] <= r["elapsed"] / interval + 1, r
    assert r["rewrites"] < QUERIES / 4, r


if __name__ == "__main__":  # inside `unshare -n`: the test's own network namespace
    _netns_setup()
    print(json.dumps(asyncio.run(_scenario(Path(sys.argv[1])))))
