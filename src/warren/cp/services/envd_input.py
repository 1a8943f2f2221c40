"""How much input E2B's ``SendInput`` / ``StreamInput`` may have on its way to one process
(docs/e2b.md §3.1): the exec stream's bound (``exec_stream.STDIN_QUEUE_BYTES``, 256 KiB), or one
message when nothing else is queued for that process, and per team at most that bound times its
stream cap (``max_streams_per_team``), as its exec streams may hold.

Input is held from the moment its call is admitted until the agent has taken it: the agent
answers ``SendStdin`` once the guest has the bytes, and the guest stops taking more once the
command leaves some unread, so a command that never reads holds its sender's call (and the bytes)
until it ends. Without a bound, a tenant sending many calls at once at such a command made the CP
and the agent hold each one whole (measured: 32 MiB sent at once held CP +214, agent +114 MiB).
Input past the bound is refused with 429 ``stdin_full`` (Connect's ``resource_exhausted``, E2B's
``RateLimitException``): nothing waits in the CP for room. Bytes go to the agent in pieces of
``exec_stream.STDIN_PIECE`` (64 KiB), one call's after another's (per process, in arrival
order), so the agent holds one piece per process.

Counts are per CP process and in memory, as the stream slots are (``services/stream_slots``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from warren.cp.services.exec_stream import STDIN_PIECE, STDIN_QUEUE_BYTES
from warren.errors import TooManyRequests

Key = tuple[str, int | str]  # (sandbox id, pid or tag)


@dataclass
class _Queue:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    held: int = 0  # bytes admitted and not yet taken by the agent
    calls: int = 0  # calls admitted and not finished


_queues: dict[Key, _Queue] = {}
_team_held: Counter[uuid.UUID | None] = Counter()


def held(key: Key) -> int:
    q = _queues.get(key)
    return q.held if q is not None else 0


def team_held(team: uuid.UUID | None) -> int:
    return _team_held[team]


def _admit(q: _Queue, team: uuid.UUID | None, size: int, team_limit: int) -> None:
    if q.held and q.held + size > STDIN_QUEUE_BYTES:
        raise TooManyRequests(
            f"this process already has {q.held >> 10} KiB of input queued (at most "
            f"{STDIN_QUEUE_BYTES >> 10} KiB a process: it is not reading its stdin); retry later",
            code="stdin_full",
            limit=STDIN_QUEUE_BYTES,
        )
    if _team_held[team] and _team_held[team] + size > team_limit:
        raise TooManyRequests(
            f"this team already has {_team_held[team] >> 10} KiB of input queued for its processes "
            f"(at most {team_limit >> 10} KiB); retry later",
            code="stdin_full",
            limit=team_limit,
        )


async def feed(
    key: Key,
    team: uuid.UUID | None,
    data: bytes,
    send: Callable[[bytes], Awaitable[None]],
    *,
    max_streams: int,
) -> None:
    """Send ``data`` to the process ``key`` by ``send`` (one agent call a piece), or raise 429
    ``stdin_full`` at once when the process or the team already has its bound queued."""
    q = _queues.setdefault(key, _Queue())
    try:
        _admit(q, team, len(data), max_streams * STDIN_QUEUE_BYTES)
    except TooManyRequests:
        if not q.calls:
            del _queues[key]
        raise
    q.held += len(data)
    q.calls += 1
    _team_held[team] += len(data)
    left = len(data)
    try:
        async with q.lock:  # one call's pieces after another's, in arrival order
            view = memoryview(data)
            for i in range(0, len(data), STDIN_PIECE):
                piece = bytes(view[i : i + STDIN_PIECE])
                await send(piece)
                q.held -= len(piece)
                _team_held[team] -= len(piece)
                left -= len(piece)
            if not data:
                await send(b"")  # an empty input is still the process's to refuse
    finally:
        q.held -= left
        _team_held[team] -= left
        if _team_held[team] <= 0:
            del _team_held[team]
        q.calls -= 1
        if not q.calls:
            del _queues[key]
