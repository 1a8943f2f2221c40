"""Session 17 (W2-D): SysV IPC objects, memory no OOM kill frees and no disk size bounds.

The writable layer is sized so that a full disk ends in ENOSPC and leaves 32 MB for processes
(docs/agent.md). SysV message queues and semaphore sets are kernel memory of the sandbox's IPC
namespace, charged to ``cmds`` but held by no process. With the namespace's defaults ``nobody``
made ~14 000 queues of 8 KiB messages (msgmni 32 000 x msgmnb 16 KiB allow ~500 MiB) until
``cmds`` reached its limit (229 MiB of a 256 MiB sandbox's 232); its filler was OOM-killed, the
queues stayed. Root cannot remove them (no CAP_IPC_OWNER in the sandbox); only their owner can.
A command allocating 16 MiB was then OOM-killed (before the fix: -9, on runc). Semaphore sets
did the same at 2 MiB a ``semget`` (32 000 semaphores of 64 bytes).

Fixed (kernel_limits.ipc_namespace_sysctls, set by the runtime): at most 8 queues of 8192 bytes
or messages (4 MiB of empty messages) and 4096 semaphores in 128 sets. Shared memory was already
bounded by ``kernel.shm_rmid_forced`` (a segment goes with its last process): kept here as a
guard, it passed before the fix too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from tests.security.test_attack_session17_alloc_fallback import QUEUES
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

# As nobody: queues of empty messages (64 bytes of kernel memory each, the costliest per byte).
EMPTY_MESSAGES = r"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
class Msg(ctypes.Structure):
    _fields_ = [("type", ctypes.c_long), ("text", ctypes.c_char * 8)]
m = Msg(1, b"")
queues = 0
while (q := libc.msgget(0, 0o1600)) >= 0:
    queues += 1
    while libc.msgsnd(q, ctypes.byref(m), 0, 0o4000) == 0:
        pass
print(queues)
"""

# As nobody: semaphore sets of the largest size the namespace allows, until refused.
SEMAPHORES = r"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
size = int(open("/proc/sys/kernel/sem").read().split()[0])
sets = 0
while size > 0:
    if libc.semget(0, size, 0o1600) >= 0:
        sets += 1
    else:
        size //= 2
print(sets)
"""

# As nobody: shared memory segments of 8 MiB, attached and touched, until refused or killed.
SHARED_MEMORY = r"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
while (s := libc.shmget(0, 8 << 20, 0o1600)) >= 0:
    p = libc.shmat(s, None, 0)
    if p in (None, ctypes.c_void_p(-1).value):
        break
    ctypes.memset(p, 1, 8 << 20)
"""

ALLOC_16M = "print(len(bytearray(16 << 20)))"


@pytest.fixture(scope="module", params=["runc", "crun"])
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, request.param) as a:
        yield a


@contextlib.contextmanager
def sandbox(agent: AgentProcess) -> Iterator[str]:
    sb = agent.create(memory_mb=256).sandbox_id
    try:
        yield sb
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)


def assert_room_for_a_command(agent: AgentProcess, sb: str) -> None:
    # 16 MiB, half of what a full disk leaves processes (docs/agent.md: 32 MB).
    res = agent.exec(sb, "python3", "-c", ALLOC_16M, timeout_sec=60)
    assert (res.exit_code, res.stdout) == (0, b"16777216\n"), res  # before: -9 (OOM-killed)


def test_nobodys_message_queues_leave_room_for_a_command(agent: AgentProcess) -> None:
    with sandbox(agent) as sb:
        agent.exec(sb, "python3", "-c", QUEUES, user="nobody", timeout_sec=120)
        res = agent.exec(sb, "python3", "-c", EMPTY_MESSAGES, user="nobody", timeout_sec=120)
        assert res.exit_code == 0, res
        assert int(res.stdout) == 0, res  # QUEUES took them all
        assert_room_for_a_command(agent, sb)


def test_nobodys_semaphores_leave_room_for_a_command(agent: AgentProcess) -> None:
    with sandbox(agent) as sb:
        res = agent.exec(sb, "python3", "-c", SEMAPHORES, user="nobody", timeout_sec=120)
        assert res.exit_code == 0, res  # before: -9, the filler OOM-killed at ~110 sets
        assert_room_for_a_command(agent, sb)


def test_nobodys_shared_memory_goes_with_its_processes(agent: AgentProcess) -> None:
    with sandbox(agent) as sb:
        agent.exec(sb, "python3", "-c", SHARED_MEMORY, user="nobody", timeout_sec=120)
        assert_room_for_a_command(agent, sb)
        res = agent.exec(sb, "ipcs", "-m", timeout_sec=60)
        assert b"nobody" not in res.stdout, res


def test_root_cannot_lift_the_limits(agent: AgentProcess) -> None:
    with sandbox(agent) as sb:
        res = agent.exec(sb, "sh", "-c", "echo 32000 > /proc/sys/kernel/msgmni", timeout_sec=60)
        assert res.exit_code != 0, res
        res = agent.exec(sb, "cat", "/proc/sys/kernel/msgmni", "/proc/sys/kernel/sem", timeout_sec=60)
        assert res.stdout.split() == [b"8", b"250", b"4096", b"500", b"128"], res
