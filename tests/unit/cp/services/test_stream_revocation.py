"""``stream_slots.Slot.guard`` / ``revoke`` (the cancel that ends a stream whose credentials
were revoked, services/stream_revocation.py) and ``grant_of`` (what is re-checked per kind of
credential). The re-check's SQL runs against PostgreSQL in the session 16 attack test."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from warren import ids
from warren.cp.services import stream_slots
from warren.cp.services.context import AuthContext
from warren.cp.services.stream_revocation import Grant, grant_of

TEAM, USER, KEY = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def _slot() -> stream_slots.Slot:
    slot = stream_slots.Slot()
    slot.claim(AuthContext(kind="api_key", team_id=TEAM, api_key_id=KEY), limit=10)
    return slot


async def test_revoke_ends_what_the_stream_awaits_as_revoked() -> None:
    slot = _slot()
    waiting = asyncio.Event()

    async def stream() -> None:
        waiting.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(slot.guard(stream()))
    await waiting.wait()
    slot.revoke()
    with pytest.raises(stream_slots.Revoked):
        await task
    assert task.cancelling() == 0  # our cancel was taken back: the task is not left cancelling
    slot.release()
    assert slot not in stream_slots.live_slots()


async def test_a_revoked_slot_refuses_its_next_guard_and_closes_the_work() -> None:
    slot = _slot()
    slot.revoke()  # nothing awaited: the next guard refuses
    coro = asyncio.sleep(0)
    with pytest.raises(stream_slots.Revoked):
        await slot.guard(coro)
    assert coro.cr_frame is None  # closed, never awaited (no "never awaited" warning)
    slot.release()


async def test_another_cancel_is_not_taken_for_a_revocation() -> None:
    slot = _slot()
    started = asyncio.Event()

    async def stream() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(slot.guard(stream()))
    await started.wait()
    task.cancel()  # e.g. the client went away
    with pytest.raises(asyncio.CancelledError):
        await task
    slot.release()


async def test_held_items_end_with_revoked() -> None:
    slot = _slot()

    async def items() -> object:
        yield 1
        await asyncio.sleep(3600)
        yield 2

    held = stream_slots.Held(items(), slot)
    assert await anext(held) == 1
    nxt = asyncio.create_task(anext(held))
    await asyncio.sleep(0.01)
    slot.revoke()
    with pytest.raises(stream_slots.Revoked):
        await nxt
    assert slot not in stream_slots.live_slots()  # the slot came back with the end


async def test_guard_notify_tells_the_client_and_ends_quietly() -> None:
    slot = _slot()
    told: list[str] = []

    async def notify(e: stream_slots.Revoked) -> None:
        told.append(e.code)

    started = asyncio.Event()

    async def session() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(slot.guard_notify(session(), notify))
    await started.wait()
    slot.revoke()
    await task
    assert told == ["access_revoked"]
    slot.release()


def test_grants_by_kind_of_credential() -> None:
    sb = uuid.uuid4()
    sid = ids.sandbox_id(sb)
    assert grant_of(AuthContext(kind="api_key", team_id=TEAM, api_key_id=KEY)) == Grant("key", KEY)
    assert grant_of(AuthContext(kind="jwt", team_id=TEAM, user_id=USER, role="member")) == Grant(
        "member", USER, TEAM
    )
    assert grant_of(AuthContext(kind="session", team_id=TEAM, user_id=USER)) == Grant("member", USER, TEAM)
    token = AuthContext(kind="sandbox_token", team_id=TEAM, only_sandbox=sid, token_epoch=3)
    assert grant_of(token) == Grant("sandbox", sb, epoch=3)
    assert grant_of(AuthContext(kind="jwt", team_id=None, user_id=USER)) is None  # no team: nothing to lose
