"""Session 31's attack on the gVisor memory wall's hold, from inside a 128 MiB sandbox as
``nobody``: be at the host cgroup's limit when the sandbox is paused.

Since session 31 the agent holds the kernel's OOM killer back at the host cgroup's limit
(``oom_kill_disable``, runtime/gvisor_memwake.py) and hands a wait back to the kernel after
``WALL_WAIT``, but only while it watches the sandbox: a checkpoint (the pause of a gVisor
sandbox to disk) and a delete stop watching first. The tenant fills its ``/tmp`` (gVisor's own
tmpfs: its pages are the Sentry's memory, charged to the host cgroup, and the guest's kills free
none of them) to just under the limit; the checkpoint's own allocation then met the limit, a
thread of the Sentry waited there with nothing to end the wait, and ``runsc checkpoint`` took
the agent's whole 60 s bound on a runsc command (the pause then failed, the sandbox lost) and
the destroy after it 60 s more, failing too (INTERNAL). The agent pauses idle sandboxes, and all
of a host's on a lost CP, one after another, so each such sandbox held every other tenant's
pauses on the host for two minutes. Now a sandbox no longer watched is no longer held: the
kernel ends the Sentry, as it did before the hold, and the pause answers at once.

The memory: SysV shared memory segments, kept attached by a process that sleeps (the Sentry's
memory, charged to the host cgroup; under the tenant's limit, so the guest kills nothing).
Session 31 used files in ``/tmp``, gVisor's own tmpfs; since session 32 that has a size
(test_attack_session32_gvisor_tmp.py). Session 32 used segments nothing was attached to; since
session 33 the guest removes those (test_attack_session33_gvisor_shm.py). So the test brings the
host cgroup's limit down to just above what the segments reached (:data:`WALL_ROOM`), the
state the attack is after, and pauses.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from tests.security.test_attack_session8_memwatch import FORCED_CHARGE, cgroup
from tests.security.test_attack_session16_gvisor import HOST_LIMIT, MEMORY_MB
from warren.agent.runtime.cmds_oom import read_control
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

MIB = 1 << 20
HELD_MB = 80  # of segments, attached: under the tenant's 128 MiB with the holder's own memory
# Makes argv[1] MiB of segments, 4 MiB each, touched and kept attached; prints "held", sleeps.
SHM = r"""
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
left = int(sys.argv[1])
while left > 0:
    size = min(left, 4) << 20
    at = libc.shmat(libc.shmget(0, size, 0o1600), None, 0)
    ctypes.memset(at, 1, size)
    left -= 4
print("held", flush=True)
time.sleep(120)
"""
HOLD = "python3 -c " + shlex.quote(SHM) + f" {HELD_MB}"
# The host cgroup's limit, brought down to this much above the fill: less than a checkpoint needs.
WALL_ROOM = 4 * MIB
# Below the agent's 60 s bound on a runsc command, which the pause took in full before.
RPC_DEADLINE = 45


# The worker's shared agent (tests/harness/shared_agent.py): the module only creates and
# destroys sandboxes of its own, and reads only their cgroups and answers.
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


def usage(sandbox_id: str) -> int:
    return int((cgroup(sandbox_id) / "memory.usage_in_bytes").read_text())


def hold_segments(agent: AgentProcess, sandbox_id: str) -> tuple[grpc.Future, int]:
    """:data:`HELD_MB` of segments made and kept attached by ``nobody``'s process (its exec
    runs on); that exec's call and the usage once they are all made."""
    target = usage(sandbox_id) + (HELD_MB - 8) * MIB
    req = pb.ExecRequest(
        sandbox_id=sandbox_id, cmd="/bin/sh", args=["-c", HOLD], user="nobody", timeout_sec=120
    )
    call = agent.stub.Exec.future(req, timeout=180)
    deadline = time.monotonic() + 60
    while usage(sandbox_id) < target and time.monotonic() < deadline and not call.done():
        time.sleep(0.1)
    time.sleep(0.5)  # the last segment's pages
    return call, usage(sandbox_id)


def test_a_pause_at_the_wall_answers_and_leaves_nothing_waiting(agent: AgentProcess) -> None:
    sandbox = agent.create(memory_mb=MEMORY_MB, runtime="gvisor").sandbox_id
    cg = cgroup(sandbox)
    try:
        start = usage(sandbox)
        holder, reached = hold_segments(agent, sandbox)
        assert not holder.done(), holder.result()  # the holder lives: nothing was killed
        assert start + 64 * MIB <= reached <= HOST_LIMIT + FORCED_CHARGE, (start, reached)
        (cg / "memory.limit_in_bytes").write_text(str(usage(sandbox) + WALL_ROOM))
        try:
            agent.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=sandbox), timeout=RPC_DEADLINE)
        except grpc.RpcError as e:
            # The checkpoint met the limit and the kernel ended the Sentry: the sandbox is lost,
            # its own. Before: DEADLINE_EXCEEDED (the pause waited out the runsc bound).
            assert e.code() == grpc.StatusCode.INTERNAL, e  # type: ignore[attr-defined]
            assert "the sandbox is lost" in (e.details() or "")  # type: ignore[attr-defined]
        # Nothing of it still waits at the limit with no one to end the wait.
        if cg.exists():
            assert read_control(cg / "memory.oom_control")["under_oom"] == 0
        holder.cancel()
    finally:
        try:
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sandbox), timeout=RPC_DEADLINE)
        except grpc.RpcError as e:  # the agent removed the lost sandbox itself
            assert e.code() == grpc.StatusCode.NOT_FOUND, e  # type: ignore[attr-defined]
    assert not cg.exists()
