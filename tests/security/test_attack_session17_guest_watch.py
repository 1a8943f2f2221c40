"""Session 17 (W2-D): a watch's events, held by the guest for a client that does not read.

A recursive watch (``WatchDir``; the E2B SDK's ``watch_dir``) holds up to MAX_PENDING (4096)
events for a slow client, and what it has already sent waits in the connection's buffer: counted
in events, not bytes. An event's path is as long as the tree makes it: a process of the sandbox
(``nobody`` will do) makes 15 directories of 240-character names and creates 5 000 files of
247-character names at the bottom (~3.9 KiB a path), while the watch's client reads nothing.
All of it is the guest's own memory, above ``cmds`` (agent/runtime/cmds_cgroup.py), within its
24 MiB reserve. Measured on this tree (256 MiB sandbox, runc): one such watch, guest 55 MiB;
four, 155 MiB; 32 (watch.MAX_WATCH_OPS), the guest is killed ("its container exited").

Fixed: held events are counted in bytes (each path as Python holds it + ~280 bytes of objects),
2 MiB per watch and 8 MiB for all together (past it: dropped, ``overflow``), and a watch leaves at
most 64 KiB in its connection's buffer. Before the fix (runc): one watch 45 MiB, 32 the guest
killed; after: 6-7 MiB and 15 MiB (runc, crun).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.agent.runtime import cmds_cgroup
from warren.guest.guest_agent import watch as watch_op
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

TREE = r"""
import os
p = "/tmp/w"
for i in range(15):
    p = p + "/" + ("d%d" % i) + "x" * 240
os.makedirs(p)
"""
FILES = r"""
import os
p = "/tmp/w"
for i in range(15):
    p = p + "/" + ("d%d" % i) + "x" * 240
os.chdir(p)
for i in range(5000):
    open(("%06d" % i) + "y" * 240, "w").close()
"""


# One runtime: what is bounded here is the guest's own (the same code under runc and crun); how
# commands reach cmds under each runtime is test_attack_session17_guest_cgroup's and _cmds_escape's.
@pytest.fixture(scope="module", params=["runc"])
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, request.param) as a:
        yield a


def guest_charge(sb: str) -> int:
    mem = cmds_cgroup.sandbox_dir("memory", sb)
    total = int((mem / "memory.usage_in_bytes").read_text())
    return total - int((mem / "cmds/memory.usage_in_bytes").read_text())


@pytest.mark.parametrize("watches", [1, watch_op.MAX_WATCH_OPS])
def test_an_unread_watch_of_long_paths_stays_within_the_guests_reserve(
    agent: AgentProcess, watches: int
) -> None:
    sb = agent.create(memory_mb=256).sandbox_id
    try:
        assert agent.exec(sb, "python3", "-c", TREE, user="nobody", timeout_sec=60).exit_code == 0
        streams = [
            agent.stub.WatchDir(pb.WatchDirRequest(sandbox_id=sb, path="/tmp/w", recursive=True))
            for _ in range(watches)
        ]
        time.sleep(2)  # the watches are set up; their clients never read
        res = agent.exec(sb, "python3", "-c", FILES, user="nobody", timeout_sec=120)
        assert res.exit_code == 0, res.stderr
        time.sleep(3)
        assert agent.exec(sb, "sh", "-c", "echo ok", timeout_sec=60).stdout == b"ok\n"
        assert guest_charge(sb) < cmds_cgroup.MEMORY_RESERVE, guest_charge(sb) >> 20
        for w in streams:
            w.cancel()
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)
