"""Create admission: an agent runs at most ``WARREN_AGENT_CREATE_CONCURRENCY`` creates at once and
the rest wait their turn (docs/agent.md), so a burst gets its first sandboxes early instead of
every create sharing the CPU until the end."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import grpc

from warren import ids
from warren.rpc import hostagent_pb2 as pb

from .agentlib import Agent

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
    agent = Agent(agent_root / "limited", env={"WARREN_AGENT_CREATE_CONCURRENCY": "1"}).start()
    try:
        assert "create_concurrency=1" in agent.log_tail(200)
        sids = [ids.sandbox_id(ids.new_uuid()) for _ in range(3)]
        with ThreadPoolExecutor(len(sids)) as pool:
            list(pool.map(lambda s: agent.create(sandbox_id=s), sids))
        created = _created(agent.log_path.read_text(), set(sids))
        assert set(created) == set(sids)
        spans = sorted((a, d) for a, d, _ in created.values())
        # One at a time: each create starts after the previous one finished (the log's clock
        # has millisecond resolution).
        for (_, prev_done), (start, _) in itertools.pairwise(spans):
            assert start >= prev_done - 0.002, spans
        # All three were sent together, so two of them waited for a turn.
        assert sorted(q for _, _, q in created.values())[1] > 10, created
    finally:
        agent.destroy_all()
        agent.stop()


def test_default_limit_is_two_per_usable_cpu(agent: Agent) -> None:
    assert f"create_concurrency={2 * len(os.sched_getaffinity(0))}" in agent.log_path.read_text()


def test_terminate_leaves_no_sandbox_from_creates_still_queued(agent_root: Path) -> None:
    """Terminate (the host was force-deleted) while creates wait for their turn: none of them
    may come up after the agent destroyed everything, or it would run on, unrecorded."""
    agent = Agent(agent_root / "terminated", env={"WARREN_AGENT_CREATE_CONCURRENCY": "1"}).start()
    sids = [ids.sandbox_id(ids.new_uuid()) for _ in range(4)]

    def create(sid: str) -> None:
        with contextlib.suppress(grpc.RpcError):  # cut off by the shutdown: fine
            agent.create(sandbox_id=sid)

    try:
        with ThreadPoolExecutor(len(sids)) as pool:
            futures = [pool.submit(create, s) for s in sids]
            # Terminate once the first create is under way and the others are queued.
            deadline = time.monotonic() + 30
            while "event=sandbox_created" not in agent.log_path.read_text():
                assert time.monotonic() < deadline, agent.log_tail()
                time.sleep(0.005)
            agent.stub.Terminate(pb.TerminateRequest(), timeout=30)
            for f in futures:
                f.result()
        assert agent.proc is not None
        assert agent.proc.wait(60) == 0
        log = agent.log_path.read_text()
        assert "event=agent_stopped" in log
        left = [p.name for p in (agent.data_dir / "sandboxes").iterdir()]
        assert left == [], left
        containers = subprocess.run(
            ["runc", "--root", str(agent.data_dir / "runc"), "list", "-q"], capture_output=True, text=True
        ).stdout.split()
        assert not set(containers) & set(sids), containers
        mounts = Path("/proc/self/mountinfo").read_text()
        assert not [line for line in mounts.splitlines() if any(s in line for s in sids)]
    finally:
        agent.stop()
