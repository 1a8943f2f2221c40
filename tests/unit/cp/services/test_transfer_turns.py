"""An account's turns for its file transfers' messages (services/transfer_turns.py): at most
``per_owner`` hand-offs at once per account, other accounts apart, a hand-off that waits on its
other end gives its turn up after HOLD_S, and nothing stays behind."""

from __future__ import annotations

import asyncio

import pytest

from warren.cp.services import transfer_turns
from warren.cp.services.transfer_turns import TURN_WAITS, TransferTurns


async def _hand_offs(turns: TransferTurns, key: str, n: int, hold: asyncio.Event, peak: list[int]) -> None:
    """``n`` hand-offs of ``key`` at once, each held until ``hold`` is set; the most in their
    turn together goes to ``peak``."""
    inside = 0

    async def one() -> None:
        nonlocal inside
        async with turns.turn(key, "upload"):
            inside += 1
            peak[0] = max(peak[0], inside)
            await hold.wait()
            inside -= 1

    await asyncio.gather(*(one() for _ in range(n)))


async def test_an_account_hands_on_at_most_its_turns_at_once_and_others_have_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transfer_turns, "HOLD_S", 60.0)  # no turn is given up meanwhile
    turns = TransferTurns(2)
    waits = TURN_WAITS.labels("upload")._value.get()
    release = asyncio.Event()
    mallory, bob = [0], [0]
    crowd = asyncio.create_task(_hand_offs(turns, "mallory", 16, release, mallory))
    other = asyncio.create_task(_hand_offs(turns, "bob", 2, release, bob))
    await asyncio.sleep(0.01)
    assert mallory == [2] and bob == [2]
    assert TURN_WAITS.labels("upload")._value.get() - waits == 14
    release.set()
    await asyncio.gather(crowd, other)
    assert turns.tracked() == 0


async def test_a_hand_off_waiting_on_its_other_end_gives_its_turn_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer_turns, "HOLD_S", 0.01)
    turns = TransferTurns(1)
    stuck_released = asyncio.Event()

    async def stuck() -> None:  # a send to a client that does not read
        async with turns.turn("carol", "download"):
            await stuck_released.wait()

    blocker = asyncio.create_task(stuck())
    await asyncio.sleep(0)
    # The next hand-off gets its turn once HOLD_S has passed, while the first still waits.
    async with asyncio.timeout(30):
        async with turns.turn("carol", "download"):
            assert not blocker.done()
    stuck_released.set()
    await blocker
    assert turns.tracked() == 0


async def test_a_cancelled_wait_leaves_nothing_behind() -> None:
    turns = TransferTurns(1)
    release = asyncio.Event()

    async def holder() -> None:
        async with turns.turn("dave", "upload"):
            await release.wait()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    release.set()
    await first
    assert turns.tracked() == 0


async def test_zero_turns_or_no_owner_is_off() -> None:
    peak = [0]
    release = asyncio.Event()
    crowd = asyncio.create_task(_hand_offs(TransferTurns(0), "erin", 8, release, peak))
    await asyncio.sleep(0.01)
    assert peak == [8]  # all at once: nothing waited
    release.set()
    await crowd
    turns = TransferTurns(1)
    async with turns.turn("", "upload"), turns.turn("", "upload"):
        assert turns.tracked() == 0


async def test_streams_and_transfers_share_one_accounts_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exec streams' and terminals' input takes the same turns as file transfers (one instance a
    process, ``turn``), keyed by the account (``account_key``: the owner, else the team)."""
    monkeypatch.setattr(transfer_turns, "HOLD_S", 60.0)
    monkeypatch.setattr(transfer_turns, "_shared", TransferTurns(2))
    assert transfer_turns.account_key("team-1", "owner-1") == "owner-1"
    assert transfer_turns.account_key("platform", None) == "platform"
    waits = {d: TURN_WAITS.labels(d)._value.get() for d in ("upload", "input")}
    release = asyncio.Event()

    async def hold(direction: str) -> None:
        async with transfer_turns.turn("owner-1", direction):
            await release.wait()

    held = [asyncio.create_task(hold(d)) for d in ("upload", "input", "input", "upload")]
    await asyncio.sleep(0.01)
    # The first upload and input hold the account's two turns; the others wait for one.
    assert {d: TURN_WAITS.labels(d)._value.get() - waits[d] for d in waits} == {"upload": 1, "input": 1}
    release.set()
    await asyncio.gather(*held)
    assert transfer_turns._shared is not None and transfer_turns._shared.tracked() == 0
