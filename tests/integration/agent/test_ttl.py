"""The TTL reaper and PauseAll, with the agent's clock moved instead of sleeping."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from tests.harness.agent import AgentProcess
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root


def test_idle_sandbox_is_auto_paused_and_reported_once(agent: AgentProcess) -> None:
    s = agent.stub
    idle = agent.create(timeout_sec=60)
    busy = agent.create(timeout_sec=60)
    forever = agent.create(timeout_sec=0)
    try:
        s.ListSandboxes(pb.ListSandboxesRequest())  # drain earlier reports
        agent.set_clock_offset(45)
        s.PingSandbox(pb.PingSandboxRequest(sandbox_id=busy.sandbox_id))  # activity at +45 s
        agent.set_clock_offset(90)  # idle: 90 s > 60; busy: 45 s
        reported: list[str] = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and not reported:
            reported += s.ListSandboxes(pb.ListSandboxesRequest()).auto_paused_sandbox_ids
            time.sleep(0.3)
        assert reported == [idle.sandbox_id]
        time.sleep(2.5)  # at least one more reaper round
        listed = s.ListSandboxes(pb.ListSandboxesRequest())
        assert list(listed.auto_paused_sandbox_ids) == []  # reported once
        status = {x.sandbox_id: x.status for x in listed.sandboxes}
        assert status[idle.sandbox_id] == "paused"
        assert status[busy.sandbox_id] == "running"
        assert status[forever.sandbox_id] == "running"

        # resuming restarts the idle timer from "now"
        s.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=idle.sandbox_id, timeout_sec=60))
        time.sleep(2.5)
        assert list(s.ListSandboxes(pb.ListSandboxesRequest()).auto_paused_sandbox_ids) == []

        # PauseAll pauses every running sandbox and reports them the same way
        ids = set(s.PauseAll(pb.PauseAllRequest()).sandbox_ids)
        assert ids == {idle.sandbox_id, busy.sandbox_id, forever.sandbox_id}
        listed = s.ListSandboxes(pb.ListSandboxesRequest())
        assert set(listed.auto_paused_sandbox_ids) == ids
        assert {x.status for x in listed.sandboxes} == {"paused"}
    finally:
        agent.set_clock_offset(0)
        for x in (idle, busy, forever):
            s.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=x.sandbox_id))


def test_a_command_under_way_keeps_its_sandbox_running(agent: AgentProcess) -> None:
    """Activity is a command's start and end and everything in between: a long exec is not
    paused under its own feet by the reaper."""
    s = agent.stub
    sb = agent.create(timeout_sec=60)
    try:
        s.ListSandboxes(pb.ListSandboxesRequest())  # drain earlier reports
        result: list[pb.ExecResponse] = []
        runner = threading.Thread(target=lambda: result.append(agent.exec(sb.sandbox_id, "sleep", "4")))
        runner.start()
        time.sleep(0.5)
        agent.set_clock_offset(300)  # long past the timeout since the command started
        time.sleep(2.5)  # at least one reaper round while it runs
        status = {x.sandbox_id: x.status for x in s.ListSandboxes(pb.ListSandboxesRequest()).sandboxes}
        assert status[sb.sandbox_id] == "running"
        runner.join(30)
        assert result and result[0].exit_code == 0
        # Idle from the command's end on: paused once the timeout has passed since then.
        agent.set_clock_offset(400)
        deadline = time.monotonic() + 8
        reported: list[str] = []
        while time.monotonic() < deadline and not reported:
            reported += s.ListSandboxes(pb.ListSandboxesRequest()).auto_paused_sandbox_ids
            time.sleep(0.3)
        assert reported == [sb.sandbox_id]
    finally:
        agent.set_clock_offset(0)
        s.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb.sandbox_id))


def test_the_reaper_never_destroys_a_sandbox_paused_by_someone_else(agent: AgentProcess) -> None:
    """The reaper decides under the sandbox's lock: a pause that got there first is not a
    failed auto-pause (which would destroy the sandbox)."""
    s = agent.stub
    sb = agent.create(timeout_sec=3).sandbox_id
    try:
        # Slow freezes widen the window in which the reaper waits behind a user's pause.
        agent.exec(sb, "sh", "-c", "for i in $(seq 100); do (while :; do :; done) & done")
        end, step = time.monotonic() + 10, 0
        while time.monotonic() < end:
            step += 1
            agent.set_clock_offset(10 * step)  # idle again for the reaper, every round
            for call, req in (
                (s.PauseSandbox, pb.PauseSandboxRequest(sandbox_id=sb)),
                (s.ResumeSandbox, pb.ResumeSandboxRequest(sandbox_id=sb, timeout_sec=-1)),
            ):
                try:
                    call(req, timeout=30)
                except grpc.RpcError as e:  # the reaper paused it first: fine
                    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
        assert "auto_pause_failed" not in agent.log_path.read_text()
        assert sb in {x.sandbox_id for x in s.ListSandboxes(pb.ListSandboxesRequest()).sandboxes}
    finally:
        agent.set_clock_offset(0)
        s.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb))
