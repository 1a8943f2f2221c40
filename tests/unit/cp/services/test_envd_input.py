"""E2B input's bound (services/envd_input.py): per process the exec stream's 256 KiB, or one
message when nothing else is queued; per team that times its stream cap; refused at once past
it (429 stdin_full), given back however a call ends."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from warren.cp.services import envd_input
from warren.cp.services.exec_stream import STDIN_PIECE, STDIN_QUEUE_BYTES
from warren.errors import TooManyRequests

TEAM, OTHER = uuid.uuid4(), uuid.uuid4()


class Stalled:
    """A process that takes nothing until released: the pieces sent, and a gate."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.go = asyncio.Event()

    async def send(self, piece: bytes) -> None:
        self.pieces.append(piece)
        await self.go.wait()


async def _feed(key: envd_input.Key, data: bytes, proc: Stalled, team: uuid.UUID = TEAM) -> None:
    await envd_input.feed(key, team, data, proc.send, max_streams=2)


async def test_one_process_queues_at_most_its_bound_or_one_message() -> None:
    proc = Stalled()
    key = ("sb-1", 7)
    big = asyncio.create_task(_feed(key, b"x" * (1 << 20), proc))  # alone: admitted whole
    await asyncio.sleep(0)
    assert envd_input.held(key) == 1 << 20
    assert proc.pieces == [b"x" * STDIN_PIECE]  # one piece at a time goes to the agent
    with pytest.raises(TooManyRequests) as e:
        await _feed(key, b"y", proc)
    assert e.value.code == "stdin_full"
    proc.go.set()
    await big
    assert envd_input.held(key) == 0 and envd_input.team_held(TEAM) == 0
    assert b"".join(proc.pieces) == b"x" * (1 << 20)


async def test_small_inputs_queue_up_to_the_bound_in_order() -> None:
    proc = Stalled()
    key = ("sb-1", "tag")
    n = STDIN_QUEUE_BYTES // 4
    calls = [asyncio.create_task(_feed(key, bytes([i]) * n, proc)) for i in range(4)]
    await asyncio.sleep(0)
    with pytest.raises(TooManyRequests):
        await _feed(key, b"z", proc)
    proc.go.set()
    await asyncio.gather(*calls)
    assert [p[0] for p in proc.pieces] == [0, 1, 2, 3]  # a piece each, in arrival order
    assert b"".join(proc.pieces) == b"".join(bytes([i]) * n for i in range(4))


async def test_a_team_queues_at_most_its_stream_cap_times_the_bound() -> None:
    proc = Stalled()
    limit = 2 * STDIN_QUEUE_BYTES  # max_streams=2
    first = asyncio.create_task(_feed(("sb-1", 1), b"a" * limit, proc))
    await asyncio.sleep(0)
    with pytest.raises(TooManyRequests):  # another process of the same team
        await _feed(("sb-2", 2), b"b", proc)
    other = asyncio.create_task(_feed(("sb-3", 3), b"c", proc, OTHER))  # another team: unaffected
    proc.go.set()
    await asyncio.gather(first, other)
    assert envd_input.team_held(TEAM) == 0 and envd_input.team_held(OTHER) == 0


async def test_a_failed_or_cancelled_call_gives_its_bytes_back() -> None:
    proc = Stalled()
    key = ("sb-1", 9)

    async def broken(piece: bytes) -> None:
        raise RuntimeError("the agent went away")

    with pytest.raises(RuntimeError):
        await envd_input.feed(key, TEAM, b"x" * 1000, broken, max_streams=2)
    assert envd_input.held(key) == 0 and envd_input.team_held(TEAM) == 0
    task = asyncio.create_task(_feed(key, b"x" * (300 << 10), proc))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert envd_input.held(key) == 0 and envd_input.team_held(TEAM) == 0
