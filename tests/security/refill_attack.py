"""What the session-26 refill attacks share (test_attack_session26_runtime_*_refill.py): a forker
that keeps ``n`` children alive for ``run`` seconds, each holding what its ``child()`` made, one
replaced as soon as it dies; and its run as ``nobody`` in a fresh sandbox while the host samples a
level of the sandbox's network namespace (through its guest's ``/proc/<pid>/net``)."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.agent.runtime.bundle import CGROUP_PARENT
from warren.rpc import hostagent_pb2 as pb

SAMPLE_S = 0.02

# Appended to a script that imports os and time, sets n and run, and defines child() (which
# never returns): the parent's loop, then its children killed.
_REPLACE = r"""
kids, end = set(), time.monotonic() + run
while time.monotonic() < end:
    while len(kids) < n:
        pid = os.fork()
        if pid == 0:
            child()
        kids.add(pid)
    kids.discard(os.waitpid(-1, 0)[0])
for pid in kids:
    os.kill(pid, 9)
"""


def forker(child: str) -> str:
    """The whole script: ``child`` (its imports, ``n``, ``run`` and ``child()``), then the loop."""
    return child + _REPLACE


def guest_of(sandbox_id: str) -> int:
    """The host pid of the sandbox's guest (its PID 1: the last NSpid field is 1)."""
    with open(f"/sys/fs/cgroup/memory/{CGROUP_PARENT}/{sandbox_id}/cgroup.procs") as f:
        pids = [int(p) for p in f.read().split()]
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:") and line.split()[-1] == "1":
                    return pid
    raise AssertionError(f"no PID 1 among {pids}")


@pytest.fixture(scope="module")
def runc_agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    """The worker's runc agent, lent to the module (import it as a fixture)."""
    with shared_agent(request, "runc") as a:
        yield a


def _net(guest: int, name: str) -> list[bytes]:
    """The lines of ``/proc/<guest>/net/<name>`` (none once the guest is gone)."""
    try:
        with open(f"/proc/{guest}/net/{name}", "rb") as f:
            return f.read().splitlines()
    except OSError:
        return []


def tcp_sockets(guest: int) -> int:
    """TCP sockets of the guest's namespace (queued children in), as the host reads them."""
    for line in _net(guest, "sockstat"):
        if line.startswith(b"TCP:"):
            fields = line.split()
            return int(fields[fields.index(b"inuse") + 1])
    return 0


def netlink_queued(guest: int) -> int:
    """Bytes queued in the netlink sockets of the guest's namespace, as the host reads them."""
    return sum(int(line.split()[4]) for line in _net(guest, "netlink")[1:])


@dataclass
class Refill:
    """One attack's run: the forker's exit code, the level sampled meanwhile, the guest's pid."""

    exit_code: int
    samples: list[tuple[float, int]]
    guest: int

    @property
    def peak(self) -> int:
        return max((n for _, n in self.samples), default=0)

    def seconds_past(self, level: int) -> float:
        """How long the samples spent above ``level``."""
        pairs = itertools.pairwise(self.samples)
        return sum(t1 - t0 for (t0, n), (t1, _) in pairs if n > level)


@contextlib.contextmanager
def refill(
    agent: AgentProcess, memory_mb: int, level: Callable[[int], int], script: str, *args: str
) -> Iterator[Refill]:
    """Runs ``script`` with ``args`` as ``nobody`` in a new sandbox of ``memory_mb`` while
    ``level(guest pid)`` is sampled; yields the run with the sandbox still there, then destroys it."""
    sb = agent.create(memory_mb=memory_mb).sandbox_id
    try:
        guest = guest_of(sb)
        samples: list[tuple[float, int]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append((time.monotonic(), level(guest)))
                time.sleep(SAMPLE_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            res = agent.exec(sb, "python3", "-c", script, *args, user="nobody", timeout_sec=60)
        finally:
            done.set()
            sampler.join()
        yield Refill(res.exit_code, samples, guest)
        assert agent.exec(sb, "true").exit_code == 0  # the guest lives
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)
