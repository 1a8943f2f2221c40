"""A test process killed outright (SIGKILL of a pytest worker, a CI timeout) leaves nothing the
harness started for it: its CP process, its agents (standalone and registered) and their
helpers (ns_maker, oci_spawner, convert_server) end, and so do the agents' sandboxes, their
network slots and mounts (tests/harness/tether.py). Before, all of it stayed, holding ports,
sandboxes, netns, mounts and memory for the next run to trip over (session 29).

The killed process is ``killed_run.py``, which starts them the fixtures' way: from worker
threads that have ended before it is killed."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness.agent import AgentProcess
from tests.harness.machine import scratch_dir
from tests.harness.orphan import state

ROOT = Path(__file__).resolve().parents[3]
AGENT_IP = "127.0.0.29"
# The agents' way out (destroying two sandboxes) takes seconds; slack for a loaded machine.
GONE_WAIT_S = 60

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="real agents need root"),
    pytest.mark.timeout(600),  # a platform's start on a loaded machine, then GONE_WAIT_S
]


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command's name; [] once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _descendants(pids: list[int]) -> dict[int, str]:
    """``pids`` and every process below them, each with its start time (a pid reused by
    another process afterwards is not taken for it)."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        pid = int(stat.split("/")[2])
        if fields := _stat(pid):
            children.setdefault(int(fields[1]), []).append(pid)
    found, todo = {}, list(pids)
    while todo:
        pid = todo.pop()
        if fields := _stat(pid):
            found[pid] = fields[19]
        todo += children.get(pid, [])
    return found


def _running(pid: int, started_at: str) -> bool:
    """Whether the process ``pid`` that started at ``started_at`` is there, not a zombie."""
    fields = _stat(pid)
    return bool(fields) and fields[19] == started_at and fields[0] != "Z"


def _in_sandboxes(sandboxes: list[str]) -> set[int]:
    """Processes in a cgroup of one of ``sandboxes``."""
    found = set()
    for cgroup in glob.glob("/proc/[0-9]*/cgroup"):
        try:
            text = Path(cgroup).read_text()
        except OSError:
            continue
        if any(sb in text for sb in sandboxes):
            found.add(int(cgroup.split("/")[2]))
    return found


def _owner(slot: int) -> str | None:
    """The data dir of the agent that claims network slot ``slot`` (None: unclaimed)."""
    try:
        return Path(f"/run/warren/netslots/{slot}").read_text().split("\n", 1)[0]
    except FileNotFoundError:
        return None


def _slots_of(data_dirs: list[str]) -> set[int]:
    """The network slots the agents of ``data_dirs`` claim."""
    slots = (int(Path(claim).name) for claim in glob.glob("/run/warren/netslots/[0-9]*"))
    return {slot for slot in slots if _owner(slot) in data_dirs}


def _left(pids: dict[int, str], started: dict[str, Any], slots: set[int]) -> list[str]:
    """What is still there of what the killed process started."""
    left = [f"process {p}" for p, at in sorted(pids.items()) if _running(p, at)]
    left += [f"sandbox process {p}" for p in sorted(_in_sandboxes(started["sandboxes"]))]
    left += [f"slot claim {s}" for s in sorted(_slots_of(started["data_dirs"]))]
    # A freed slot may serve another worker's agent by now, its netns made anew.
    free = [s for s in sorted(slots) if _owner(s) in (None, *started["data_dirs"])]
    left += [f"netns warren-s{s}" for s in free if os.path.exists(f"/run/netns/warren-s{s}")]
    marks = (*started["data_dirs"], *started["sandboxes"])
    with open("/proc/self/mountinfo") as f:
        left += [f"mount {line.split()[4]}" for line in f if any(m in line for m in marks)]
    return left


def _clean_up(started: dict[str, Any]) -> None:
    """Whatever outlived the killed process (a failed run of this test): the CP killed, each
    agent stopped, then one more run on its data dir to re-adopt and destroy its sandboxes."""
    if state(started["cp"]) not in ("", "Z"):
        os.kill(started["cp"], signal.SIGKILL)
    for pid, data_dir in zip(started["agents"], started["data_dirs"], strict=True):
        if state(pid) in ("", "Z"):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while state(pid) not in ("", "Z") and time.monotonic() < deadline:
            time.sleep(0.1)
        if state(pid) not in ("", "Z"):
            os.killpg(pid, signal.SIGKILL)
            time.sleep(1)
        agent = AgentProcess(Path(data_dir), Path(data_dir).parent / "cleanup.log")
        agent.start()
        agent.finish()


def test_a_killed_test_process_leaves_nothing_the_harness_started(db_url: str) -> None:
    home = scratch_dir("orphans")
    with open(home / "run.err", "wb") as err:
        run = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.harness.killed_run", db_url, str(home), AGENT_IP],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
    started: dict[str, Any] | None = None
    try:
        assert run.stdout is not None
        line = run.stdout.readline()
        assert line, f"the run did not start its parts:\n{(home / 'run.err').read_text()[-4000:]}"
        started = json.loads(line)
        pids = _descendants([started["cp"], *started["agents"]])
        slots = _slots_of(started["data_dirs"])
        # Alive once their starting threads have ended: the CP, two agents and their helpers,
        # a sandbox on each (and the slots they hold).
        assert all(_running(p, pids.get(p, "")) for p in (started["cp"], *started["agents"]))
        assert len(pids) >= 3 + 2 * 2, pids  # each agent's ns_maker and oci_spawner at least
        assert len(_in_sandboxes(started["sandboxes"])) >= 2
        assert len(slots) >= 2, slots

        run.kill()
        run.wait()
        deadline = time.monotonic() + GONE_WAIT_S
        while (left := _left(pids, started, slots)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left == [], f"left behind by a killed test process: {left}"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if started is not None:
            _clean_up(started)
        shutil.rmtree(home, ignore_errors=True)
