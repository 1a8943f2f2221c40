"""Terminal output credit on the agent's side (``pty_rpc.CreditedPty`` over ``exec_credit``),
driven against a real guest: the agent reads the guest's terminal only while less than its
window of output is unacknowledged, reads the caller's messages (acknowledgements) whatever the
guest takes, and without output credit (an older CP) relays as before."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tests.unit.guest.guest_helpers import RunningGuest
from warren.agent.exec_credit import OUTPUT_WINDOW
from warren.agent.pty_rpc import CreditedPty, PtySession
from warren.rpc import hostagent_pb2 as pb

FRAME = 64 << 10  # the most one guest output frame carries past the window (exec_credit)
QUIET_S = 2.0  # no event for this long: the relay is holding back (only ever observed, never timed)


async def _requests(q: asyncio.Queue[pb.PtyRequest | None]) -> AsyncIterator[pb.PtyRequest]:
    while (msg := await q.get()) is not None:
        yield msg


class Reader:
    """The relay's events, read ahead one at a time (waiting never cancels the relay)."""

    def __init__(self, events: AsyncIterator[pb.PtyEvent]) -> None:
        self.events, self.got = events, list[pb.PtyEvent]()
        self._next: asyncio.Future[pb.PtyEvent] | None = None

    async def take(self, at_least: int, at_most: int) -> int:
        """Events until ``at_least`` output bytes came (60 s at most), then until none comes for
        QUIET_S: the output bytes taken, which must stay within ``at_most``."""
        n, deadline = 0, asyncio.get_running_loop().time() + 60
        while True:
            if self._next is None:
                self._next = asyncio.ensure_future(anext(self.events))
            wait = QUIET_S if n >= at_least else deadline - asyncio.get_running_loop().time()
            done, _ = await asyncio.wait({self._next}, timeout=max(wait, 0))
            if not done:
                assert n >= at_least, f"{n} bytes of output came, {at_least} expected"
                return n
            ev, self._next = self._next.result(), None
            self.got.append(ev)
            n += len(ev.output)
            assert n <= at_most, f"{n} bytes of output came, at most {at_most} expected"

    async def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
        with contextlib.suppress(BaseException):
            await self.events.aclose()  # type: ignore[attr-defined]


async def _open_yes(guest: RunningGuest) -> PtySession:
    req = {"op": "pty_start", "cols": 80, "rows": 24, "cmd": "/bin/sh", "args": ["-c", "exec yes"]}
    return await PtySession.open(guest.socket, req)


async def test_output_past_the_window_waits_for_acknowledgements(guest: RunningGuest) -> None:
    session = await _open_yes(guest)
    q: asyncio.Queue[pb.PtyRequest | None] = asyncio.Queue()
    r = Reader(CreditedPty(session, lambda: None, output=True).events(_requests(q)))
    try:
        sent = await r.take(OUTPUT_WINDOW, OUTPUT_WINDOW + FRAME)
        # Input is written (and acknowledged) while the output is held back.
        q.put_nowait(pb.PtyRequest(input=b"x" * 10))
        acked = 0
        # Each acknowledgement lets as much more through, never more than the window past it.
        for _ in range(3):
            q.put_nowait(pb.PtyRequest(output_acked=sent - acked))
            acked = sent
            sent += await r.take(OUTPUT_WINDOW, OUTPUT_WINDOW + FRAME)
        assert pb.PtyEvent(input_acked=10) in r.got
    finally:
        await r.close()
        await session.close()


async def test_without_output_credit_the_output_is_not_held(guest: RunningGuest) -> None:
    session = await _open_yes(guest)
    q: asyncio.Queue[pb.PtyRequest | None] = asyncio.Queue()
    events = CreditedPty(session, lambda: None, output=False).events(_requests(q))
    taken = 0
    try:
        async with asyncio.timeout(60):
            while taken < 4 * OUTPUT_WINDOW:
                taken += len((await anext(events)).output)
    finally:
        with contextlib.suppress(BaseException):
            await events.aclose()  # type: ignore[attr-defined]
        await session.close()
