"""A guest that dies mid-call, watched as the agent watches a sandbox's container
(agent/container_exits.py: a pidfd on its process): the calls in flight end with
``not_running`` once the pidfd says so, not ``unavailable`` (runc) or at their timeout (gVisor,
whose connections nothing resets), and new calls fail the same way at once.

The guest runs under ``sh`` here, so that the fixture's check that no guest died unexpectedly
sees the shell, which outlives it and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.guest.guest_helpers import RunningGuest, wait_until
from warren.agent.container_exits import ContainerExits
from warren.agent.guest_client import GuestClient, GuestError
from warren.errors import InvalidState

SB = "sb-unit-death"


def _child(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


async def _sleeps(client: GuestClient, n: int) -> list[int]:
    """The pids of the guest's `sleep` commands once there are ``n``."""
    found: list[int] = []

    def listed() -> bool:
        return len(found) >= n

    async with asyncio.timeout(30):
        while not listed():
            found = [p.pid for p in await client.list_processes() if p.cmd == "sleep" and p.running]
            await asyncio.sleep(0.02)
    return found


async def test_a_dead_guest_ends_its_calls_with_not_running(start_guest: Callable[..., RunningGuest]) -> None:
    g = start_guest("sh", "-c", '"$@"; exit 0', "sh")
    client, guest_pid = g.client, _child(g.pid)
    exits = ContainerExits(lambda sb_id, _pid: exits.died(sb_id, client))
    exits.watch(SB, guest_pid)
    session = await client.exec_stream("sleep", ["1000"], timeout=600)
    unary = asyncio.create_task(client.exec("sleep", ["1000"], timeout=600))
    sleeps = await _sleeps(client, 2)
    try:
        os.kill(guest_pid, signal.SIGKILL)
        # Far below the commands' timeouts; the pidfd fires as the guest exits.
        with pytest.raises(GuestError) as ei:
            async with asyncio.timeout(30):
                await unary
        assert ei.value.kind == "not_running" and SB in ei.value.message
        with pytest.raises(GuestError) as ei:
            async with asyncio.timeout(30):
                async for ev in session:
                    assert ev.kind in ("start", "stdout", "stderr"), ev
        assert ei.value.kind == "not_running"
        # New calls: refused before any connection, and by the agent's check.
        with pytest.raises(GuestError) as ei:
            await client.health()
        assert ei.value.kind == "not_running"
        with pytest.raises(InvalidState, match="is not running"):
            exits.check(SB)
        assert client.lifeline.conns == set()
    finally:
        exits.close()
        for pid in sleeps:  # orphans of the dead guest, on the host here
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_broken_connection_of_a_live_container_stays_unavailable(
    start_guest: Callable[..., RunningGuest],
) -> None:
    """Nothing watched died: a broken connection is the guest's ``unavailable`` as before (after
    the short wait for a death, guest_wire.DEATH_GRACE_S)."""
    g = start_guest("sh", "-c", '"$@"; exit 0', "sh")
    client, guest_pid = g.client, _child(g.pid)
    unary = asyncio.create_task(client.exec("sleep", ["1000"], timeout=600))
    sleeps = await _sleeps(client, 1)
    try:
        os.kill(guest_pid, signal.SIGKILL)
        with pytest.raises(GuestError) as ei:
            async with asyncio.timeout(30):
                await unary
        assert ei.value.kind == "unavailable"
        assert await wait_until(lambda: not client.lifeline.conns)
    finally:
        for pid in sleeps:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
