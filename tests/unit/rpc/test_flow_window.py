"""The growing transfer window's rule (``rpc/flow_window.py``) on its own, on a clock the test
moves: when the receiver grows a window, how the budget bounds it per key and per process, and
what the sender keeps to."""

from __future__ import annotations

from warren.rpc.flow_window import BASE, GRAIN, Allowance, Budget, Grower

MIB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _window(grower: Grower, clock: Clock, *, wait_s: float, take_s: float) -> int | None:
    """One window's bytes, in 64 KiB chunks: the reader waits ``wait_s`` for the window's bytes
    (a round trip), then takes each in ``take_s``; the grant when it grows."""
    grown = None
    grower.waiting()
    clock.now += wait_s
    grower.arrived()
    for _ in range(grower.size // GRAIN):
        clock.now += take_s
        grown = grower.consumed(GRAIN) or grown
    return grown


def _grower(budget: Budget | None = None, team: str = "team") -> tuple[Grower, Clock]:
    clock = Clock()
    grower = Grower(budget, team, 8 * MIB, clock=clock)
    return grower, clock


def _follow(grower: Grower, grown: int | None) -> None:
    """The sender keeps to what it is granted (its budget allowing all of it)."""
    if grown:
        grower.sender_keeps(grown)


def test_a_window_bound_reader_doubles_to_the_largest() -> None:
    grower, clock = _grower()
    sizes = []
    for _ in range(8):
        _follow(grower, _window(grower, clock, wait_s=0.010, take_s=0.0001))
        sizes.append(grower.size)
    assert sizes == [BASE << i for i in range(1, 6)] + [8 * MIB] * 3
    assert grower.peak == 8 * MIB and grower.capped == 0


def test_a_reader_that_is_slower_than_the_link_never_grows() -> None:
    grower, clock = _grower()
    for _ in range(20):  # its bytes wait for it: it never waits for them
        _follow(grower, _window(grower, clock, wait_s=0.0, take_s=0.010))
    assert grower.size == BASE


def test_a_reader_that_takes_nothing_never_grows() -> None:
    grower, clock = _grower()
    grower.waiting()
    clock.now += 3600
    grower.arrived()
    assert grower.consumed(GRAIN) is None and grower.size == BASE


def test_no_growth_past_what_the_sender_keeps_to() -> None:
    """A sender whose own budget kept it at 256 KiB: the receiver grants once and no more."""
    grower, clock = _grower(Budget(64 * MIB, 64 * MIB))
    for _ in range(5):
        _window(grower, clock, wait_s=0.010, take_s=0.0001)  # the sender never follows
    assert grower.size == 2 * BASE


def test_a_team_share_and_the_process_budget_cap_growth() -> None:
    budget = Budget(12 * MIB, 8 * MIB)
    grown = []
    for team in ("a", "a", "b"):
        g, clock = _grower(budget, team)
        for _ in range(10):
            _follow(g, _window(g, clock, wait_s=0.010, take_s=0.0001))
        grown.append(g)
    assert budget.held("a") == 8 * MIB and budget.held("b") == 4 * MIB and budget.used == 12 * MIB
    assert [g.size - BASE for g in grown] == [7 * MIB + 3 * MIB // 4, MIB // 4, 4 * MIB]
    assert all(g.capped for g in grown[1:])
    for g in grown:
        g.close()
        g.close()  # once only
    assert budget.used == 0 and budget.held("a") == 0


def test_the_sender_keeps_to_its_own_budget_and_largest() -> None:
    budget = Budget(64 * MIB, MIB)
    a = Allowance(budget, "team", 4 * MIB)
    assert a.granted(0) == BASE and a.granted(BASE // 2) == BASE  # nothing new, never shrinks
    assert a.granted(32 * MIB) == BASE + MIB and a.capped == 1  # its team's 1 MiB, of 3.75
    a.close()
    b = Allowance(budget, "team", 4 * MIB)
    assert b.granted(32 * MIB) == BASE + MIB  # given back
    c = Allowance(None, "team", 4 * MIB)
    assert c.granted(32 * MIB) == 4 * MIB  # no budget: its largest


def test_acknowledgements_are_batched_by_the_senders_window() -> None:
    grower, _ = _grower()
    assert grower.ack_batch(32 << 10) == 32 << 10
    grower._grow_to(8 * MIB)
    assert grower.ack_batch(32 << 10) == 32 << 10  # granted, but the sender has not said so
    grower.sender_keeps(8 * MIB)
    assert grower.ack_batch(32 << 10) == MIB
