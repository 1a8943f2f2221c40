"""Session 17 (W2-D): ``nobody`` fills ``cmds`` with memory no OOM kill frees; the owner's next
upload then took the guest.

An upload's pages are allocated by the guest's allocator, a child in ``cmds`` (guest_agent/
alloc.py), so that the guest writes into pages charged to the commands' room. When the allocator
did not answer (killed, or stopped past its 10 s) the guest wrote the file itself, charged to
its own cgroup. ``nobody`` (any untrusted code in the sandbox) fills ``cmds`` to its limit with
SysV message queues (kernel memory of the IPC namespace: no process holds it, no OOM kill frees
it, and the disk's size does not bound it: ~14 000 queues, 229 MiB of a 256 MiB sandbox's 232).
The owner uploads 40 MiB: the allocator's ``fallocate`` has the commands' OOM killer take the
allocator itself, the guest falls back to writing the pages, the sandbox's own cgroup reaches
its limit with no command left to kill, and its OOM killer takes the guest ("its container
exited", 0.5 s into the upload).

Since the sandbox's IPC namespace bounds its queues (session 17, runtime/kernel_limits.py;
test_attack_session17_ipc_memory) the filler no longer fills ``cmds``: this checks that it
stays bounded and the upload, the guest and the owner's ipcrm all still work.

Expected (fixed, alloc.py / files.py): an allocator that does not answer is started again and
asked once more; if that one does not answer either, the upload fails (``no_space``: the
commands' room is full) instead of being charged to the guest. The guest survives, and once
the queues are removed (by their owner), the next upload works.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.agent.runtime import cmds_cgroup
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

# As nobody: SysV message queues of 8 KiB messages until the kernel (or the OOM killer) stops it.
QUEUES = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
class Msg(ctypes.Structure):
    _fields_ = [("type", ctypes.c_long), ("text", ctypes.c_char * 8192)]
m = Msg(1, b"x" * 8192)
while True:
    q = libc.msgget(0, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
    if q < 0:
        break
    n = 0
    while libc.msgsnd(q, ctypes.byref(m), 8192, 0o4000) == 0:  # IPC_NOWAIT
        n += 1
    if n == 0:
        break
"""


# One runtime: what is bounded here is the guest's own (the same code under runc and crun); how
# commands reach cmds under each runtime is test_attack_session17_guest_cgroup's and _cmds_escape's.
@pytest.fixture(scope="module", params=["runc"])
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, request.param) as a:
        yield a


def usage(sb: str, sub: str = "") -> int:
    d = cmds_cgroup.sandbox_dir("memory", sb)
    return int(((d / sub) if sub else d).joinpath("memory.usage_in_bytes").read_text())


def upload(agent: AgentProcess, sb: str, path: str, size: int) -> grpc.StatusCode | None:
    try:
        agent.stub.WriteFile(pb.WriteFileRequest(sandbox_id=sb, path=path, content=b"u" * size), timeout=120)
    except grpc.RpcError as e:
        return e.code()  # type: ignore[attr-defined,no-any-return]
    return None


def test_a_full_cmds_fails_the_upload_not_the_guest(agent: AgentProcess) -> None:
    sb = agent.create(memory_mb=256).sandbox_id
    try:
        assert upload(agent, sb, "/tmp/small", 5000) is None  # the allocator is up
        agent.exec(sb, "python3", "-c", QUEUES, user="nobody", timeout_sec=120)
        # Before the IPC namespace's limits (runtime/kernel_limits.py) this filled cmds (229 of
        # 232 MiB); now 8 queues at most. The allocator's fallback when it does not answer stays
        # covered by test_attack_session17_guest_cgroup (root kills or stops it).
        full = usage(sb, "cmds")
        assert full < 8 << 20, full >> 20
        code = upload(agent, sb, "/tmp/big", 40 << 20)
        # The upload may fail for want of room; the guest must not be what pays for it.
        assert code != grpc.StatusCode.FAILED_PRECONDITION, "the guest was killed"
        res = agent.exec(sb, "sh", "-c", "echo ok", timeout_sec=60)
        assert res.stdout == b"ok\n", res
        guest = usage(sb) - usage(sb, "cmds")
        assert guest < cmds_cgroup.MEMORY_RESERVE, guest >> 20
        # The queues cleared (as their owner: root here has no CAP_IPC_OWNER), uploads work again.
        res = agent.exec(sb, "ipcrm", "--all=msg", user="nobody", timeout_sec=60)
        assert res.exit_code == 0, res
        assert upload(agent, sb, "/tmp/big", 40 << 20) is None
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)
