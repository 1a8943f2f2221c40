"""A sandbox paused for its own snapshot makes the commands sent to it wait, not fail (session 31).

E2B's snapshot and fork (``services/e2b_snapshots.py``, ``e2b_forks.py``) pause a running
sandbox for the snapshot and resume it afterwards, with the same id: ~200 ms on runc, ~2 s on
gVisor (a checkpoint to disk). A command (unary exec, exec stream, terminal, watch, a file
transfer or file operation, any call of E2B's envd plane) that arrives meanwhile used to get
the paused sandbox's refusal (409 ``invalid_state``; E2B's "not running"). Now it waits for the
snapshot's end and then is judged as it would have been: run on the sandbox running again, or
refused as before if the snapshot left it paused after all (its resume failed).

- **The mark** is in the sandbox's row, so every replica sees it: the snapshot's pre-mark moves
  ``running`` → ``paused`` with ``paused_state = 'snapshot'`` (:data:`TRANSIENT`; the API shows
  it as ``"memory"``, which it is while frozen). The resume moves it to ``running`` and clears it
  in the same statement (``sandbox_power.resume_sandbox``); a failed snapshot's undo too; a
  resume that fails leaves it ``paused`` as its agent paused it (:func:`settle`).
- **Only that pause waits.** A user's pause (the API, E2B's, an auto-pause, a lifetime's) and
  Warren's own ``POST /v1/snapshots``, which leaves the sandbox paused (docs/api.md §5), set no
  mark: a command is refused at once, as before.
- **Bounded.** The snapshot's CP refreshes its mark every :data:`BEAT_S` while it runs
  (:func:`kept_fresh`); a mark not refreshed for :data:`STALE_S` is a plain pause (its CP died
  mid-snapshot: session 32; before, such a mark held commands for the snapshot's whole budget).
  No waiter waits longer than :data:`HOLD_S` (the E2B snapshot's own budget: the export's
  ``snapshots.CREATE_BUDGET_S``, the resume's 120 s, their DB steps) either. A waiter that gives
  up, or is not admitted, is answered what it would have been without waiting.
- **Admission.** A waiter holds a stream slot while it waits (``services/stream_slots.py``): it
  counts in its team's open streams and in its owner's ``max_streams_per_owner``, the bound it
  is refused by (then it does not wait: today's answer). So one account's waiters in a process
  are at most its streams' bound, whatever its request rate. Its credentials are re-checked as
  a stream's are: revoked, the wait ends with 401 ``access_revoked``.
- **Polling**, not an in-process event (the snapshot may run in another replica): one poll per
  sandbox per process however many wait (:class:`_Poll`), of one indexed row, every 10 ms at
  first and then less often up to every :data:`_MAX_STEP_S`.

The check is made only where a lookup found the sandbox ``paused`` and the verb needs it
``running`` (:func:`wait_out`): a running sandbox's commands cost nothing more. Each caller
looks again after a wait, and waits again while it finds the next snapshot's mark: a snapshot
right after another (E2B snapshots in a loop) had a command that waited out the first refused
409 by the second (session 35, test_snapshot_wait in a clean-clone run).

A command that read the row just before the mark may reach the agent once it has paused the
sandbox. So the snapshot has the agent pause it with ``resume_after``
(``services/snapshot_source.py``), and such a call waits there for the resume
(``agent/resume_holds.py``, session 35; sessions 31-34 left 100 ms between the mark and the
pause instead, and exec streams, terminals, envd ``Start``, writes and listings that came
later were refused). An agent older than that refuses it (FAILED_PRECONDITION, "not running"
or "being paused"): the unary exec and file reads, the calls clients loop on, then try once
more when the row says the sandbox is paused for its snapshot (:func:`refused_for_snapshot`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock
from warren.cp.db.engine import driver
from warren.cp.services import stream_slots
from warren.cp.services.context import AuthContext
from warren.errors import AgentError, TooManyRequests
from warren.ids import sandbox_id

log = logging.getLogger("warren.snapshot_hold")

TRANSIENT = "snapshot"  # sandboxes.paused_state while the sandbox is paused for its own snapshot
HOLD_S = 450.0  # export 300 s + resume 120 s + the snapshot's DB steps
BEAT_S = 5.0  # how often a running snapshot refreshes its mark
STALE_S = 30.0  # a mark not refreshed for this long was left by a CP that died mid-snapshot
_FIRST_STEP_S = 0.01
_MAX_STEP_S = 0.1
# The team count is not what bounds a waiter (its owner's is); the platform team, which has no
# owner, is the operator's.
_TEAM_SLOTS = 1 << 30

_STATE = "SELECT status, paused_state, last_updated FROM sandboxes WHERE id = $1"
_SETTLE = "UPDATE sandboxes SET paused_state = $2 WHERE id = $1 AND paused_state = $3"
_REFRESH = "UPDATE sandboxes SET last_updated = $2 WHERE id = $1 AND paused_state = $3"


def held(row: Mapping[str, Any] | None, now: datetime | None = None) -> bool:
    """Whether the row says: paused for its own snapshot, and not for longer than it may be."""
    if row is None or row["status"] != "paused" or row["paused_state"] != TRANSIENT:
        return False
    since: datetime = row["last_updated"]
    return ((now or clock.now()) - since).total_seconds() < STALE_S


@contextlib.asynccontextmanager
async def kept_fresh(engine: AsyncEngine, sb_uuid: uuid.UUID) -> AsyncIterator[None]:
    """While the body (a snapshot and its resume) runs, the sandbox's mark, once set, is
    refreshed every :data:`BEAT_S`: waiters see a live snapshot, not a dead CP's mark. A refresh
    that fails is tried at the next beat (a mark let go stale meanwhile is a plain pause)."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(BEAT_S)
            try:
                async with driver(engine) as conn:
                    await conn.execute(_REFRESH, sb_uuid, clock.now(), TRANSIENT)
            except Exception as e:
                log.warning("sandbox %s: its snapshot's mark was not refreshed: %s", sandbox_id(sb_uuid), e)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def waits(states: Iterable[str] | None) -> bool:
    """Whether a verb that accepts ``states`` waits out a snapshot's pause: it needs the sandbox
    running (a verb that takes a paused one too, a snapshot's or a metrics read, does not)."""
    allowed = tuple(states or ())
    return "running" in allowed and "paused" not in allowed


async def settle(engine: AsyncEngine, sb_uuid: uuid.UUID, state: str | None) -> None:
    """The snapshot is over and the sandbox stays paused (its resume failed): its mark becomes
    how its agent paused it (``state``: "disk", or None for a freeze)."""
    async with driver(engine) as conn:
        await conn.execute(_SETTLE, sb_uuid, state, TRANSIENT)


async def refused_for_snapshot(
    engine: AsyncEngine, ctx: AuthContext, sb_uuid: uuid.UUID, e: AgentError, since: datetime
) -> bool:
    """Whether a call sent at ``since`` that the agent refused as not running (before it
    started: the caller's to know) may be made again: the sandbox is paused for its snapshot
    (waited out now), or was and has been resumed since. A container that died, its row still
    ``running`` until the host monitor sees it, is not tried again."""
    if e.rpc_code != "FAILED_PRECONDITION":
        return False
    row = await _state(engine, sb_uuid)
    if held(row):
        return await wait_out(engine, ctx, sb_uuid)
    return row is not None and row["status"] == "running" and row["last_updated"] >= since


async def _state(engine: AsyncEngine, sb_uuid: uuid.UUID) -> Mapping[str, Any] | None:
    async with driver(engine) as conn:
        row: Mapping[str, Any] | None = await conn.fetchrow(_STATE, sb_uuid)
    return row


class _Poll:
    """The one poll of a sandbox's row in this process while anyone waits on it: done when the
    row is no longer held (or gone), cancelled when its last waiter leaves."""

    def __init__(self, engine: AsyncEngine, sb_uuid: uuid.UUID) -> None:
        self.waiters = 0
        self.task = asyncio.create_task(self._run(engine, sb_uuid))

    async def _run(self, engine: AsyncEngine, sb_uuid: uuid.UUID) -> None:
        step, polls, t0 = _FIRST_STEP_S, 1, clock.monotonic()
        while held(await _state(engine, sb_uuid)):
            await asyncio.sleep(step)
            step, polls = min(step * 2, _MAX_STEP_S), polls + 1
        ms = (clock.monotonic() - t0) * 1000
        sid = sandbox_id(sb_uuid)
        log.info("event=snapshot_wait sandbox=%s polls=%d ms=%.0f waiters=%d", sid, polls, ms, self.waiters)


_polls: dict[uuid.UUID, _Poll] = {}


async def wait_out(engine: AsyncEngine, ctx: AuthContext, sb_uuid: uuid.UUID) -> bool:
    """The sandbox was found ``paused``: if it is paused for its own snapshot, wait until it is
    not. Whether the caller should look again (it waited, or the sandbox is no longer paused);
    else it answers with what it found, as it would have."""
    row = await _state(engine, sb_uuid)
    if not held(row):
        return row is not None and row["status"] != "paused"  # resumed since the caller looked
    with stream_slots.Slot() as slot:
        try:
            slot.claim(ctx, _TEAM_SLOTS)
        except TooManyRequests:
            return False  # past its owner's bound: not admitted to wait
        try:
            async with asyncio.timeout(HOLD_S):
                # Guarded: credentials revoked meanwhile end the wait (401), as they end a stream.
                await slot.guard(_until_released(engine, sb_uuid, row))
        except TimeoutError:
            log.warning("sandbox %s: still paused for its snapshot after %.0f s", sandbox_id(sb_uuid), HOLD_S)
        except stream_slots.Revoked:
            raise
        except Exception as e:  # a query failed: answered as without waiting
            log.warning("sandbox %s: the wait for its snapshot failed: %s", sandbox_id(sb_uuid), e)
    return True


async def _until_released(engine: AsyncEngine, sb_uuid: uuid.UUID, row: Mapping[str, Any] | None) -> None:
    while held(row):  # a shared poll may end on an earlier snapshot's end: this one's is read
        await _shared_poll(engine, sb_uuid)
        row = await _state(engine, sb_uuid)


async def _shared_poll(engine: AsyncEngine, sb_uuid: uuid.UUID) -> None:
    """Until this process's one poll of the sandbox sees it no longer held."""
    poll = _polls.get(sb_uuid)
    if poll is None or poll.task.done():
        poll = _polls[sb_uuid] = _Poll(engine, sb_uuid)
    poll.waiters += 1
    try:
        await asyncio.shield(poll.task)
    finally:
        poll.waiters -= 1
        if poll.waiters == 0:
            poll.task.cancel()
            if _polls.get(sb_uuid) is poll:
                del _polls[sb_uuid]
