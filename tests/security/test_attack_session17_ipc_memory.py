"""Session 17 (W2-D): SysV message queues, memory no OOM kill frees and no disk size bounds.

The writable layer is sized so that a full disk ends in ENOSPC and leaves 32 MB for processes
(docs/agent.md). SysV message queues are kernel memory of the sandbox's IPC namespace, charged
to ``cmds`` but held by no process: ``nobody`` makes ~14 000 queues of 8 KiB messages (the
namespace's defaults, msgmni 32 000 x msgmnb 16 KiB, allow ~500 MiB) until ``cmds`` reaches its
limit (229 MiB of a 256 MiB sandbox's 232). Its filler is OOM-killed; the queues stay. Root cannot
remove them (no CAP_IPC_OWNER in the sandbox); only their owner can. Meanwhile each command has
~3 MiB and what reclaim finds: ``python3`` runs, one that allocates 16 MiB is OOM-killed (a
full disk leaves 32 MB). Combined with any growth of the guest past its reserve it took the
guest (fixed for uploads: test_attack_session17_alloc_fallback).

Not fixed here: the bound belongs in the sandbox's IPC sysctls (runtime/bundle.py, kernel.msgmni
/ msgmnb, namespaced), not this task's file. xfail(strict) until a sandbox's queues are bounded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess, scratch_agent
from tests.security.test_attack_session17_alloc_fallback import QUEUES
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    with scratch_agent("attack17-ipc-memory", runtime="runc") as a:
        yield a


@pytest.mark.xfail(strict=True, reason="W2-D: SysV message queues are not bounded per sandbox")
def test_nobodys_message_queues_leave_room_for_a_command(agent: AgentProcess) -> None:
    sb = agent.create(memory_mb=256).sandbox_id
    try:
        agent.exec(sb, "python3", "-c", QUEUES, user="nobody", timeout_sec=120)
        # 16 MiB, half of what a full disk leaves processes (docs/agent.md: 32 MB).
        res = agent.exec(sb, "python3", "-c", "print(len(bytearray(16 << 20)))", timeout_sec=60)
        assert (res.exit_code, res.stdout) == (0, b"16777216\n"), res  # before: -9 (OOM-killed)
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)
