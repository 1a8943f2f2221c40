"""A build's log (docs/templates.md §4): written in chunks as the build runs, read from a byte
offset, and streamed as server-sent events.

The writer buffers output and appends a ``template_build_logs`` row every ~200 ms or 64 KiB,
moving ``template_builds.log_bytes`` and ``heartbeat_at`` in the same transaction, so a reader
never sees a length without its bytes. The log is capped (``build_max_log_mb``): past it the
writer keeps only the last lines in memory (for the build's ``error``) and logs a marker.
Readers get text: offsets count bytes, and a read never ends inside a UTF-8 sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import template_build_logs, template_builds

FLUSH_S = 0.2
FLUSH_BYTES = 64 * 1024
TAIL_LINES = 30
TAIL_BYTES = 4096
MAX_READ = 4 * 1024 * 1024
DEFAULT_READ = 1024 * 1024
STREAM_POLL_S = 0.2
STREAM_KEEPALIVE_S = 15.0
TERMINAL = ("ready", "failed")
ACTIVE = ("queued", "running")  # as template_builds.ACTIVE (which imports this module)
# A failed build's error once its team cancelled it; on a running row, the cancel asked of the
# replica running it, which fails the row once its step has stopped (template_builds.py).
CANCELLED = "cancelled by the team"
# The same, asked by the team's delete (services/team_deletion.py); the team can no longer read it.
TEAM_DELETED = "cancelled: the team was deleted"
CANCELS = (CANCELLED, TEAM_DELETED)  # the marks a cancel leaves on a running row
SLOW_FLUSH_S = 1.0  # a flush slower than this is logged: readers see the log that much late

log = logging.getLogger("warren.builds")


class LogWriter:
    """Appends to one build's log; ``tail()`` is its last lines (the build's ``error``)."""

    def __init__(self, engine: AsyncEngine, build_id: uuid.UUID, max_bytes: int) -> None:
        self.engine = engine
        self.build_id = build_id
        self.max_bytes = max_bytes
        self.offset = 0
        self._buf = bytearray()
        self._tail: deque[bytes] = deque(maxlen=TAIL_LINES)
        self._partial = bytearray()
        self._truncated = False
        self._lock = asyncio.Lock()
        self._last_flush = clock.monotonic()
        # The build's row was seen ended (cancelled, or failed by the stale sweep) by a flush, or
        # cancelled on this process (``end``): ``on_ended`` (set while the build runs) is called
        # once, to stop the build's work.
        self.ended = False
        self.on_ended: Callable[[], object] | None = None
        self.reason = CANCELLED  # the cancel's mark (``CANCELS``), once ended by one

    async def write(self, data: bytes) -> None:
        self._remember(data)
        if self._truncated:
            return
        room = self.max_bytes - self.offset - len(self._buf)
        if len(data) > room:
            data = data[: max(room, 0)] + b"\n[log truncated: the build log is limited]\n"
            self._truncated = True
        self._buf += data
        if len(self._buf) >= FLUSH_BYTES or clock.monotonic() - self._last_flush >= FLUSH_S:
            await self.flush()

    async def line(self, text: str) -> None:
        await self.write(text.encode() + b"\n")

    def _remember(self, data: bytes) -> None:
        self._partial += data
        *lines, rest = bytes(self._partial).split(b"\n")
        self._tail.extend(line[-TAIL_BYTES:] for line in lines)
        self._partial = bytearray(rest[-TAIL_BYTES:])

    def tail(self) -> str:
        lines = [*self._tail, bytes(self._partial)] if self._partial else list(self._tail)
        return b"\n".join(lines).decode("utf-8", "replace").strip()[-TAIL_BYTES:]

    def reset_tail(self) -> None:
        """A new step starts: its failure shows its own output only."""
        self._tail.clear()
        self._partial.clear()

    async def flush(self) -> None:
        """Append the buffer (and beat the heartbeat, also with nothing to write). Shielded: a
        caller cancelled mid-flush (the ticker as the build ends, a step's output reader) would
        roll back the transaction that holds bytes already taken from the buffer; the flush
        completes, and whoever takes the log next waits for it on the lock."""
        await asyncio.shield(self._flush())

    async def _flush(self) -> None:
        started = clock.monotonic()
        async with self._lock, transaction(self.engine) as conn:
            await self._append(conn, b"")
        took = clock.monotonic() - started
        if took > SLOW_FLUSH_S:
            log.warning("event=build_log_flush_slow build_id=%s seconds=%.1f", self.build_id, took)

    @contextlib.asynccontextmanager
    async def ending(self) -> AsyncIterator[None]:
        """Hold the log around the transaction that ends the build (``last_line`` inside it).
        Taken before that transaction begins: a flush holding the log while it waits for the
        build's row, locked by the ending transaction waiting for the log, deadlocked both."""
        async with self._lock:
            yield

    async def last_line(self, conn: AsyncConnection, text: str) -> None:
        """The log's last line, in the caller's transaction (inside :meth:`ending`): the one that
        ends the build, so a reader that sees the build ended also sees all of its log."""
        assert self._lock.locked()
        await self._append(conn, text.encode() + b"\n", watch=False)

    async def _append(self, conn: AsyncConnection, more: bytes, *, watch: bool = True) -> None:
        taken = len(self._buf)  # writes go on meanwhile; the bytes leave the buffer once stored
        data = bytes(self._buf) + more
        self._last_flush = clock.monotonic()
        if data:
            await conn.execute(
                template_build_logs.insert().values(
                    build_id=self.build_id, start_offset=self.offset, data=data
                )
            )
        # The heartbeat's own write says whether the build is still wanted: no extra query.
        status, error = (
            await conn.execute(
                template_builds.update()
                .where(template_builds.c.id == self.build_id)
                .values(log_bytes=self.offset + len(data), heartbeat_at=clock.now())
                .returning(template_builds.c.status, template_builds.c.error)
            )
        ).one()
        del self._buf[:taken]
        self.offset += len(data)
        if watch and status not in ACTIVE:
            self.end("event=build_ended_elsewhere")
        elif watch and error in CANCELS:  # asked of another replica: the row ends once it stops
            self.end("event=build_cancel_seen", error)

    def end(self, event: str, reason: str = CANCELLED) -> None:
        """The build's row has ended or was cancelled (``event`` says how it was learnt,
        ``reason`` is the cancel's mark): stop its work, once. Its log ends with the row: output
        still buffered is not written."""
        if self.ended:
            return
        self.ended = True
        self.reason = reason
        log.info("%s build_id=%s", event, self.build_id)
        if self.on_ended is not None:
            self.on_ended()

    async def ticker(self, heartbeat_s: float) -> None:
        """While the build runs: output waits at most FLUSH_S, and a quiet build still beats
        its heartbeat every ``heartbeat_s``."""
        while True:
            await asyncio.sleep(FLUSH_S)
            if self._buf or clock.monotonic() - self._last_flush >= heartbeat_s:
                try:
                    await self.flush()
                except Exception:  # the next tick tries again: a ticker gone ends the heartbeat
                    log.exception("event=build_log_flush_failed build_id=%s", self.build_id)


def _utf8_whole(data: bytes) -> bytes:
    """``data`` without a trailing incomplete UTF-8 sequence (it comes with the next read)."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        lead = data[n - back]
        if lead & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for its lead
        if lead < 0x80:
            return data
        need = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
        return data if back >= need else data[:-back]
    return data


@dataclass(frozen=True)
class LogPage:
    data: str
    offset: int
    next_offset: int
    done: bool
    status: str


async def read_log(engine: AsyncEngine, build_id: uuid.UUID, offset: int, limit: int) -> LogPage:
    """The log's bytes from ``offset`` (at most ``limit``), as text. ``done``: the build has
    ended and nothing follows ``next_offset``."""
    async with autocommit(engine) as conn:
        head = (
            await conn.execute(
                sa.select(template_builds.c.status, template_builds.c.log_bytes).where(
                    template_builds.c.id == build_id
                )
            )
        ).first()
        assert head is not None  # the caller found the build
        rows = (
            await conn.execute(
                sa.select(template_build_logs.c.start_offset, template_build_logs.c.data)
                .where(
                    template_build_logs.c.build_id == build_id,
                    template_build_logs.c.start_offset + sa.func.length(template_build_logs.c.data) > offset,
                    template_build_logs.c.start_offset < offset + limit,
                )
                .order_by(template_build_logs.c.start_offset)
            )
        ).all()
    out = bytearray()
    for start, data in rows:
        out += bytes(data)[max(offset - start, 0) :]
    whole = _utf8_whole(bytes(out[:limit]))
    end = offset + len(whole)
    done = head.status in TERMINAL and end >= head.log_bytes
    if done and len(whole) < len(out[:limit]):
        whole, end = bytes(out[:limit]), offset + len(out[:limit])  # the log ends mid-sequence
    return LogPage(whole.decode("utf-8", "replace"), offset, end, done, head.status)


StatusReader = Callable[[], Awaitable[dict[str, object]]]


def _event(name: str, payload: object) -> str:
    return f"event: {name}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def stream_log(
    engine: AsyncEngine, build_id: uuid.UUID, offset: int, status_of: StatusReader, max_s: float
) -> AsyncIterator[str]:
    """Server-sent events: ``log`` (``{"data", "offset", "next_offset"}``) and ``status`` (the
    build, at the start, on every change and last), until the build has ended and its log is
    all sent (or ``max_s`` passed). The status is read before the log: a build seen ended has
    all its log written (its last line commits with its status), so nothing is cut short. A
    comment line keeps idle connections open."""
    last_status: dict[str, object] | None = None
    started = quiet_since = clock.monotonic()
    while True:
        status = await status_of()
        page = await read_log(engine, build_id, offset, DEFAULT_READ)
        if page.next_offset != offset:
            yield _event("log", {"data": page.data, "offset": offset, "next_offset": page.next_offset})
            offset, quiet_since = page.next_offset, clock.monotonic()
        if page.done:
            # The build may have ended between the status read and the log read: the status
            # read now is its final one, and the end must come last.
            status = await status_of()
        if status != last_status:
            yield _event("status", status)
            last_status = status
        if page.done:
            return
        if page.next_offset - page.offset >= DEFAULT_READ:
            continue  # more is waiting
        if clock.monotonic() - started > max_s:
            return
        if clock.monotonic() - quiet_since > STREAM_KEEPALIVE_S:
            yield ": keepalive\n\n"
            quiet_since = clock.monotonic()
        await asyncio.sleep(STREAM_POLL_S)
