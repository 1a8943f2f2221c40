"""A background command whose starter asked for ``backpressure`` (E2B's Start, docs/e2b.md
§3.1): the starter's slow reading holds the command back instead of getting it detached, and
the command runs on at full speed once the starter has gone."""

from __future__ import annotations

import asyncio

from tests.unit.guest.guest_helpers import RunningGuest, pid_gone, wait_until

TOTAL = 40 << 20  # five times what an ordinary reader may fall behind


async def test_a_slow_starter_loses_nothing(guest: RunningGuest) -> None:
    s = await guest.client.exec_stream(
        "head", ["-c", str(TOTAL), "/dev/zero"], background=True, backpressure=True, stdin=False
    )
    base = guest.rss_kib()
    await asyncio.sleep(0.5)  # a reader that is slow on purpose: read nothing for a while
    assert guest.rss_kib() - base < 8 * 1024  # the guest stopped reading the pipe
    assert not pid_gone(s.pid), "head should be blocked on a full pipe, not finished"
    total, kinds = 0, []
    async with asyncio.timeout(60):
        async for ev in s:
            kinds.append(ev.kind)
            if ev.kind == "stdout":
                total += len(ev.data)
            elif ev.kind == "exit":
                assert ev.exit_code == 0
    assert total == TOTAL and kinds[-1] == "exit"
    await s.close()


async def test_it_runs_on_when_its_starter_leaves(guest: RunningGuest) -> None:
    s = await guest.client.exec_stream(
        "head", ["-c", str(TOTAL), "/dev/zero"], background=True, backpressure=True, tag="bp", stdin=False
    )
    await asyncio.sleep(0.5)  # held back by its unread starter...
    assert not pid_gone(s.pid)
    await s.close()  # ...until the starter goes: then nothing holds it
    assert await wait_until(lambda: pid_gone(s.pid), timeout=30)
    procs = {p.tag: p for p in await guest.client.list_processes()}
    assert procs["bp"].exit_code == 0 and not procs["bp"].running
    # Attachers are still cut off when they lag: only the starter is waited for.
    late = await guest.client.attach("bp")
    kinds = [ev.kind async for ev in late]
    assert kinds[0] == "start" and kinds[-1] == "exit"
    await late.close()
