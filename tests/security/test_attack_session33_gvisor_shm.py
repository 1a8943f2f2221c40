"""Session 33's attack on SysV shared memory in a gVisor sandbox, from inside a 128 MiB sandbox
as ``nobody``: make segments, fill them, detach, exit, and leave them to the sandbox.

runc and crun sandboxes set ``kernel.shm_rmid_forced`` (a segment goes once nothing is attached
to it); runsc ignores it, so in a gVisor sandbox a segment outlived its maker, and no kill freed
it. Before: once the segments passed the tenant's limit (here 26 of 8 MiB in a 128 MiB sandbox,
208 MiB against a host cgroup of 224), the guest's memory watch, which can only kill processes,
killed the filler (exit 137: it held none of them, but was the largest process), and the
segments stayed. Now the watch removes the segments nothing is attached to
(guest_agent/shm_orphans.py; root inside has CAP_IPC_OWNER under gVisor to read their attach
counts), as Linux would have: the filler makes all 26, what is left stays within the limit,
commands run, and a segment still attached is kept.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator

import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from tests.security.test_attack_session8_memwatch import cgroup, sh
from tests.security.test_attack_session16_gvisor import HOST_LIMIT, MEMORY_MB
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

MIB = 1 << 20
SEGMENTS, EACH_MB = 26, 8  # 208 MiB: past the tenant's 128, near the host cgroup's 224

# Each segment made, attached, every page written, detached; the maker exits. Prints how many
# segments it made. (A segment's memory is the Sentry's: charged to the host cgroup.)
FILL_SCRIPT = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
made = 0
for _ in range({segments}):
    shmid = libc.shmget(0, {each_mb} << 20, 0o1000 | 0o600)
    if shmid < 0:
        break
    addr = libc.shmat(shmid, None, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        break
    ctypes.memset(addr, 1, {each_mb} << 20)
    libc.shmdt(ctypes.c_void_p(addr))
    made += 1
print(made)
"""
FILL = FILL_SCRIPT.format(segments=SEGMENTS, each_mb=EACH_MB)
ONE_LEFT = FILL_SCRIPT.format(segments=1, each_mb=1)  # one small segment left behind

# The pages of every segment left in the sandbox (SHM_INFO's shm_tot), then the segments' count.
LEFT = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(256)
assert libc.shmctl(0, 14, buf) >= 0
print(int.from_bytes(buf.raw[8:16], "little"))
"""

# A segment kept attached by a process that sleeps: nothing removes it.
HELD = f"""
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget(0, {EACH_MB} << 20, 0o1000 | 0o600)
addr = libc.shmat(shmid, None, 0)
ctypes.memset(addr, 1, {EACH_MB} << 20)
print(shmid, flush=True)
time.sleep(30)
"""


# The worker's shared agent (tests/harness/shared_agent.py): the module only creates and
# destroys sandboxes of its own, and reads only their cgroups and answers.
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


def py(code: str) -> str:
    return "python3 -c " + shlex.quote(code)


def left_pages(agent: AgentProcess, sandbox: str) -> int:
    return int(sh(agent, sandbox, py(LEFT)).stdout.split()[0])


def _sweeping(agent: AgentProcess, sandbox: str) -> None:
    """Once a segment left behind is gone, the guest's sweeping thread runs (it starts
    ``shm_orphans.FIRST_AFTER`` seconds after the guest; before, a kill goes ahead unswept)."""
    assert sh(agent, sandbox, py(ONE_LEFT)).exit_code == 0
    deadline = time.monotonic() + 60
    while left_pages(agent, sandbox):
        assert time.monotonic() < deadline, "no sweep removed the segment left behind in 60 s"
        time.sleep(0.5)


def test_segments_nothing_holds_go_and_the_tenant_keeps_its_sandbox(agent: AgentProcess) -> None:
    sandbox = agent.create(memory_mb=MEMORY_MB, runtime="gvisor").sandbox_id
    try:
        _sweeping(agent, sandbox)
        filled = sh(agent, sandbox, py(FILL), timeout=60)
        assert filled.exit_code == 0, filled
        assert int(filled.stdout.split()[0]) == SEGMENTS  # all made: the sweep took the old ones
        # Left behind: at most what the tenant's limit allows (before: all 208 MiB).
        assert left_pages(agent, sandbox) * 4096 <= MEMORY_MB * MIB
        # The tenant's commands run (before: each one killed as the largest process).
        for _ in range(3):
            res = sh(agent, sandbox, "echo ok")
            assert (res.exit_code, res.stdout.strip()) == (0, b"ok"), res
        peak = int((cgroup(sandbox) / "memory.max_usage_in_bytes").read_text())
        assert peak < HOST_LIMIT, peak
    finally:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sandbox), timeout=120)


def test_a_segment_still_attached_is_kept(agent: AgentProcess) -> None:
    sandbox = agent.create(memory_mb=MEMORY_MB, runtime="gvisor").sandbox_id
    try:
        holder = sh(agent, sandbox, py(HELD) + " & sleep 3; " + py(LEFT), timeout=60)
        assert holder.exit_code == 0, holder
        shmid, pages = (int(v) for v in holder.stdout.split())
        assert shmid > 0 and pages * 4096 == EACH_MB * MIB  # kept past the sweeps of 3 s
    finally:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sandbox), timeout=120)
