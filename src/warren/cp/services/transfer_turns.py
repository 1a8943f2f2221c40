"""Turns on the CP's event loop for one account's file transfers and streams (docs/security.md §24).

A file transfer relays 64 KiB messages between its client and an agent on the CP's one event
loop, and the loop runs every ready callback in turn: one team's 64 concurrent uploads put
dozens of message hand-offs (a gRPC write and its completion, the client's next bytes parsed)
ahead of every other team's request at each turn of the loop. Another team's reads went from
a p50 of 2 ms to 21-25 ms beside them (session 29), the CP not even busy (0.7 of a core).

Here an account (a transfer's owner; the team, for the platform team) hands on at most
``WARREN_TRANSFER_TURNS_PER_OWNER`` messages at once: an upload's write to the agent, a
download's send to its client. Its other transfers wait for a turn, holding one message each
(their clients' next bytes wait in the kernel), at no CPU cost. What the account moves is
unchanged: two hand-offs at once keep up with what an agent takes; only the breadth of its work
at each turn of the loop is bounded, so the loop goes around every account.

A hand-off that waits on its other end (a sandbox draining slowly, a client not reading) gives
its turn up after :data:`HOLD_S`, so that one slow transfer never keeps the account's others
waiting for long.

Exec streams and terminals take the same turns (:func:`turn`, one :class:`TransferTurns` per
process) for their input (direction ``input``): a stdin message's hand-off towards the agent,
which waits while the agent's credit window is full. Beside one team's 64 streams pushing stdin
another team's reads went from a p99 of 72-155 ms to 26-42 ms (``bench/stream_turns.py``). Their
output takes none: beside 32 or 64 streams of ``yes`` another team's reads were as fast with
turns as without (a p50 of 3-5 ms either way), the agent's output credit already pacing them.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from prometheus_client import Counter

from warren.config import get_settings
from warren.cp.telemetry import REGISTRY

# How long a hand-off keeps its turn while it waits on its other end.
HOLD_S = 0.05

TURN_WAITS = Counter(
    "warren_transfer_turn_waits",
    "File transfer and stream input messages that waited for their account's turn to be handed on",
    ["direction"],
    registry=REGISTRY,
)
for _direction in ("download", "upload", "input"):
    TURN_WAITS.labels(_direction)


class _Owner:
    __slots__ = ("free", "users")

    def __init__(self, turns: int) -> None:
        self.free = asyncio.Semaphore(turns)
        self.users = 0  # transfers holding or waiting for a turn: the entry goes with the last


class Turn:
    """One hand-off's turn (``async with``): taken on entry, given back on exit or after
    :data:`HOLD_S`, whichever comes first."""

    __slots__ = ("_direction", "_key", "_owner", "_timer", "_turns")

    def __init__(self, turns: TransferTurns, key: str, direction: str) -> None:
        self._turns, self._key, self._direction = turns, key, direction
        self._owner: _Owner | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> None:
        if self._turns.per_owner <= 0 or not self._key:
            return
        owner = self._turns.enter(self._key)
        self._owner = owner
        if owner.free.locked():
            TURN_WAITS.labels(self._direction).inc()
        try:
            await owner.free.acquire()
        except BaseException:
            self._owner = None
            self._turns.leave(self._key, owner, release=False)
            raise
        self._timer = asyncio.get_running_loop().call_later(HOLD_S, self._give_back)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._give_back()

    def _give_back(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            self._turns.leave(self._key, owner, release=True)


class TransferTurns:
    """Each account's turns (see the module docstring); ``per_owner`` 0 turns them off."""

    def __init__(self, per_owner: int) -> None:
        self.per_owner = per_owner
        self._owners: dict[str, _Owner] = {}

    def turn(self, key: str, direction: str) -> Turn:
        """A turn of ``key``'s account for one message (``direction``: upload or download)."""
        return Turn(self, key, direction)

    def enter(self, key: str) -> _Owner:
        owner = self._owners.get(key)
        if owner is None:
            owner = self._owners[key] = _Owner(self.per_owner)
        owner.users += 1
        return owner

    def leave(self, key: str, owner: _Owner, *, release: bool) -> None:
        if release:
            owner.free.release()
        owner.users -= 1
        if owner.users == 0 and self._owners.get(key) is owner:
            del self._owners[key]

    def tracked(self) -> int:
        """Accounts with a transfer holding or waiting for a turn."""
        return len(self._owners)


_shared: TransferTurns | None = None


def account_key(team_id: object, owner_id: object) -> str:
    """Whose turns a caller's messages take: its team's owning account, or the team itself
    when it has none (the platform team)."""
    return str(owner_id) if owner_id else str(team_id or "")


def turn(account: str, direction: str) -> Turn:
    """A turn of ``account`` (:func:`account_key`) for one message, in this process's turns."""
    global _shared
    if _shared is None:
        _shared = TransferTurns(get_settings().transfer_turns_per_owner)
    return _shared.turn(account, direction)


__all__ = ["HOLD_S", "TURN_WAITS", "TransferTurns", "Turn", "account_key", "turn"]
