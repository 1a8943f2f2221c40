"""The kernel's cgroup ``favordynmods`` flag kept set while the agent runs (agent/favor_watch.py).

The agent sets the flag at start; a later plain ``cgroup2`` mount by any program clears it
host-wide, and every command's move into ``cmds`` then waits an RCU grace period. A real agent
(looking every heartbeat interval, 1 s here) must set it again, log it and count it.

Serial: the flag is the host's, and while it is off every other test's commands start slower.
Other agents on this machine restore it too (each watches it): a round whose restore another
agent won is cleared again, until this agent's counter moves. Whatever happens, the flag is
left set.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.agent import AgentProcess
from tests.harness.machine import free_port
from warren.agent.runtime import cmds_cgroup

pytestmark = [pytest.mark.root, pytest.mark.serial]

GAUGE = "warren_agent_cgroup_favordynmods"
RESTORES = "warren_agent_cgroup_favordynmods_restores_total"
ROUNDS = 20  # clears until this agent (not another) is the one that restored it


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def clear_flag(scratch: Path) -> None:
    """A cgroup2 mount without the option, in the host's cgroup namespace: clears the flag."""
    scratch.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "cgroup2", "none", str(scratch)], check=True)
    subprocess.run(["umount", str(scratch)], check=True)
    scratch.rmdir()


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(url, timeout=10).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.fixture
def leave_it_set(agent_root: Path) -> Iterator[Path]:
    """The test's scratch dir; afterwards the flag is set again, whatever the test did."""
    try:
        yield agent_root
    finally:
        if not cmds_cgroup._favored():
            cmds_cgroup.favor_dynamic_moves(agent_root / "cg2-restore")
        assert cmds_cgroup._favored()


def metered(root: Path, **env: str) -> tuple[AgentProcess, str]:
    port = free_port()
    env = {"WARREN_HEARTBEAT_INTERVAL_S": "1", "WARREN_AGENT_METRICS_LISTEN": f"127.0.0.1:{port}", **env}
    return AgentProcess.standalone(root, env=env).start(), f"http://127.0.0.1:{port}/metrics"


def test_a_cleared_flag_is_set_again_logged_and_counted(leave_it_set: Path) -> None:
    agent, url = metered(leave_it_set / "watching")
    try:
        wait_for("the agent watching the flag", lambda: scrape(url).get(GAUGE) == 1.0)
        assert scrape(url)[RESTORES] == 0.0
        for _ in range(ROUNDS):
            clear_flag(leave_it_set / "cg2-clear")
            wait_for("the flag set again", cmds_cgroup._favored)
            if scrape(url)[RESTORES] >= 1.0:
                break
        m = scrape(url)
        assert m[RESTORES] >= 1.0 and m[GAUGE] == 1.0, m
        lines = agent.log_path.read_text(errors="replace").splitlines()
        restored = [ln for ln in lines if "event=cgroup_favordynmods_restored" in ln]
        assert len(restored) == int(m[RESTORES]), restored  # one line per restore
        assert " WARNING warren.agent event=cgroup_favordynmods_restored" in restored[0], restored[0]
        assert "event=cgroup_favordynmods_lost" not in "\n".join(lines)
    finally:
        agent.finish()


def test_with_the_setting_off_the_agent_leaves_the_flag_alone(leave_it_set: Path) -> None:
    agent, url = metered(leave_it_set / "off", WARREN_AGENT_CGROUP_FAVOR_DYNMODS="false")
    try:
        m = scrape(url)
        assert (m[GAUGE], m[RESTORES]) == (0.0, 0.0), m
        assert "event=cgroup_favordynmods" not in agent.log_path.read_text(errors="replace")
    finally:
        agent.finish()
