"""The file streams' credit (``exec_credit.credited_read``/``credited_write``) on their own: what
the agent reads from the guest and acknowledges, message by message, with the guest's side as
plain async generators (the end-to-end bounds are tests/security/test_attack_session13_transfers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from warren.agent.exec_credit import OUTPUT_WINDOW, STDIN_ACK_BYTES, credited_read, credited_write
from warren.rpc import hostagent_pb2 as pb

CHUNK = 64 << 10


async def _settle() -> None:
    """Every ready task of the loop runs until it waits (nothing here does I/O)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def test_a_download_reads_the_guest_only_a_window_ahead_of_the_acks() -> None:
    pulled = 0

    async def guest() -> AsyncIterator[bytes]:
        nonlocal pulled
        for i in range(64):
            pulled += 1
            yield bytes([i]) * CHUNK

    acks: asyncio.Queue[pb.ReadFileCreditRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[pb.ReadFileCreditRequest]:
        while (msg := await acks.get()) is not None:
            yield msg

    events = credited_read(guest(), requests())
    got = [await anext(events) for _ in range(OUTPUT_WINDOW // CHUNK)]
    nxt = asyncio.ensure_future(anext(events))
    await _settle()
    assert not nxt.done() and pulled == OUTPUT_WINDOW // CHUNK  # the guest is not read meanwhile
    acks.put_nowait(pb.ReadFileCreditRequest(acked=CHUNK))
    got.append(await nxt)
    assert pulled == OUTPUT_WINDOW // CHUNK + 1
    while True:  # acknowledged as taken: the rest flows, in order, then the end (empty)
        acks.put_nowait(pb.ReadFileCreditRequest(acked=CHUNK))
        msg = await anext(events)
        if not msg.chunk:
            break
        got.append(msg)
    assert [m.chunk[0] for m in got] == list(range(64)) and all(len(m.chunk) == CHUNK for m in got)
    ended = asyncio.ensure_future(anext(events))
    await _settle()
    assert not ended.done()  # the call ends only once the caller has half-closed
    acks.put_nowait(None)
    try:
        await ended
    except StopAsyncIteration:
        pass
    else:
        raise AssertionError("a message after the end")


async def test_a_download_whose_caller_sends_anything_but_acks_ends() -> None:
    async def guest() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * CHUNK

    async def requests() -> AsyncIterator[pb.ReadFileCreditRequest]:
        yield pb.ReadFileCreditRequest(open=pb.ReadFileRequest(path="/again"))

    events = credited_read(guest(), requests())
    try:
        for _ in range(OUTPUT_WINDOW // CHUNK + 1):
            await anext(events)
    except Exception as e:
        assert "only `acked`" in str(e)
    else:
        raise AssertionError("a second `open` was taken as an acknowledgement")
    finally:
        await events.aclose()


async def test_an_upload_is_acknowledged_as_the_guest_takes_it() -> None:
    written: list[bytes] = []

    async def write(chunks: AsyncIterator[bytes]) -> int:
        async for c in chunks:
            written.append(c)
        return sum(map(len, written))

    async def upload() -> AsyncIterator[bytes]:
        for i in range(6):
            yield bytes([i]) * CHUNK

    events = [ev async for ev in credited_write(write, upload())]
    kinds = [ev.WhichOneof("msg") for ev in events]
    assert kinds[0] == "ready" and kinds[-1] == "done" and set(kinds[1:-1]) == {"acked"}
    acked = sum(ev.acked for ev in events[1:-1])
    # In batches of STDIN_ACK_BYTES, each once its chunks were written (the last partial batch
    # is answered by `done`).
    assert all(ev.acked >= STDIN_ACK_BYTES for ev in events[1:-1])
    assert acked <= 6 * CHUNK and 6 * CHUNK - acked < STDIN_ACK_BYTES
    assert events[-1].done.bytes_written == 6 * CHUNK
    assert b"".join(written) == b"".join(bytes([i]) * CHUNK for i in range(6))
