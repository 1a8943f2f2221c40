"""The same agent with `--runtime crun` (its commands run where the hybrid cgroup2 mount is
moved away, runtime/oci_spawner.py) and, for comparison, `--runtime runc`."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.harness.agent import AgentProcess
from tests.harness.leaks import wait_no_leaks
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root


@pytest.mark.parametrize("runtime", ["crun", "runc"])
def test_create_exec_pause_resume_readopt_destroy(agent_root: Path, runtime: str) -> None:
    agent = AgentProcess.standalone(agent_root / runtime, runtime=runtime).start()
    try:
        r = agent.create(memory_mb=128)
        sb = r.sandbox_id
        inner, base = agent.exec(sb, "cat", "/proc/self/uid_map").stdout.split()[:2]
        assert inner == b"0" and int(base) > 1_000_000_000  # the slot's own range, id-mapped lowers
        agent.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=sb))
        assert {
            s.sandbox_id: s.status for s in agent.stub.ListSandboxes(pb.ListSandboxesRequest()).sandboxes
        } == {sb: "paused"}
        agent.stub.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=sb))
        assert agent.py(sb, "print(6 * 7)").stdout == b"42\n"
        # re-adoption works the same with either runtime's state
        agent.kill9()
        agent.start()
        assert agent.exec(sb, "true").exit_code == 0
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb))
        time.sleep(0.1)
        assert wait_no_leaks(agent, sb, r.host_ip) == []
    finally:
        agent.finish()
