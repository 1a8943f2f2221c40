"""Session 21: netlink sockets, host memory no cgroup is charged for.

A netlink socket's ``struct sock`` comes from ``kmalloc-2k``, charged to no memory cgroup (its
inode and file are charged, ~1.6 KiB). Measured in a 64 MiB runc sandbox as ``nobody``
(session 21): 24 553 unbound ``NETLINK_ROUTE`` sockets over 25 processes held +47 MiB of
``kmalloc-2k`` outside the sandbox while its cgroup was charged +40 MiB (the OOM killer took
the filler's parent there): ~1.2x the sandbox's limit more, past the footprint the scheduler
counts it at (warren/footprint.py). Unbound sockets are not in ``/proc/net/netlink``; the
namespace's ``/proc/net/protocols`` counts them all.

As the attacker runs it (a script in the sandbox, ``nobody``): 12 processes each open 1000
netlink sockets, then hold them. Before the watchdog's netlink ceiling (runtime/
netlink_ceiling.py, enforced by socket_ceiling.py) all 12 000 stayed (runc and crun, ~23 MiB
outside a 64 MiB sandbox); now the holders are killed until the namespace is back under the
ceiling (2048 for the 128 MiB sandbox here), and the guest lives. The sandbox has 128 MiB, not
64: what the 12 holders are charged (their sockets' inodes and files, ~20 MiB, and 13 Pythons)
came near 64 MiB when the watchdog's kills lagged under CI's load, and the sandbox's own OOM
killer took the filler (exit -9, session 32).

Their receive queues: a reply the kernel sends a netlink socket is an skb no cgroup is charged
for, kept until read, up to ``SO_RCVBUF`` (``net.core.rmem_max`` doubled: 8 MiB a socket here).
20 sockets of ``nobody`` held 160 MiB of unreclaimable slab outside a 64 MiB sandbox charged
+3.8 MiB. As the attacker runs it: 3 processes fill sockets' queues with unread ``RTM_GETLINK``
replies to 24 MiB in all. Before, all 3 lived with 24 MiB queued; now they are killed until the
queues are back under 4 MiB (max(4 MiB, memory / 32)). An ordinary workload (a few netlink sockets,
``ip addr`` where the template has it, getaddrinfo) is not killed.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.agent.runtime.netlink_ceiling import queue_ceiling, uncharged_ceiling
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

MEMORY_MB = 128
CEILING = uncharged_ceiling(MEMORY_MB << 20)  # 2048
HOLDERS = 12
EACH = 1000
QUEUE_CEILING = queue_ceiling(MEMORY_MB << 20)  # 4 MiB
QUEUED = 24 << 20  # the queue filler's target: 6x the ceiling
HOLD_S = 4  # the holders hold this long once all are full (8 of the watchdog's ticks)

# argv[1] processes each open argv[2] netlink sockets (unbound: /proc/net/netlink does not list
# them) and hold them argv[3] s once all are full. Prints the holders that lived through the
# hold (exit 0) and the namespace's netlink sockets after it (/proc/net/protocols).
FILL = r"""
import contextlib, os, socket, sys, time
n, each, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
def netlink():
    for line in open("/proc/net/protocols"):
        if line.startswith("NETLINK "):
            return int(line.split()[2])
kids = []
for _ in range(n):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        held = [socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) for _ in range(each)]
        os.write(w, b"1")
        time.sleep(hold + 30)
        os._exit(0)
    os.close(w)
    os.read(r, 1)  # full (or dead: EOF)
    os.close(r)
    kids.append(pid)
full = netlink()
time.sleep(hold)
after = netlink()
lived = sum(os.waitpid(pid, os.WNOHANG)[0] == 0 for pid in kids)  # not killed: no exit yet
for pid in kids:
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, 9)  # its hold is over
        os.waitpid(pid, 0)
print(full, lived, after)
"""

# argv[1] processes fill netlink sockets' receive queues with unread replies (RTM_GETLINK of lo,
# the reply a few KiB) until they hold argv[2] bytes in all, as large as SO_RCVBUF may make
# them (net.core.rmem_max, doubled), and hold them argv[3] s. Prints the holders that lived
# through the hold and the bytes the namespace's netlink queues held then (/proc/net/netlink).
QUEUE = r"""
import contextlib, os, socket, struct, sys, time
n, target, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
def queued():
    return sum(int(line.split()[4]) for line in open("/proc/net/netlink").read().splitlines()[1:])
GETLINK = struct.pack("=IHHII", 32, 18, 1 | 4, 0, 0) + struct.pack("=BxHiII", 0, 0, 1, 0, 0)
kids = []
for _ in range(n):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        held, filled = [], 0
        while filled < target // n:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
            size = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            for _ in range(size // 1024 + 64):  # the kernel drops the replies past the queue's size
                s.send(GETLINK)
            held.append(s)
            filled += size
        os.write(w, b"1")
        time.sleep(hold + 30)
        os._exit(0)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    kids.append(pid)
time.sleep(hold)
after = queued()
lived = sum(os.waitpid(pid, os.WNOHANG)[0] == 0 for pid in kids)
for pid in kids:
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, 9)
        os.waitpid(pid, 0)
print(lived, after)
"""

# An ordinary workload: a few netlink sockets (a bound route listener among them), `ip addr`
# where the template has it, getaddrinfo; held past the watchdog's ticks. "ok" if it lived.
ORDINARY = r"""
import os, shutil, socket, subprocess, time
held = [socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) for _ in range(3)]
held[0].bind((0, 1))  # RTMGRP_LINK
if shutil.which("ip"):
    subprocess.run(["ip", "addr"], check=True, capture_output=True)
socket.getaddrinfo("localhost", 80)
time.sleep(float(os.environ.get("HOLD", "2")))
print("ok")
"""


@pytest.fixture(scope="module", params=["runc", "crun"])
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, request.param) as a:
        yield a


@contextlib.contextmanager
def sandbox(agent: AgentProcess) -> Iterator[str]:
    sb = agent.create(memory_mb=MEMORY_MB).sandbox_id
    try:
        yield sb
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)


def _kills(
    agent: AgentProcess, sb: str, wait_s: float = 30, queues: bool = False
) -> list[tuple[int, int, int]]:
    """The netlink kills the agent logged for ``sb``: (the victim's weight, the level, the
    ceiling) of the count's (``queues``: the queues'), waited for: the agent logs a kill after
    its victim's exit, which the exec's answer can beat."""
    kind = (
        r"socket_netlink_queue_kill sandbox={} pid=\d+ queued=(\d+) bytes"
        if queues
        else (r"socket_netlink_kill sandbox={} pid=\d+ netlink=(\d+) sockets")
    )
    pattern = "event=" + kind.format(sb) + r"=(\d+) ceiling=(\d+)"
    deadline = time.monotonic() + wait_s
    while True:
        text = agent.log_path.read_text(errors="replace")
        found = [(int(a), int(b), int(c)) for a, b, c in re.findall(pattern, text)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_netlink_sockets_past_the_ceiling_are_killed(agent: AgentProcess) -> None:
    with sandbox(agent) as sb:
        args = ("-c", FILL, str(HOLDERS), str(EACH), str(HOLD_S))
        res = agent.exec(sb, "python3", *args, user="nobody", timeout_sec=110)
        assert res.exit_code == 0, res  # the filler holds no netlink socket: never a victim
        full, lived, after = map(int, res.stdout.split())
        kills = _kills(agent, sb)
        print(f"{agent.runtime}: full {full} lived {lived} after {after} kills {kills}")
        assert full > CEILING  # it did get past the ceiling
        assert lived < HOLDERS and after <= CEILING, res.stdout  # before: 12 lived, 12000 after
        assert kills and all(c == CEILING and n >= EACH // 2 for n, _, c in kills), kills
        assert agent.exec(sb, "true").exit_code == 0  # the guest lives


def test_netlink_queues_past_the_ceiling_are_killed(agent: AgentProcess) -> None:
    """Unread replies in a few sockets: before, 3 holders kept 24 MiB or more (160 MiB in 20
    sockets at this host's rmem_max) outside a sandbox charged +4 MiB, for good. (The ceiling
    is the floor's at 128 MiB as at 64: 4 MiB.)"""
    with sandbox(agent) as sb:
        res = agent.exec(
            sb, "python3", "-c", QUEUE, "3", str(QUEUED), str(HOLD_S), user="nobody", timeout_sec=110
        )
        assert res.exit_code == 0, res
        lived, after = map(int, res.stdout.split())
        kills = _kills(agent, sb, queues=True)
        print(f"{agent.runtime}: lived {lived} queued after {after} kills {kills}")
        assert lived < 3 and after <= QUEUE_CEILING, res.stdout  # before: 3 lived, >= 24 MiB after
        assert kills and all(c == QUEUE_CEILING and b > QUEUE_CEILING for _, b, c in kills), kills
        assert agent.exec(sb, "true").exit_code == 0  # the guest lives


def test_an_ordinary_workload_is_not_killed(agent: AgentProcess) -> None:
    with sandbox(agent) as sb:
        res = agent.exec(sb, "python3", "-c", ORDINARY, user="nobody", env={"HOLD": "2"}, timeout_sec=60)
        assert res.exit_code == 0 and res.stdout.split() == [b"ok"], res
        assert not _kills(agent, sb, wait_s=0) and not _kills(agent, sb, wait_s=0, queues=True)
