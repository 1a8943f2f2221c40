"""Session 17 (W2-D): root's metadata operations through the API charge the guest, not ``cmds``.

The guest makes root's directories and files itself (files.py: only another user's go through a
child in ``cmds``), so their inodes and dentries (~3.6 KiB a directory of a 246-character name)
are the guest's own memory, bounded only by the writable layer's inode count (docs/agent.md,
left open). As the attacker runs it, in a 128 MiB sandbox (9 728 inodes): the tenant first fills
what it can with memory no OOM kill frees, then makes directories through the API until the
inodes run out (9 714). Measured on this tree (runc): with 60 MiB of files, the guest's charge
reached 38 MiB (reserve 24) and it survived; with ``cmds`` full of ``nobody``'s SysV message
queues (104 MiB), the kernel reclaimed and the guest stayed at ~20 MiB and survived. Held: the
guest survives and the next command works; asserted so that a bigger per-inode cost or a larger
inode budget that lets the flood take the guest fails here.

The 60 MiB-of-files case is test_attack_session18_guest_metadata's mkdir flood (the same filler
and flood to the last inode, asserting the same survival and also the guest's peak under its
reserve); it ran here too, ~12 CPU-s of the suite for nothing more, and is left to that module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from tests.security.test_attack_session17_alloc_fallback import QUEUES
from warren.agent.runtime import cmds_cgroup
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

FILLERS = {
    "queues": ("nobody", f"python3 -c '{QUEUES}'"),
}


@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, "runc") as a:
        yield a


@pytest.mark.parametrize("filler", sorted(FILLERS))
def test_a_mkdir_flood_through_the_api_does_not_take_the_guest(agent: AgentProcess, filler: str) -> None:
    sb = agent.create(memory_mb=128).sandbox_id
    try:
        user, script = FILLERS[filler]
        agent.exec(sb, "sh", "-c", script, user=user, timeout_sec=120)  # the queues' ends killed
        made = 0
        while True:
            try:
                path = f"/tmp/{made:06d}" + "z" * 240
                agent.stub.MakeDir(pb.MakeDirRequest(sandbox_id=sb, path=path), timeout=60)
            except grpc.RpcError as e:
                # The inodes run out (RESOURCE_EXHAUSTED); never the guest ("container exited").
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e  # type: ignore[attr-defined]
                break
            made += 1
        assert made > 9000, made
        mem = cmds_cgroup.sandbox_dir("memory", sb)
        guest = int((mem / "memory.usage_in_bytes").read_text()) - int(
            (mem / "cmds/memory.usage_in_bytes").read_text()
        )
        print(f"{filler}: {made} directories, guest {guest >> 20} MiB")
        res = agent.exec(sb, "sh", "-c", "echo ok", timeout_sec=60)
        assert res.stdout == b"ok\n", res
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)
