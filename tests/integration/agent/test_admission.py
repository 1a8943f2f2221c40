"""Create admission: an agent runs at most ``WARREN_AGENT_CREATE_CONCURRENCY`` creates at once and
the rest wait their turn (docs/agent.md), so a burst gets its first sandboxes early instead of
every create sharing the CPU until the end."""

from __future__ import annotations

import itertools
import os
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from warren import ids

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
