"""A terminal's lifetime (``pty_start``'s ``timeout``, E2B's terminals, docs/e2b.md §3.1): the
guest kills the whole session when it runs out, attached or not."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.guest.guest_helpers import RunningGuest
from warren.agent.guest_client import GuestError
from warren.agent.pty_rpc import PtySession


async def _open(guest: RunningGuest, **req: object) -> PtySession:
    return await PtySession.open(guest.socket, {"op": "pty_start", "cols": 80, "rows": 24, **req})


async def test_the_terminal_is_killed_at_its_timeout_without_a_client(guest: RunningGuest) -> None:
    s = await _open(guest, cmd="/bin/sh", args=["-c", "sleep 300 & wait"], timeout=0.5)
    pid = s.pid
    await s.close()  # detached: the guest keeps the deadline
    again = await PtySession.open(guest.socket, {"op": "pty_connect", "pid": pid})
    async with asyncio.timeout(20):
        async for ev in again:
            if ev.kind == "exit":
                assert ev.exit_code == -9
                break
    await again.close()


async def test_a_terminal_that_ends_first_reports_its_own_exit(guest: RunningGuest) -> None:
    s = await _open(guest, cmd="/bin/sh", args=["-c", "exit 3"], timeout=600)
    async with asyncio.timeout(10):
        codes = [ev.exit_code async for ev in s if ev.kind == "exit"]
    assert codes == [3]
    await s.close()


@pytest.mark.parametrize("bad", [-1, "5", True, [1]])
async def test_a_bad_timeout_is_refused(guest: RunningGuest, bad: object) -> None:
    with pytest.raises(GuestError) as e:
        await _open(guest, cmd="/bin/true", timeout=bad)
    assert e.value.kind == "invalid_argument"
