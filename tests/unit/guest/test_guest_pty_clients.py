"""How many clients a terminal, and all terminals together, take at a time (session 17, W2-D:
each may hold up to HIGH_WATER of the guest's own memory, and socket buffers, before the terminal
pauses for it)."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.unit.guest.guest_helpers import RunningGuest
from warren.agent.guest_client import GuestError
from warren.agent.pty_rpc import PtySession
from warren.guest.guest_agent.pty import MAX_CLIENTS, MAX_CLIENTS_ALL


async def _connect(guest: RunningGuest, pid: int) -> PtySession:
    return await PtySession.open(guest.socket, {"op": "pty_connect", "pid": pid})


async def test_at_most_16_clients_of_a_terminal_at_a_time(guest: RunningGuest) -> None:
    assert MAX_CLIENTS == 16
    s = await PtySession.open(guest.socket, {"op": "pty_start", "cols": 80, "rows": 24, "cmd": "/bin/cat"})
    clients = [await _connect(guest, s.pid) for _ in range(MAX_CLIENTS - 1)]  # the starter is one
    with pytest.raises(GuestError) as e:
        await _connect(guest, s.pid)
    assert e.value.kind == "too_large" and "at most 16 connections" in e.value.message
    await clients.pop().close()
    async with asyncio.timeout(10):  # the guest sees the close as soon as it reads it
        while True:
            try:
                clients.append(await _connect(guest, s.pid))
                break
            except GuestError as e2:
                assert e2.kind == "too_large"
                await asyncio.sleep(0.05)
    await s.signal(signal.SIGKILL)
    async with asyncio.timeout(10):
        async for ev in s:
            if ev.kind != "output":
                assert ev.exit_code == -9, ev
                break
    for c in clients:
        await c.close()
    # An exited terminal is still connected to, for its tail and exit, by any number of clients.
    late = [await _connect(guest, s.pid) for _ in range(MAX_CLIENTS + 1)]
    for c in late:
        await c.close()


async def test_at_most_32_terminal_clients_in_a_sandbox_at_a_time(guest: RunningGuest) -> None:
    assert MAX_CLIENTS_ALL == 2 * MAX_CLIENTS
    terms = [
        await PtySession.open(guest.socket, {"op": "pty_start", "cols": 80, "rows": 24, "cmd": "/bin/cat"})
        for _ in range(2)
    ]
    clients = [await _connect(guest, t.pid) for t in terms for _ in range(MAX_CLIENTS - 1)]
    for refused in (
        _connect(guest, terms[0].pid),
        PtySession.open(guest.socket, {"op": "pty_start", "cols": 80, "rows": 24, "cmd": "/bin/cat"}),
    ):
        with pytest.raises(GuestError) as e:
            await refused
        assert e.value.kind == "too_large", e.value
    assert "at most 32 terminal connections in a sandbox" in e.value.message
    for t in terms:
        await t.signal(signal.SIGKILL)
        async with asyncio.timeout(10):
            async for ev in t:
                if ev.kind != "output":
                    assert ev.exit_code == -9, ev
                    break
    for c in clients:
        await c.close()
