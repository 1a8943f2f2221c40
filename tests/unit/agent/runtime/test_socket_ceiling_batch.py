"""The netlink levels' batch kills and their "in a row" (runtime/socket_ceiling.py, session 26);
the attack is tests/security/test_attack_session26_runtime_netlink_refill.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from warren.agent.runtime import socket_ceiling
from warren.agent.runtime.socket_ceiling import SocketCeiling, batch

MiB = 1 << 20


def test_a_batch_is_the_heaviest_that_cover_the_excess() -> None:
    holders = [(10, 8 * MiB), (11, 2 * MiB), (12, 8 * MiB), (13, 0), (14, 1 * MiB)]
    assert batch(holders, 1) == [12]  # the newest of the heaviest on a tie
    assert batch(holders, 8 * MiB) == [12]
    assert batch(holders, 8 * MiB + 1) == [12, 10]
    assert batch(holders, 17 * MiB) == [12, 10, 11]
    assert batch(holders, 100 * MiB) == [12, 10, 11, 14]  # all that hold any, never one of 0
    assert batch([(1, 0), (2, 0)], 5) == []


def _contained(monkeypatch: pytest.MonkeyPatch, ends: list[tuple[int, str, int]], refill: int) -> list[str]:
    """``_contain`` over enforcements whose kills end as ``ends`` (killed, why, passes that
    killed), each handed by the tick after the last one ended; which killed all of cmds."""
    watch = SocketCeiling(root=Path("/nonexistent"))
    w = socket_ceiling._Watched("usage")
    all_killed: list[str] = []

    def kill_all(*_: object) -> int:
        all_killed.append(str(watch._ticks - 1))
        return 1

    monkeypatch.setattr(watch, "_kill_all", kill_all)
    for n, end, passes in ends:
        monkeypatch.setattr(watch, "_kill", lambda *a, n=n, end=end, p=passes: (n, 0, end, p))
        watch._ticks += 1
        w.handed = watch._ticks
        names = ("socket_netlink_queue", "queued", "bytes")
        watch._contain("sb", w, names, 9, 4, 4, lambda: 0, refill=refill)
    return all_killed


def test_a_level_past_again_right_after_kills_is_in_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forker refilling: each batch takes the level under, the next look finds it past again.
    The ``refill``-th such enforcement kills all of cmds (the netlink levels' 4th, the TCP
    count's 2nd), each pass that killed counting; a level weighed in another unit (0) counts
    spent enforcements alone."""
    killed = (5, "under", 1)
    assert _contained(monkeypatch, [killed] * 5, refill=4) == ["3"]
    assert _contained(monkeypatch, [killed] * 3, refill=2) == ["1"]
    assert _contained(monkeypatch, [killed] * 5, refill=0) == []
    gone = [killed] * 3 + [(0, "gone", 0)] + [killed] * 3
    assert _contained(monkeypatch, gone, refill=4) == []
    # a pass after the first in one enforcement: the level was past again after a batch
    assert _contained(monkeypatch, [(9, "under", 2)], refill=2) == ["0"]
    assert _contained(monkeypatch, [killed, (5, "spent", 3)], refill=4) == ["1"]
    assert _contained(monkeypatch, [(5, "spent", 5), (5, "spent", 5)], refill=0) == ["1"]


def test_a_refill_counts_in_a_row_within_the_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past again within REFILL_GAP ticks of the last killing enforcement's end: in a row; later
    (ticks under between), a row of its own."""
    watch = SocketCeiling(root=Path("/nonexistent"))
    w = socket_ceiling._Watched("usage")
    kill_alls: list[int] = []

    def kill_all(*_: object) -> int:
        kill_alls.append(watch._ticks)
        return 1

    monkeypatch.setattr(watch, "_kill_all", kill_all)
    monkeypatch.setattr(watch, "_kill", lambda *a: (5, 0, "under", 1))
    for tick in (1, 1 + socket_ceiling.REFILL_GAP + 1, 2 * socket_ceiling.REFILL_GAP + 2):
        watch._ticks = w.handed = tick
        watch._contain("sb", w, ("socket_count", "weight", "inuse"), 9, 4, 4, lambda: 0, refill=2)
    assert kill_alls == [2 * socket_ceiling.REFILL_GAP + 2]
