"""Re-adoption: sandboxes outlive their agent, even a `kill -9`, and the next agent serves them.
A crash's leftovers (half-made sandboxes, containers that died meanwhile) are cleaned up."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness.agent import AgentProcess
from tests.harness.leaks import wait_no_leaks
from warren import ids
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root


def test_kill9_then_restart_readopts_running_and_paused(agent_root: Path) -> None:
    agent = AgentProcess.standalone(agent_root / "restart").start()
    made: list[pb.CreateSandboxResponse] = []
    try:
        made = [agent.create(memory_mb=128, internet=(i != 1)) for i in range(5)]
        for m in made:
            agent.exec(m.sandbox_id, "sh", "-c", f"echo {m.sandbox_id} > /root/me")
        paused = made[3].sandbox_id
        agent.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=paused))

        agent.kill9()
        # While no agent runs: one container dies, and a half-made sandbox appears (a crash
        # between mkdir/mount and the record).
        dead = made.pop()
        subprocess.run(
            ["runc", "--root", str(agent.data_dir / "runc"), "delete", "-f", dead.sandbox_id], check=True
        )
        _, half = ids.new_id(ids.Kind.SANDBOX)
        half_dir = agent.data_dir / "sandboxes" / half
        (half_dir / "disk").mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(half_dir / "disk")], check=True)

        agent.start()
        listed = {s.sandbox_id: s for s in agent.stub.ListSandboxes(pb.ListSandboxesRequest()).sandboxes}
        assert {k: v.status for k, v in listed.items()} == {
            **{m.sandbox_id: "running" for m in made[:3]},
            paused: "paused",
        }
        assert [listed[m.sandbox_id].host_ip for m in made] == [m.host_ip for m in made]
        assert listed[made[1].sandbox_id].internet is False
        for m in made[:3]:
            assert agent.exec(m.sandbox_id, "cat", "/root/me").stdout.strip() == m.sandbox_id.encode()
        agent.stub.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=paused))
        assert agent.exec(paused, "cat", "/root/me").stdout.strip() == paused.encode()
        assert wait_no_leaks(agent, dead.sandbox_id, dead.host_ip) == []
        assert not half_dir.exists()
        again = agent.create()
        made.append(again)

        # a graceful stop (SIGTERM) keeps every sandbox as well
        agent.stop()
        agent.start()
        assert len(agent.stub.ListSandboxes(pb.ListSandboxesRequest()).sandboxes) == 5
        assert agent.exec(again.sandbox_id, "true").exit_code == 0
    finally:
        agent.finish()
    for m in made:
        assert wait_no_leaks(agent, m.sandbox_id, m.host_ip) == []


def test_terminate_destroys_everything_and_stops(agent_root: Path) -> None:
    agent = AgentProcess.standalone(agent_root / "terminate").start()
    made = [agent.create(memory_mb=64) for _ in range(2)]
    agent.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=made[0].sandbox_id))
    agent.stub.Terminate(pb.TerminateRequest())
    assert agent.proc is not None
    assert agent.proc.wait(60) == 0
    for m in made:
        assert wait_no_leaks(agent, m.sandbox_id, m.host_ip) == []


def test_start_removes_the_temporary_dirs_of_interrupted_snapshot_writes(agent_root: Path) -> None:
    team = agent_root / "leftovers" / "data" / "templates" / "teams" / "00000000-0000-0000-0000-00000000000a"
    kept = team / "11111111-1111-1111-1111-111111111111"
    doomed = [team / f".{kept.name}.tmp-1a2b3c4d", team / f".{kept.name}.old-5e6f7a8b", team / ".x.del-0"]
    for d in (kept, *doomed):
        (d / "layers").mkdir(parents=True)
    agent = AgentProcess.standalone(agent_root / "leftovers").start()
    try:
        assert kept.is_dir()
        assert [d for d in doomed if d.exists()] == []
        assert "event=template_leftover_removed" in agent.log_path.read_text()
    finally:
        agent.stop()
