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
ceiling (1024 for 64 MiB), and the guest lives. An ordinary workload (a few netlink sockets,
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
from warren.agent.runtime.netlink_ceiling import uncharged_ceiling
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

MEMORY_MB = 64
CEILING = uncharged_ceiling(MEMORY_MB << 20)  # 1024
HOLDERS = 12
EACH = 1000
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


def _kills(agent: AgentProcess, sb: str, wait_s: float = 30) -> list[tuple[int, int, int]]:
    """The netlink kills the agent logged for ``sb`` (``netlink``, ``sockets``, ``ceiling``),
    waited for: the agent logs a kill after its victim's exit, which the exec's answer can
    beat."""
    pattern = rf"event=socket_netlink_kill sandbox={sb} pid=\d+ netlink=(\d+) sockets=(\d+) ceiling=(\d+)"
    deadline = time.monotonic() + wait_s
    while True:
        found = [
            (int(a), int(b), int(c))
            for a, b, c in re.findall(pattern, agent.log_path.read_text(errors="replace"))
        ]
        if found or time.monotonic() > deadline:
            return found


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


def test_an_ordinary_workload_is_not_killed(agent: AgentProcess) -> None:
    with sandbox(agent) as sb:
        res = agent.exec(sb, "python3", "-c", ORDINARY, user="nobody", env={"HOLD": "2"}, timeout_sec=60)
        assert res.exit_code == 0 and res.stdout.split() == [b"ok"], res
        assert not _kills(agent, sb, wait_s=0)
