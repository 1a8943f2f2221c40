"""The TTL reaper and PauseAll, with the agent's clock moved instead of sleeping."""

from __future__ import annotations

import time

import pytest

from warren.rpc import hostagent_pb2 as pb

from .agentlib import Agent

pytestmark = pytest.mark.root


def test_idle_sandbox_is_auto_paused_and_reported_once(agent: Agent) -> None:
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
