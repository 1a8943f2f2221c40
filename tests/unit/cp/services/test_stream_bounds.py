"""The per-team stream cap (services/stream_slots.py) and an exec stream's stdin queue bounded in
bytes (services/exec_stream.py). The attack they answer is tests/security/test_attack_stream_count.py."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from warren.cp.services import stream_slots
from warren.cp.services.context import AuthContext
from warren.cp.services.exec_stream import OUTPUT_ACK_BYTES, QUEUED_REQUESTS, StdinQueue
from warren.errors import TooManyRequests
from warren.rpc import hostagent_pb2 as pb


def _ctx(team: uuid.UUID) -> AuthContext:
    return AuthContext(kind="api_key", team_id=team)


def test_a_team_past_its_cap_is_refused_and_another_team_is_not() -> None:
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    slots = [stream_slots.Slot() for _ in range(3)]
    for s in slots:
        s.claim(_ctx(mine), 3)
    with pytest.raises(TooManyRequests) as e, stream_slots.Slot() as extra:
        extra.claim(_ctx(mine), 3)
    assert e.value.code == "too_many_streams"
    with stream_slots.Slot() as other:
        other.claim(_ctx(theirs), 3)
    slots[0].release()
    slots[0].release()  # twice: counted once
    with stream_slots.Slot() as again:
        again.claim(_ctx(mine), 3)
        assert stream_slots.open_streams(mine) == 3
    for s in slots:
        s.release()
    assert stream_slots.open_streams(mine) == 0 and stream_slots.open_streams(theirs) == 0


def test_a_refused_slot_gives_nothing_back_on_leaving() -> None:
    team = uuid.uuid4()
    with stream_slots.Slot() as held:
        held.claim(_ctx(team), 1)
        with pytest.raises(TooManyRequests), stream_slots.Slot() as refused:
            refused.claim(_ctx(team), 1)
        assert stream_slots.open_streams(team) == 1
    assert stream_slots.open_streams(team) == 0


async def test_the_stdin_queue_waits_past_its_bytes_and_takes_one_larger_message() -> None:
    q = StdinQueue(limit=100)
    q.started(credit=False)  # an agent without credit: stdin sent stops counting
    q.put_nowait(pb.ExecStreamRequest(close_stdin=False))  # the start: no stdin bytes
    await q.put(pb.ExecStreamRequest(stdin=b"a" * 60))
    blocked = asyncio.create_task(q.put(pb.ExecStreamRequest(stdin=b"b" * 60)))
    await asyncio.sleep(0)
    assert not blocked.done() and q.queued == 60
    assert (await q.get()) is not None  # the start
    await asyncio.sleep(0)
    assert not blocked.done()
    assert (await q.get()).stdin == b"a" * 60
    await blocked
    assert q.queued == 60
    assert (await q.get()).stdin == b"b" * 60
    await q.put(pb.ExecStreamRequest(stdin=b"c" * 500))  # empty: one larger message goes in
    q.end()
    assert (await q.get()).stdin == b"c" * 500
    assert await q.get() is None


async def test_stdin_sent_counts_until_the_agent_acknowledges_it() -> None:
    q = StdinQueue(limit=100)
    await q.put(pb.ExecStreamRequest(stdin=b"a" * 60))
    assert (await q.get()).stdin == b"a" * 60
    blocked = asyncio.create_task(q.put(pb.ExecStreamRequest(stdin=b"b" * 60)))
    await asyncio.sleep(0)
    assert not blocked.done() and q.in_flight == 60  # sent, but not written to the guest yet
    q.acked(10)  # 50 held, 60 more would be 110
    await asyncio.sleep(0)
    assert not blocked.done()
    q.acked(50)
    await blocked
    assert q.queued == 60 and q.in_flight == 0


async def test_output_acknowledgements_go_in_batches_and_before_held_stdin() -> None:
    q = StdinQueue(limit=100)
    q.put_nowait(pb.ExecStreamRequest(stdin=b"a" * 60))
    q.output_taken(OUTPUT_ACK_BYTES - 1)
    assert (await q.get()).stdin == b"a" * 60  # under a batch: nothing to acknowledge yet
    waiting = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    q.output_taken(1)
    assert (await waiting).output_acked == OUTPUT_ACK_BYTES
    q.put_nowait(pb.ExecStreamRequest(signal=9))
    q.output_taken(OUTPUT_ACK_BYTES)
    assert (await q.get()).output_acked == OUTPUT_ACK_BYTES  # ahead of what was queued
    assert (await q.get()).signal == 9
    q.started(credit=False)  # an agent without credit is sent no acknowledgements
    q.output_taken(10 * OUTPUT_ACK_BYTES)
    q.end()
    assert await q.get() is None


async def test_the_stdin_queue_holds_at_most_its_count_of_requests_whatever_their_bytes() -> None:
    q = StdinQueue()
    for _ in range(QUEUED_REQUESTS):
        await q.put(pb.ExecStreamRequest(signal=28))  # no stdin bytes: only the count holds it
    blocked = asyncio.create_task(q.put(pb.ExecStreamRequest(close_stdin=True)))
    await asyncio.sleep(0)
    assert not blocked.done()
    assert (await q.get()) == pb.ExecStreamRequest(signal=28)
    await asyncio.wait_for(blocked, 5)
    q.end()  # the end never waits, even at the count
    assert len([await q.get() for _ in range(QUEUED_REQUESTS + 1)]) == QUEUED_REQUESTS + 1
