"""The ``cmds`` cgroup (agent/runtime/cmds_cgroup.py) through a sandbox's life: its limits follow
the sandbox's (a cold create, a warm-pool claim growing or shrinking the memory), commands land
in it after a pause and resume, a snapshot (and in a sandbox made from it) and after the agent
restarts, and a destroy removes it."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.agent import AgentProcess
from warren.agent.runtime import cmds_cgroup
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

MIB = 1 << 20
GROUPS = "grep -E ':(memory|pids):' /proc/self/cgroup | cut -d: -f2- | sort"
IN_CMDS = b"memory:/cmds\npids:/cmds\n"


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def ready(agent: AgentProcess) -> int:
    r = agent.stub.SetWarmPool(pb.SetWarmPoolRequest(template="no-such-pool", size=0), timeout=60)
    return sum(p.ready for p in r.pools if p.template == "minimal")


def container_of(agent: AgentProcess, sb_id: str) -> str:
    p = agent.data_dir / "container-ids" / sb_id
    return p.read_text().strip() if p.exists() else sb_id


def limits(cid: str) -> dict[str, int]:
    mem = cmds_cgroup.sandbox_dir("memory", cid)
    pids = cmds_cgroup.sandbox_dir("pids", cid)
    return {
        "memory": int((mem / "memory.limit_in_bytes").read_text()),
        "memsw": int((mem / "memory.memsw.limit_in_bytes").read_text()),
        "cmds_memory": int((mem / "cmds/memory.limit_in_bytes").read_text()),
        "cmds_memsw": int((mem / "cmds/memory.memsw.limit_in_bytes").read_text()),
        "pids": int((pids / "pids.max").read_text()),
        "cmds_pids": int((pids / "cmds/pids.max").read_text()),
    }


def expected(memory_mb: int) -> dict[str, int]:
    cmds = memory_mb * MIB - min(cmds_cgroup.MEMORY_RESERVE, memory_mb * MIB // 4)
    return {"memory": memory_mb * MIB, "memsw": memory_mb * MIB, "cmds_memory": cmds,
            "cmds_memsw": cmds, "pids": 1024, "cmds_pids": 1024 - cmds_cgroup.PIDS_RESERVE}  # fmt: skip


def gone(cid: str) -> bool:
    return not any(cmds_cgroup.sandbox_dir(c, cid).exists() for c in cmds_cgroup.HIERARCHIES)


@pytest.fixture(scope="module")
def pooled(agent_root: Path) -> Iterator[AgentProcess]:
    a = AgentProcess.standalone(agent_root / "cmds", env={"WARREN_AGENT_WARM_POOL": "minimal=2"}).start()
    try:
        yield a
    finally:
        a.finish()


@pytest.mark.parametrize("memory_mb", [64, 256, 1024])
def test_claimed_and_cold_sandboxes_get_cmds_at_their_limits(pooled: AgentProcess, memory_mb: int) -> None:
    wait_for("the pool of 2", lambda: ready(pooled) == 2)
    r = pooled.create(memory_mb=memory_mb)
    cid = container_of(pooled, r.sandbox_id)
    try:
        assert cid.startswith("wp-")  # a claim: the member's 512 MB grown or shrunk
        assert limits(cid) == expected(memory_mb)
        assert pooled.exec(r.sandbox_id, "sh", "-c", GROUPS).stdout == IN_CMDS
    finally:
        pooled.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id), timeout=60)
    wait_for("its cgroups removed", lambda: gone(cid), 30)


def test_pause_resume_and_restart_keep_commands_in_cmds(pooled: AgentProcess) -> None:
    pooled.stub.SetWarmPool(pb.SetWarmPoolRequest(template="minimal", size=0), timeout=120)
    r = pooled.create(memory_mb=128)
    cid = container_of(pooled, r.sandbox_id)
    assert cid == r.sandbox_id  # a cold create
    assert limits(cid) == expected(128)
    pooled.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=r.sandbox_id))
    pooled.stub.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=r.sandbox_id, timeout_sec=-1))
    assert pooled.exec(r.sandbox_id, "sh", "-c", GROUPS).stdout == IN_CMDS
    pooled.kill9()
    pooled.start()  # re-adopted: its guest kept its descriptors, the cgroups their limits
    assert limits(cid) == expected(128)
    assert pooled.exec(r.sandbox_id, "sh", "-c", GROUPS, user="nobody").stdout == IN_CMDS
    pooled.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id), timeout=60)
    wait_for("its cgroups removed", lambda: gone(cid), 30)


def test_a_snapshot_and_its_sandbox_keep_commands_in_cmds(pooled: AgentProcess) -> None:
    team, tpl = (
        str(uuid.uuid5(uuid.NAMESPACE_URL, "cmds-team")),
        str(uuid.uuid5(uuid.NAMESPACE_URL, "cmds-tpl")),
    )
    r = pooled.create(memory_mb=256)
    cid = container_of(pooled, r.sandbox_id)
    pooled.stub.CreateSnapshot(
        pb.CreateSnapshotRequest(sandbox_id=r.sandbox_id, team_id=team, template_id=tpl)
    )
    pooled.stub.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=r.sandbox_id, timeout_sec=-1))
    assert pooled.exec(r.sandbox_id, "sh", "-c", GROUPS).stdout == IN_CMDS
    r2 = pooled.create(team_id=team, template_id=tpl, memory_mb=512)
    try:
        assert limits(container_of(pooled, r2.sandbox_id)) == expected(512)
        assert pooled.exec(r2.sandbox_id, "sh", "-c", GROUPS).stdout == IN_CMDS
    finally:
        for sb in (r.sandbox_id, r2.sandbox_id):
            pooled.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)
        pooled.stub.DeleteSnapshot(pb.DeleteSnapshotRequest(team_id=team, template_id=tpl))
    wait_for("its cgroups removed", lambda: gone(cid), 30)


def _clear_favordynmods(scratch: Path) -> None:
    """A cgroup2 mount without the option, in the host's cgroup namespace, clears the host's
    flag (the kernel applies a mount's root flags to the one cgroup2 root)."""
    scratch.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "cgroup2", "none", str(scratch)], check=True)
    subprocess.run(["umount", str(scratch)], check=True)
    scratch.rmdir()


# Serial: the flag is the host's, and every other agent running (each re-sets it every
# heartbeat, agent/favor_watch.py) would set it between this test's clear and its check.
@pytest.mark.serial
def test_an_agent_starting_makes_cgroup_moves_cheap(agent_root: Path) -> None:
    """Every command moves into cmds; without ``favordynmods`` each move waits an RCU grace
    period (a claimed sandbox's first exec 7.6 -> 19.9 ms p50). The agent sets the host's flag at
    start, says so in its log, and leaves it alone when it is already set."""
    _clear_favordynmods(agent_root / "cg2-clear")
    assert cmds_cgroup.favor_dynamic_moves(agent_root / "cg2-a") == ("on", "")
    assert cmds_cgroup.favor_dynamic_moves(agent_root / "cg2-a") == ("already", "")
    assert not (agent_root / "cg2-a").exists()
    _clear_favordynmods(agent_root / "cg2-clear")
    a = AgentProcess.standalone(agent_root / "favor").start()
    try:
        assert "event=cgroup_favordynmods state=on" in a.log_path.read_text(errors="replace"), a.log_tail()
    finally:
        a.finish()
    assert "favordynmods" in Path("/proc/self/mountinfo").read_text()
