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


def _contained(monkeypatch: pytest.MonkeyPatch, ends: list[tuple[int, str]], exact: bool) -> list[str]:
    """``_contain`` over enforcements whose kills end as ``ends`` (killed, why), each handed by
    the tick after the last one ended; which of them killed all of cmds."""
    watch = SocketCeiling(root=Path("/nonexistent"))
    w = socket_ceiling._Watched("usage")
    all_killed: list[str] = []

    def kill_all(*_: object) -> int:
        all_killed.append(str(watch._ticks - 1))
        return 1

    monkeypatch.setattr(watch, "_kill_all", kill_all)
    for n, end in ends:
        monkeypatch.setattr(watch, "_kill", lambda *a, n=n, end=end: (n, 0, end))
        watch._ticks += 1
        w.handed = watch._ticks
        watch._contain("sb", w, ("socket_netlink_queue", "queued", "bytes"), 9, 4, 4, lambda: 0, exact=exact)
    return all_killed


def test_a_level_past_again_right_after_kills_is_in_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forker refilling: each batch takes the level under, the next look finds it past again.
    The fourth such enforcement kills all of cmds (exact levels only: the others count spent
    ones alone); a spent one after such counts as the second in a row."""
    assert _contained(monkeypatch, [(5, "under")] * 5, exact=True) == ["3"]
    assert _contained(monkeypatch, [(5, "under")] * 5, exact=False) == []
    gone = [(5, "under")] * 3 + [(0, "gone")] + [(5, "under")] * 3
    assert _contained(monkeypatch, gone, exact=True) == []
    assert _contained(monkeypatch, [(5, "under"), (5, "spent")], exact=True) == ["1"]
