"""Create admission: an agent runs at most ``WARREN_AGENT_CREATE_CONCURRENCY`` creates at once and
the rest wait their turn (docs/agent.md), so a burst gets its first sandboxes early instead of
every create sharing the CPU until the end."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import grpc

from tests.harness.agent import AgentProcess
from warren import ids
from warren.rpc import hostagent_pb2 as pb

# "2026-11-29 11:20:00,123 INFO warren.agent event=sandbox_created sandbox_id=… ms=61.2 queued_ms=0.4"
_CREATED = re.compile(
    r"^(\S+ \S+) INFO warren\.agent event=sandbox_created sandbox_id=(\S+) .* ms=([\d.]+) queued_ms=([\d.]+)$"
)


def _created(log: str, wanted: set[str]) -> dict[str, tuple[float, float, float]]:
    """sandbox id -> (admitted, done, queued ms), times in seconds from the log's clock."""
    out = {}
    for line in log.splitlines():
        m = _CREATED.match(line)
        if m and m.group(2) in wanted:
            done = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out[m.group(2)] = (done - float(m.group(3)) / 1000, done, float(m.group(4)))
    return out


def test_creates_past_the_limit_wait_their_turn(agent_root: Path) -> None:
    agent = AgentProcess.standalone(
        agent_root / "limited", env={"WARREN_AGENT_CREATE_CONCURRENCY": "1"}
    ).start()
    try:
        assert "create_concurrency=1" in agent.log_tail(200)
        waited = 0
        for _ in range(5):  # bursts, until one create reached the agent while another was built
            sids = [ids.sandbox_id(ids.new_uuid()) for _ in range(3)]
            with ThreadPoolExecutor(len(sids)) as pool:
                list(pool.map(lambda s: agent.create(sandbox_id=s), sids))
            created = _created(agent.log_path.read_text(), set(sids))
            assert set(created) == set(sids)
            spans = sorted(created.values())
            # One at a time: each create starts after the previous one finished (the log's clock
            # has millisecond resolution).
            for (_, prev_done, _), (start, _, _) in itertools.pairwise(spans):
                assert start >= prev_done - 0.002, spans
            # A create that reached the agent while the one before it was built waited its turn.
            # (Sent together, they need not arrive together: under CI's load the second once
            # came after the first was done, 60 ms later, and was built at once.)
            for (_, prev_done, _), (start, _, queued_ms) in itertools.pairwise(spans):
                if start - queued_ms / 1000 < prev_done - 0.002:
                    assert queued_ms > 0, spans
                    waited += 1
            if waited:
                break
        assert waited, "no create of five bursts reached the agent while another was built"
    finally:
        agent.finish()


def test_default_limit_is_two_per_usable_cpu(agent: AgentProcess) -> None:
    assert f"create_concurrency={2 * len(os.sched_getaffinity(0))}" in agent.log_path.read_text()


def _burst_with_one_under_way(
    agent: AgentProcess, n: int, then: Callable[[], object]
) -> list[grpc.StatusCode]:
    """Send ``n`` creates at once (the agent admits one at a time), call ``then`` while the first
    is under way and the rest are queued, and return each create's status code."""
    sids = [ids.sandbox_id(ids.new_uuid()) for _ in range(n)]

    def create(sid: str) -> grpc.StatusCode:
        try:
            agent.create(sandbox_id=sid)
        except grpc.RpcError as e:
            return e.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(create, s) for s in sids]

        # A create's directory appears when its turn comes; the others log that they wait.
        def all_arrived() -> bool:
            log = agent.log_path.read_text()
            queued = sum(f"event=create_queued sandbox_id={s}" in log for s in sids)
            return queued == n - 1 and any((agent.data_dir / "sandboxes").glob("sb-*"))

        deadline = time.monotonic() + 30
        while not all_arrived():
            assert time.monotonic() < deadline, agent.log_tail()
            time.sleep(0.002)
        then()
        return [f.result() for f in futures]


def test_terminate_leaves_no_sandbox_from_creates_under_way_or_queued(agent_root: Path) -> None:
    """Terminate (the host was force-deleted) while creates run and wait for their turn: the
    queued ones are refused, the one under way is destroyed with the rest; none may come up
    afterwards and run on, unrecorded."""
    agent = AgentProcess.standalone(
        agent_root / "terminated", env={"WARREN_AGENT_CREATE_CONCURRENCY": "1"}
    ).start()
    try:
        codes = _burst_with_one_under_way(
            agent, 4, lambda: agent.stub.Terminate(pb.TerminateRequest(), timeout=30)
        )
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION}, codes
        assert codes.count(grpc.StatusCode.FAILED_PRECONDITION) >= 2, codes
        assert agent.proc is not None
        assert agent.proc.wait(60) == 0
        assert "event=agent_stopped" in agent.log_path.read_text()
        left = [p.name for p in (agent.data_dir / "sandboxes").iterdir()]
        assert left == [], left
        containers = subprocess.run(
            ["runc", "--root", str(agent.data_dir / "runc"), "list", "-q"], capture_output=True, text=True
        ).stdout.split()
        assert containers == [], containers
        mounts = Path("/proc/self/mountinfo").read_text()
        assert str(agent.data_dir / "sandboxes") not in mounts
    finally:
        agent.stop()


def test_pause_all_also_pauses_creates_under_way_and_queued(agent_root: Path) -> None:
    """PauseAll (the agent lost its credentials) pauses every sandbox, including those whose
    create was running or waiting at that moment, and reports them all as auto-paused."""
    agent = AgentProcess.standalone(
        agent_root / "pause-all", env={"WARREN_AGENT_CREATE_CONCURRENCY": "1"}
    ).start()
    try:
        pause_all = lambda: agent.stub.PauseAll(pb.PauseAllRequest(), timeout=60)  # noqa: E731
        codes = _burst_with_one_under_way(agent, 3, pause_all)
        assert codes == [grpc.StatusCode.OK] * 3, codes
        listed = agent.stub.ListSandboxes(pb.ListSandboxesRequest(), timeout=30)
        assert {sb.status for sb in listed.sandboxes} == {"paused"}, listed
        assert sorted(listed.auto_paused_sandbox_ids) == sorted(sb.sandbox_id for sb in listed.sandboxes)
    finally:
        agent.finish()
