"""Session 16: a sandbox's ``nobody`` takes every process of its sandbox, and the guest's too.

A runc/crun sandbox holds at most ``pids.max`` processes (1024), the guest counted. A fork bomb
run as ``nobody`` (each child in a session of its own, so no process group ends it) took all of
them: every command after it failed (``Resource temporarily unavailable``: the guest could not
fork), including root's ``kill``, for as long as the bomb lived, i.e. until the sandbox was
destroyed (runc and crun, every run). Now every command starts under ``RLIMIT_NPROC`` a little
below ``pids.max`` (guest_agent/process.py, ``OomScore.in_child``): one user alone never holds the
last processes, and root can still run a command, and end the bomb with it.

As the attacker runs it: a script in a 1 GiB sandbox (memory is not what runs out), as nobody.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

# Forks sleepers, each in a session of its own, until the kernel refuses; says so once in
# /tmp/full (read back without a command: the guest then could not fork one), and goes on trying.
BOMB = r"""
import os, time
os.setsid()
said = False
while True:
    try:
        if os.fork() == 0:
            os.setsid()
            os.execv("/bin/sleep", ["sleep", "3000"])
    except OSError as e:
        if not said:
            with open("/tmp/full.tmp", "w") as f:
                f.write(str(e.errno))
            os.rename("/tmp/full.tmp", "/tmp/full")
            said = True
        time.sleep(0.05)
"""

# The same with threads (the pids cgroup counts each, and so does RLIMIT_NPROC).
THREADS = r"""
import os, threading, time
os.setsid()
said = False
while True:
    try:
        threading.Thread(target=time.sleep, args=(3000,), daemon=True).start()
    except RuntimeError as e:
        if not said:
            with open("/tmp/full.tmp", "w") as f:
                f.write(str(e))
            os.rename("/tmp/full.tmp", "/tmp/full")
            said = True
        time.sleep(0.05)
"""


@pytest.fixture(scope="module", params=["runc", "crun"])
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, request.param) as a:
        yield a


@pytest.fixture
def sandbox(agent: AgentProcess) -> Iterator[str]:
    sb = agent.create(memory_mb=1024).sandbox_id
    try:
        yield sb
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)


def run(agent: AgentProcess, sb: str, script: str, user: str = "") -> tuple[int, str]:
    """(exit code, stdout), or (-1, the error) when the guest could not start it."""
    try:
        res = agent.exec(sb, "sh", "-c", script, timeout_sec=60, user=user)
    except grpc.RpcError as e:
        return -1, f"{e.code()}: {e.details()}"  # type: ignore[attr-defined]
    return res.exit_code, res.stdout.decode()


def wait_full(agent: AgentProcess, sb: str) -> None:
    """Until the bomb has been refused a process (a file read: the guest forks nothing)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            agent.stub.ReadFile(pb.ReadFileRequest(sandbox_id=sb, path="/tmp/full"), timeout=30)
            return
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the bomb was never refused a process"
        time.sleep(0.2)


@pytest.mark.parametrize("bomb", [BOMB, THREADS], ids=["processes", "threads"])
def test_a_fork_bomb_as_nobody_leaves_root_its_commands(agent: AgentProcess, sandbox: str, bomb: str) -> None:
    assert run(agent, sandbox, f"python3 -c {shlex.quote(bomb)} >/dev/null 2>&1 &", "nobody")[0] == 0
    wait_full(agent, sandbox)
    # Root's commands still start, and one of them ends the bomb.
    assert run(agent, sandbox, "echo alive") == (0, "alive\n")
    assert run(agent, sandbox, "kill -9 -1; echo killed") == (0, "killed\n")
    deadline = time.monotonic() + 60
    while (got := run(agent, sandbox, "echo back", "nobody")) != (0, "back\n"):
        assert time.monotonic() < deadline, got  # the killed sleepers are reaped by the guest
        time.sleep(0.2)
