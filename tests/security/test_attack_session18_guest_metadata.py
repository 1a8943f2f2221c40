"""Session 18: root's file operations through the API make their inodes in ``cmds``, not the guest.

The guest made root's directories and files itself (files.py: only another user's went through a
child in ``cmds``), so their inodes and dentries (~3.6 KiB a directory of a 246-character name)
were the guest's own memory (session 17, W2-D: test_attack_session17_guest_metadata, which held
only because the disk's inodes ran out first). As the attacker runs it, in a 128 MiB sandbox
(9 728 inodes): 60 MiB of files first, then one operation after another through the API, each
making an inode as root, until the inodes run out. Measured before the fix (runc): the guest's
own charge (the sandbox's cgroup less ``cmds``) reached 30-38 MiB for each of mkdir, upload and
move (which makes the destination's parent); its reserve is 24 MiB.

Fixed (guest_agent/rootops.py, alloc.py): root's mkdir, move, remove and an upload's temp file
and rename are made by the guest's long-lived child in ``cmds``; the guest's charge stays within
its reserve and the sandbox lives on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.agent.runtime import cmds_cgroup
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

LONG = "z" * 220  # long names (more kernel memory an inode) that leave room for a temp file's


# One runtime: what is bounded is the guest's own code (the same under runc and crun).
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, "runc") as a:
        yield a


def guest_charge(sb: str) -> int:
    mem = cmds_cgroup.sandbox_dir("memory", sb)
    total = int((mem / "memory.usage_in_bytes").read_text())
    return total - int((mem / "cmds/memory.usage_in_bytes").read_text())


def flood(agent: AgentProcess, sb: str, op: str) -> Callable[[int], None]:
    """The ``i``-th call of the flood: each makes one inode as root."""
    stub = agent.stub

    def mkdir(i: int) -> None:
        stub.MakeDir(pb.MakeDirRequest(sandbox_id=sb, path=f"/tmp/{i:06d}{LONG}"), timeout=60)

    def write(i: int) -> None:
        path = f"/tmp/{i:06d}{LONG}"
        stub.WriteFile(pb.WriteFileRequest(sandbox_id=sb, path=path, content=b""), timeout=60)

    def move(i: int) -> None:  # the file moves on, into a new directory each time
        src = f"/tmp/{i - 1:06d}{LONG}/f" if i else "/tmp/f"
        stub.Move(pb.MoveRequest(sandbox_id=sb, source=src, destination=f"/tmp/{i:06d}{LONG}/f"), timeout=60)

    return {"mkdir": mkdir, "write": write, "move": move}[op]


@pytest.mark.parametrize("op", ["mkdir", "write", "move"])
def test_a_root_metadata_flood_stays_out_of_the_guests_reserve(agent: AgentProcess, op: str) -> None:
    sb = agent.create(memory_mb=128).sandbox_id
    try:
        agent.exec(sb, "sh", "-c", "head -c 60M /dev/zero > /tmp/fill; touch /tmp/f", timeout_sec=120)
        call = flood(agent, sb, op)
        made = peak = 0
        while True:
            try:
                call(made)
            except grpc.RpcError as e:
                # The inodes (or the commands' memory) run out; never the guest itself.
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e  # type: ignore[attr-defined]
                break
            made += 1
            if made % 500 == 0:
                peak = max(peak, guest_charge(sb))
        peak = max(peak, guest_charge(sb))
        print(f"{op}: {made} inodes made, the guest's peak {peak >> 20} MiB")
        assert made > 9000, made
        assert agent.exec(sb, "sh", "-c", "echo ok", timeout_sec=60).stdout == b"ok\n"
        assert peak < cmds_cgroup.MEMORY_RESERVE, peak >> 20
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)
