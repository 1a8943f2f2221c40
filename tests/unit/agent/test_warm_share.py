"""Each team's share of a warm pool (agent/warm_share.py), and the claims that keep to it
(warm_pool.WarmPools.take)."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import cast
from unittest.mock import MagicMock

import pytest

from warren import ids
from warren.agent.create import CreateRequest, check_request
from warren.agent.record import HostSandbox
from warren.agent.warm_pool import Pool, WarmPools
from warren.agent.warm_share import ASKED_S, MAX_TEAMS, PoolShare, share

A, B, C = "team-a", "team-b", "team-c"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _claim_all(s: PoolShare, team: str, target: int, n: int) -> int:
    """``team`` asks ``n`` times and claims each time it may; how many it claimed."""
    got = 0
    for _ in range(n):
        if s.ask(team, target) is None:
            s.claimed(team)
            got += 1
    return got


def test_the_share_is_half_the_target_rounded_up() -> None:
    assert [share(t) for t in (0, 1, 2, 3, 4, 5, 8, 256)] == [1, 1, 1, 2, 2, 3, 4, 128]


def test_a_lone_team_may_take_the_whole_pool() -> None:
    s = PoolShare(Clock())
    assert _claim_all(s, A, 4, 4) == 4  # nobody else asks: no share
    assert s.claims(A) == 4


def test_a_team_past_its_share_goes_cold_while_another_asks() -> None:
    clock = Clock()
    s = PoolShare(clock)
    assert s.ask(B, 4) is None  # B uses the pool too
    s.claimed(B)
    s.full()  # refilled
    assert _claim_all(s, A, 4, 10) == 2  # A's share of 4, then cold
    refusal = s.ask(A, 4)
    assert refusal is not None and (refusal.claimed, refusal.share, refusal.others) == (2, 2, 1)
    assert refusal.detail() == "claimed=2 share=2 teams_asking=1"
    # B (and any other team) still may: what A left is theirs.
    assert s.ask(B, 4) is None and s.ask(C, 4) is None


def test_a_new_team_asking_holds_a_lone_team_to_its_share_from_then_on() -> None:
    s = PoolShare(Clock())
    assert _claim_all(s, A, 4, 3) == 3
    assert s.ask(B, 4) is None  # B asks (its create may find the pool empty: that is cold anyway)
    assert s.ask(A, 4) is not None  # A holds 3 of 4 since the pool was full


def test_a_full_pool_forgets_the_claims() -> None:
    s = PoolShare(Clock())
    s.ask(B, 4)
    assert _claim_all(s, A, 4, 5) == 2
    s.full()
    assert _claim_all(s, A, 4, 5) == 2  # a refill's worth again
    assert s.claims(B) == 0


def test_other_teams_asks_expire() -> None:
    clock = Clock()
    s = PoolShare(clock)
    s.ask(B, 4)
    assert _claim_all(s, A, 4, 4) == 2
    clock.now += ASKED_S / 2
    assert s.ask(A, 4) is not None  # B asked recently
    clock.now += ASKED_S / 2 + 1
    assert s.ask(A, 4) is None  # B's ask is too old: A is alone again


def test_creates_without_an_owner_are_outside_the_rule() -> None:
    s = PoolShare(Clock())
    for _ in range(5):
        assert s.ask("", 4) is None
        s.claimed("")
    assert s.claims("") == 0
    assert _claim_all(s, A, 4, 4) == 4  # and they count as nobody asking


def test_a_target_of_one_alternates() -> None:
    s = PoolShare(Clock())
    s.ask(B, 1)
    assert _claim_all(s, A, 1, 3) == 1
    assert s.ask(B, 1) is None


def test_the_teams_remembered_are_bounded() -> None:
    clock = Clock()
    s = PoolShare(clock)
    for i in range(MAX_TEAMS + 100):
        clock.now += 0.001
        s.ask(f"t{i}", 4)
    assert len(s._teams) <= MAX_TEAMS
    assert "t0" not in s._teams and f"t{MAX_TEAMS + 99}" in s._teams


# ------------------------------------------------------------------- WarmPools.take, as a create


def _pools(tmp_path: Path) -> WarmPools:
    m = MagicMock()
    return WarmPools(
        tmp_path, sandboxes_dir=tmp_path / "sandboxes", runtime=m, network=m, builder=m,
        lower_layers=m, hold=m, missing_layers=m, creates_idle=m,
    )  # fmt: skip


def _member(n: int) -> HostSandbox:
    # What take() reads of a member: its id and its pid (alive: this process).
    return cast(HostSandbox, SimpleNamespace(id=f"wp-{n:016x}", pid=os.getpid()))


def _create(team: str) -> CreateRequest:
    return check_request(
        sandbox_id=ids.sandbox_id(ids.new_uuid()), team_id="", template_id="", template="minimal",
        vcpus=1, memory_mb=256, disk_size_mb=0, timeout_sec=0, internet=True, env=None,
        egress_allow=(), owner_team=team,
    )  # fmt: skip


def test_take_leaves_the_others_share_to_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    warm = _pools(tmp_path)
    pool = warm.pools["minimal"] = Pool("minimal", 4, ready=[_member(i) for i in range(4)])
    assert not isinstance(warm.take(_create(b)), str)  # B uses the pool
    pool.ready.append(_member(4))
    pool.share.full()  # refilled
    caplog.set_level(logging.INFO, "warren.agent")
    got = [warm.take(_create(a)) for _ in range(6)]  # A's loop
    assert sum(not isinstance(g, str) for g in got) == 2
    assert got[2:] == ["team_share"] * 4
    assert len(pool.ready) == 2 and warm.cold == {"team_share": 4}
    assert f"reason=team_share pool=minimal tenant={a} claimed=2 share=2 teams_asking=1" in caplog.text
    assert not isinstance(warm.take(_create(b)), str)  # B's create is warm


def test_take_alone_empties_the_pool_and_then_goes_cold_as_empty(tmp_path: Path) -> None:
    warm = _pools(tmp_path)
    warm.pools["minimal"] = Pool("minimal", 4, ready=[_member(i) for i in range(4)])
    a = str(uuid.uuid4())
    got = [warm.take(_create(a)) for _ in range(5)]
    assert sum(not isinstance(g, str) for g in got) == 4 and got[4] == "pool_empty"
    # Another team asking now finds it empty (pool_empty, not the share): a team's first ask
    # after a lone team took all is cold; from then on the lone team is held to its share.
    assert warm.take(_create(str(uuid.uuid4()))) == "pool_empty"
    warm.pools["minimal"].ready.append(_member(9))
    assert warm.take(_create(a)) == "team_share"
