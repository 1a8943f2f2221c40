"""Session 21: in an OOM storm, a command's start was refused memory and nothing made room.

Session 20 had the agent take a storming sandbox's OOM kills over (agent/runtime/cmds_oom.py):
``oom_kill_disable`` on ``cmds``, and a kill by the agent when a process waits at the limit. A
charge the kernel makes inside a system call does not wait, though: it fails. A new program's
``execve`` makes such charges (its address space; its argument pages, refused as E2BIG), so in
a sandbox held at its limit a command could not start, and nothing was killed to let it. The
project's CI met it in session 15's attack (a fork bomb of ``sleep``\\ s, whose room between a
fork and an exec is left to chance): ``spawn /bin/sh: Argument list too long`` at the 22nd
command, a 502. With the kernel's killer the largest of the tenant's processes goes, and the
command starts.

Here, as the attacker runs it, without the chance: a storm; the sandbox's memory held in a
tmpfs file and, to the last page, in pipe buffers (charges inside ``write(2)``, which fail at the
limit rather than wait, so the agent kills nothing), some of them given back: room for the
command's child, not for its 900 KiB of arguments as well. Then commands, as root and as a user.
Measured before the fix: every command refused (E2BIG), runc and crun, 10 of 10. Fixed
(guest_agent/room.py): a start refused memory kills the largest process, as the kernel would
(here the holder of the pipes), and tries again.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.agent.runtime.bundle import CGROUP_PARENT
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

MEMORY_MB = 128
COMMANDS = 6
ARGS = ["y" * 100_000] * 9  # 900 KiB: the kernel copies them inside execve
GIVEN_BACK = 20  # pipes of 16 pages: ~1.3 MiB of room, with what the fill left
# Allocators, one after the other: the kernel's kills that make a storm (session 20).
STORM = "for i in $(seq 12); do python3 -c 'b = bytearray(512 << 20)'; done"
# Fills pipes a page at a time until the sandbox's limit refuses one, gives ``argv[1]`` pipes
# back, and keeps the rest, stopped (the sign it is done).
TOPPER = r"""
import os, signal, sys
page, pipes, full = b"x" * 4096, [], False
while not full:
    try:
        r, w = os.pipe()
    except OSError:
        break
    pipes.append((r, w))
    os.set_blocking(w, False)
    while True:
        try:
            os.write(w, page)
        except BlockingIOError:  # this pipe is full: the next one
            break
        except OSError:  # ENOMEM: the sandbox's limit
            full = True
            break
for r, w in pipes[: int(sys.argv[1])]:
    os.close(r)
    os.close(w)
os.kill(os.getpid(), signal.SIGSTOP)
"""


# The worker's shared agent (tests/harness/shared_agent.py): the module only creates and
# destroys sandboxes of its own, and reads only their cgroups and answers.
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


def cmds(sb: str) -> Path:
    return Path("/sys/fs/cgroup/memory") / CGROUP_PARENT / sb / "cmds"


def oom_kill_disable(sb: str) -> int:
    text = (cmds(sb) / "memory.oom_control").read_text()
    return int(dict(line.split() for line in text.splitlines())["oom_kill_disable"])


def room(sb: str) -> int:
    d = cmds(sb)
    return int((d / "memory.limit_in_bytes").read_text()) - int((d / "memory.usage_in_bytes").read_text())


def stopped(sb: str) -> bool:
    """Whether a process of the sandbox's commands is stopped (the topper, done)."""
    for pid in (cmds(sb) / "cgroup.procs").read_text().split():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "T":
                return True
    return False


@pytest.fixture(params=["runc", "crun"])
def held(agent: AgentProcess, request: pytest.FixtureRequest) -> Iterator[str]:
    """A sandbox in a storm, held near its limit by memory no fault asks for."""
    sb = agent.create(memory_mb=MEMORY_MB, runtime=request.param).sandbox_id
    try:
        agent.exec(sb, "sh", "-c", STORM, user="nobody", timeout_sec=120)
        assert oom_kill_disable(sb) == 1, agent.log_tail(40)  # the agent has the storm
        hold = f"head -c {min(room(sb) - (24 << 20), 48 << 20)} /dev/zero > /dev/shm/hold"  # disk: 76 MiB
        assert agent.exec(sb, "sh", "-c", hold, user="nobody").exit_code == 0
        top = f"python3 -c {shlex.quote(TOPPER)} {GIVEN_BACK} >/dev/null 2>&1 &"
        assert agent.exec(sb, "sh", "-c", top, user="nobody").exit_code == 0
        until = time.monotonic() + 60
        while not stopped(sb):  # the topper's fill, then its pipes given back
            assert time.monotonic() < until, room(sb)
            time.sleep(0.1)
        assert room(sb) < 4 << 20
        yield sb
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)


def test_commands_start_in_a_storming_sandbox_held_near_its_limit(agent: AgentProcess, held: str) -> None:
    sb = held
    before = room(sb)
    refused: list[tuple[int, str]] = []
    for i in range(COMMANDS):
        user = "nobody" if i % 2 else "root"
        try:
            res = agent.exec(sb, "true", *ARGS, user=user, timeout_sec=30)
        except grpc.RpcError as e:
            refused.append((i, str(e.details())))
            continue
        # -9: the agent's kill took the command's child at a fault before its exec, as the
        # kernel's would (it is the largest then: it has the guest's pages); session 15 too.
        assert res.exit_code in (0, -9, 137), (i, res, before)
    assert not refused, (len(refused), refused[:3], before)
    assert oom_kill_disable(sb) == 1  # the storm is still the agent's: the guest made the room
