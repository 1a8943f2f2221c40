"""The budget of a stream client's messages that hand the process no input: an exec stream's
signals, ``close_stdin`` and frames refused as bad (both its ``start`` and its ``attach``), and
an E2B ``StreamInput``'s keepalives and empty data.

Stdin has its own bounds (the stream's window, the account's turns); these had none (session 34,
test_attack_session34_stream_frames). While a command ran, a client's frames that were not JSON
were each read, parsed and answered with a non-fatal error at line rate: 8.5 GiB in 9 s, 5.2
CPU-s of the CP's one loop, over one stream. A flood of ``signal`` or ``close_stdin`` frames
queued a request for the agent each, faster than gRPC sent them: the CP grew by 64 MiB in 2 s. A
``StreamInput`` of keepalives kept a CP core parsing them for as long as the call lived.

Each such message takes a token, a refused one :data:`REFUSED_COST`; past the budget the stream
is ended with ``too_many_messages`` (429). Waiting instead would have the CP work through what
the client left in the socket's buffers long after it went (~3 MiB: hours at this pace). An
interactive client (Ctrl-C, a keepalive every 50 s) never comes near it.
"""

from __future__ import annotations

from warren.cp.services.rate_limits import TokenBucket
from warren.errors import TooManyRequests

__all__ = ["BURST", "PER_S", "REFUSED_COST", "FramePace"]

BURST = 256
PER_S = 64.0
# A refused frame may be as large as a WebSocket message (1 MiB) and is parsed before it is
# refused: 8 at once, then 2 a second.
REFUSED_COST = 32


class FramePace:
    """One stream's budget: a token bucket that ends the stream when it runs dry."""

    def __init__(self, burst: int = BURST, per_s: float = PER_S) -> None:
        self.bucket = TokenBucket(per_s, burst)

    def take(self, cost: int = 1) -> None:
        """Take ``cost`` tokens, or raise ``TooManyRequests`` (``too_many_messages``) past the
        budget."""
        if not self.bucket.take(cost):
            raise TooManyRequests(
                f"more than {self.bucket.burst:g} messages without input at once, or {self.bucket.rate:g} "
                f"a second after (a refused one counts as {REFUSED_COST}): the stream is ended",
                code="too_many_messages",
            )
