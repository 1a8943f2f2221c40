"""A build's log writer (``services/template_build_log.py``) against a real database: bytes taken
from the buffer are never lost, whoever cancels the task that flushes them.

CI once showed a failed build's log without its last step's header: the ticker was cancelled
as the build ended while its flush, holding that header, waited for the database; the rollback
dropped the bytes it had already taken from the buffer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness.fixtures import emptied_engine
from warren import ids
from warren.cp.db.engine import transaction
from warren.cp.db.tables import template_builds
from warren.cp.services.template_build_log import CANCELLED, LogWriter, read_log


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    async with emptied_engine(db_url, "template_builds", "template_build_logs", pool_size=4) as e:
        yield e


async def _build(engine: AsyncEngine) -> uuid.UUID:
    build_id = ids.new_uuid()
    async with transaction(engine) as conn:
        await conn.execute(
            template_builds.insert().values(
                id=build_id, team_id=ids.new_uuid(), name="t", spec="FROM minimal", status="running"
            )
        )
    return build_id


async def _wait_for_a_lock_wait(engine: AsyncEngine) -> None:
    """Until some session of this database waits on a row lock (the flush, on the build's row)."""
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    for _ in range(500):
        async with engine.connect() as conn:
            if (await conn.execute(query)).scalar_one():
                return
        await asyncio.sleep(0.01)
    raise AssertionError("the flush never reached the build's row")


async def _end(writer: LogWriter, engine: AsyncEngine, build_id: uuid.UUID, text: str) -> None:
    async with writer.ending(), transaction(engine) as conn:
        await conn.execute(
            template_builds.update().where(template_builds.c.id == build_id).values(status="failed")
        )
        await writer.last_line(conn, text)


@pytest.mark.parametrize("cancelled", ["the-ticker", "a-flush-from-write"])
async def test_a_flush_cancelled_while_it_waits_for_the_database_keeps_its_bytes(
    engine: AsyncEngine, cancelled: str
) -> None:
    build_id = await _build(engine)
    writer = LogWriter(engine, build_id, max_bytes=1 << 20)
    await writer.line("Step 1/2: RUN true")
    await writer.flush()
    async with engine.connect() as blocker:  # holds the build's row, as a slow database would
        await blocker.execute(
            sa.select(template_builds.c.id).where(template_builds.c.id == build_id).with_for_update()
        )
        await writer.line("Step 2/2: RUN echo boom; exit 7")
        flushing = asyncio.create_task(
            writer.ticker(heartbeat_s=3600) if cancelled == "the-ticker" else writer.flush()
        )
        await _wait_for_a_lock_wait(engine)
        await writer.write(b"boom\n")  # output goes on meanwhile
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        await blocker.rollback()
    await _end(writer, engine, build_id, "error: step 2: the command exited with 7")

    page = await read_log(engine, build_id, 0, 1 << 20)
    assert page.data == (
        "Step 1/2: RUN true\nStep 2/2: RUN echo boom; exit 7\nboom\n"
        "error: step 2: the command exited with 7\n"
    )
    assert page.done and page.next_offset == len(page.data)


async def test_a_cancel_asked_of_a_running_build_is_seen_at_its_next_flush(engine: AsyncEngine) -> None:
    """Another replica's cancel marks the row (still ``running``: its step holds its room until
    stopped); the running replica's next flush or heartbeat sees it and stops the build."""
    build_id = await _build(engine)
    writer = LogWriter(engine, build_id, max_bytes=1 << 20)
    stopped: list[bool] = []
    writer.on_ended = lambda: stopped.append(True)
    await writer.line("Step 1/1: RUN sleep 300")
    await writer.flush()
    assert not writer.ended
    async with transaction(engine) as conn:
        await conn.execute(
            template_builds.update().where(template_builds.c.id == build_id).values(error=CANCELLED)
        )
    await writer.flush()  # a heartbeat: nothing to write
    await writer.flush()
    assert writer.ended and stopped == [True]  # once
