"""The share of the CP's event loop that what sandboxes' servers send through the proxy may take.

The proxy parses a server's response (h11) and WebSocket frames (``websockets``) on the CP's
loop, event by event: a chunk of a chunked body, a frame. Events cost ~5 us each whatever their
size, so a server sending 1-byte pieces to a client that reads them as fast as they come kept a
CP core busy and every other tenant's API calls waiting (session 22,
test_attack_session22_preview_chunks). Each connection is paced (http.py, ws.py: a burst, then
so many events a second, the loop let go every turn), and all the connections to one account's
sandboxes share a pace of their own here (:func:`shared`; the team's, for the platform team),
so that many connections do not multiply it: ``OWNER_EVENTS_PER_S`` is ~8 % of a core.

The shared pace is found through a context variable, set for the exchange's task (and the tasks
it starts) by the proxy once the connection is counted (``app.py``).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar

OWNER_EVENTS_BURST = 16384
OWNER_EVENTS_PER_S = 16384.0


class Bucket:
    """Tokens for events: ``burst`` at once, refilled at ``rate`` a second."""

    __slots__ = ("at", "burst", "rate", "tokens", "users")

    def __init__(self, burst: int, rate: float) -> None:
        self.burst, self.rate = float(burst), rate
        self.tokens, self.at, self.users = float(burst), time.monotonic(), 0

    def left(self) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return self.tokens

    def take(self, n: int = 1) -> None:
        self.left()
        self.tokens -= n

    def wait_s(self, want: int) -> float:
        """How long until ``want`` tokens are back, when fewer than one is left (else 0)."""
        left = self.left()
        return 0.0 if left >= 1 else (want - left) / self.rate


current: ContextVar[Bucket | None] = ContextVar("warren_proxy_shared_pace", default=None)
_shared: dict[uuid.UUID, Bucket] = {}  # the event loop is single-threaded: no lock needed


@contextlib.contextmanager
def shared(key: uuid.UUID) -> Iterator[None]:
    """The exchange (this task and those it starts) under ``key``'s shared pace."""
    bucket = _shared.get(key)
    if bucket is None:
        bucket = _shared[key] = Bucket(OWNER_EVENTS_BURST, OWNER_EVENTS_PER_S)
    bucket.users += 1
    token = current.set(bucket)
    try:
        yield
    finally:
        current.reset(token)
        bucket.users -= 1
        if bucket.users <= 0 and _shared.get(key) is bucket:
            del _shared[key]


def wait_s(own: Bucket, want: int) -> float:
    """How long an exchange waits before its next event: its own pace and the shared one's."""
    mine = own.wait_s(want)
    other = current.get()
    return max(mine, other.wait_s(want)) if other is not None else mine


def take(own: Bucket, n: int = 1) -> None:
    own.take(n)
    other = current.get()
    if other is not None:
        other.take(n)


def left(own: Bucket) -> float:
    other = current.get()
    return min(own.left(), other.left()) if other is not None else own.left()
