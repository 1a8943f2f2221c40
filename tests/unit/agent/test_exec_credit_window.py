"""The agent's side of the file streams' growing windows and of a refusal midway through an
upload (``exec_credit.credited_read``/``credited_write``, session 14), message by message, with the
guest's side as plain async generators (over a real link: tests/integration/cp/services/
test_file_transfer_window.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from warren.agent.exec_credit import OUTPUT_WINDOW, credited_read, credited_write
from warren.errors import InvalidRequest
from warren.rpc import hostagent_pb2 as pb
from warren.rpc.flow_window import BASE, Allowance, Budget, Grower

CHUNK = 64 << 10
MIB = 1 << 20


async def _settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def _cancel(fut: asyncio.Future[pb.ReadFileStreamResponse]) -> None:
    """The read under way cancelled, which ends the stream (its ``finally`` runs)."""
    fut.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await fut


async def test_a_download_keeps_to_the_callers_grant_as_far_as_its_budget_allows() -> None:
    """The CP grants 8 MiB; this agent's team share is 1 MiB: it sends 1.25 MiB past what was
    acknowledged, says so with its next chunk, and gives the MiB back at the end."""
    pulled = 0

    async def guest() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(256):
            pulled += 1
            yield b"x" * CHUNK

    acks: asyncio.Queue[pb.ReadFileCreditRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[pb.ReadFileCreditRequest]:
        while (msg := await acks.get()) is not None:
            yield msg

    budget = Budget(64 * MIB, MIB)
    events = credited_read(guest(), requests(), Allowance(budget, "team", 8 * MIB))
    first = [await anext(events) for _ in range(OUTPUT_WINDOW // CHUNK)]
    assert {m.window for m in first} == {0}  # nothing granted yet
    acks.put_nowait(pb.ReadFileCreditRequest(acked=CHUNK, window=8 * MIB))
    got = [await anext(events) for _ in range((BASE + MIB) // CHUNK - OUTPUT_WINDOW // CHUNK + 1)]
    assert got[0].window == BASE + MIB and {m.window for m in got[1:]} == {0}
    nxt = asyncio.ensure_future(anext(events))
    await _settle()
    assert not nxt.done() and pulled == (BASE + MIB) // CHUNK + 1  # its window, and no more
    assert budget.held("team") == MIB
    await _cancel(nxt)
    await events.aclose()
    assert budget.used == 0


async def test_a_download_for_a_cp_from_before_keeps_the_fixed_window() -> None:
    """No ``window`` in the acknowledgements: 256 KiB, whatever this agent would allow."""

    async def guest() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * CHUNK

    async def requests() -> AsyncIterator[pb.ReadFileCreditRequest]:
        yield pb.ReadFileCreditRequest(acked=CHUNK)
        await asyncio.Event().wait()

    budget = Budget(64 * MIB, 64 * MIB)
    events = credited_read(guest(), requests(), Allowance(budget, "team", 8 * MIB))
    got = [await anext(events) for _ in range(OUTPUT_WINDOW // CHUNK + 1)]
    nxt = asyncio.ensure_future(anext(events))
    await _settle()
    assert not nxt.done() and {m.window for m in got} == {0} and budget.used == 0
    await _cancel(nxt)
    await events.aclose()


async def test_an_upload_grants_a_window_once_its_guest_took_one_while_waiting() -> None:
    """The guest takes every chunk at once and waits for the next (the clock moves 10 ms a
    wait): after 256 KiB the agent grants 512 KiB with its acknowledgement."""
    clock = [0.0]
    grower = Grower(Budget(64 * MIB, 64 * MIB), "team", 8 * MIB, clock=lambda: clock[0])

    async def write(chunks: AsyncIterator[bytes]) -> int:
        n = 0
        async for c in chunks:
            n += len(c)
        return n

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(8):
            clock[0] += 0.010  # a round trip for the CP's next bytes
            yield b"x" * CHUNK

    events = [ev async for ev in credited_write(write, upload(), grower)]
    grants = [ev.window for ev in events if ev.WhichOneof("msg") == "acked" and ev.window]
    assert grants == [2 * BASE] and events[-1].done.bytes_written == 8 * CHUNK
    assert grower.peak == 2 * BASE


async def test_a_refusal_midway_is_told_and_ends_the_call_after_the_half_close() -> None:
    """The guest refuses after two chunks: ``refusing`` first; the refusal is raised only once the
    caller's chunks have ended (its half-close), every one of them read meanwhile."""
    sent = 0
    half_closed = asyncio.Event()

    async def write(chunks: AsyncIterator[bytes]) -> int:
        n = 0
        async for _ in chunks:
            n += 1
            if n == 2:
                raise InvalidRequest("no room")
        return n

    async def upload() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(6):
            sent += 1
            yield b"x" * CHUNK
        await half_closed.wait()

    events = credited_write(write, upload(), stops_on_refusal=True)
    kinds = []
    while (ev := await anext(events)).WhichOneof("msg") != "refusing":
        kinds.append(ev.WhichOneof("msg"))
    assert kinds[0] == "ready"
    ending = asyncio.ensure_future(anext(events))
    await _settle()
    assert not ending.done() and sent == 6  # the caller's chunks read and dropped, not yet ended
    half_closed.set()
    with pytest.raises(InvalidRequest, match="no room"):
        await ending
