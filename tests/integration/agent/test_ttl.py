"""The TTL reaper and PauseAll, with the agent's clock moved instead of sleeping."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from tests.harness.agent import AgentProcess
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc

pytestmark = pytest.mark.root


def _reported(s: pb_grpc.HostAgentStub) -> list[str]:
    """The auto-paused sandboxes the agent reports first (the reaper runs every 2 s, a freeze
    under load may take a while)."""
    reported: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not reported:
        reported += s.ListSandboxes(pb.ListSandboxesRequest()).auto_paused_sandbox_ids
        time.sleep(0.3)
    return reported


def test_idle_sandbox_is_auto_paused_and_reported_once(agent: AgentProcess) -> None:
    s = agent.stub
    # Timeouts far longer than the test's real duration: busy, touched at +300 s and looked at
    # up to a minute or two later on a loaded machine, must stay well inside its timeout.
    idle = agent.create(timeout_sec=600)
    busy = agent.create(timeout_sec=600)
    forever = agent.create(timeout_sec=0)
    try:
        s.ListSandboxes(pb.ListSandboxesRequest())  # drain earlier reports
        agent.set_clock_offset(300)
        s.PingSandbox(pb.PingSandboxRequest(sandbox_id=busy.sandbox_id))  # activity at +300 s
        agent.set_clock_offset(610)  # idle: 610 s > 600; busy: 310 s
        assert _reported(s) == [idle.sandbox_id]
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
        # Runs until told to stop (not a fixed time a loaded machine could outlast).
        long_cmd = "touch /tmp/started; while [ ! -e /tmp/stop ]; do sleep 0.05; done"
        runner = threading.Thread(
            target=lambda: result.append(agent.exec(sb.sandbox_id, "sh", "-c", long_cmd))
        )
        runner.start()
        # Under way for sure before the clock moves (the probe's own end is activity "now").
        deadline = time.monotonic() + 60
        while agent.exec(sb.sandbox_id, "test", "-e", "/tmp/started").exit_code != 0:
            assert time.monotonic() < deadline, "the long command never started"
            time.sleep(0.1)
        agent.set_clock_offset(300)  # long past the timeout since the command started
        time.sleep(2.5)  # at least one reaper round while it runs
        status = {x.sandbox_id: x.status for x in s.ListSandboxes(pb.ListSandboxesRequest()).sandboxes}
        assert status[sb.sandbox_id] == "running"
        assert runner.is_alive(), "the command ended before the reaper looked"
        agent.exec(sb.sandbox_id, "touch", "/tmp/stop")
        runner.join(60)
        assert result and result[0].exit_code == 0
        # Idle from the command's end on: paused once the timeout has passed since then.
        agent.set_clock_offset(400)
        assert _reported(s) == [sb.sandbox_id]
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
