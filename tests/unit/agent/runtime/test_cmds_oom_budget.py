"""The OOM storm watch's ranking budget (agent/runtime/cmds_oom.py, session 26): each kill ranks
every process of ``cmds`` by its ``statm`` (~8 us of the agent's CPU a process), so a storm in a
sandbox of a thousand processes bought ~8-14 ms of the agent a kill, as many kills as it could
make. No cgroup here: the listing is a file, the reads counted, no process pinned or killed."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from warren.agent.runtime import cmds_oom

OOMS = 100  # OOM events in the simulated second, each asking for a kill


def _reads_in_a_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: int) -> tuple[int, int]:
    """The ``statm`` reads and the rankings of :data:`OOMS` kills asked for within one second
    of a storm in a sandbox of ``processes``."""
    # pids past any pid_max: cmds_procs.pin finds none, so nothing is killed and no victim waits
    (tmp_path / "cgroup.procs").write_text("".join(f"{(1 << 23) + i}\n" for i in range(processes)))
    reads, rankings, now = [0], [0], [1000.0]

    def resident(pid: int) -> int:
        reads[0] += 1
        return 1

    real_pids = cmds_oom.cmds_procs.pids

    def pids(procs: Path) -> list[int]:
        rankings[0] += 1
        return real_pids(procs)

    monkeypatch.setattr(cmds_oom, "resident", resident)
    monkeypatch.setattr(cmds_oom.cmds_procs, "pids", pids)
    monkeypatch.setattr(cmds_oom, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    watch = cmds_oom.OomWatch(memory_root=tmp_path / "none")
    a = cmds_oom._Armed("sb-x", tmp_path, -1, storm=True)
    for _ in range(OOMS):
        watch._kill_one(a)
        now[0] += 1 / OOMS
    return reads[0], rankings[0]


def test_many_processes_read_within_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1000 processes, 100 kills asked for in a second: at most the second's rate, its burst
    and one ranking (before: every kill ranked all, 100 000 reads)."""
    reads, _ = _reads_in_a_second(tmp_path, monkeypatch, 1000)
    assert 1000 <= reads <= 3 * 2048, reads


def test_an_ordinary_storm_is_not_paced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A storm's loop of a few processes (session 20's: 14 kills a second) gets every kill."""
    reads, rankings = _reads_in_a_second(tmp_path, monkeypatch, 3)
    assert rankings == OOMS and reads == 3 * OOMS
