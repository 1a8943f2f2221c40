"""The budget of WebSocket frames that complete no message, for either side the CP reads: a
client of its own WebSocket routes (``ws_guard``) and a sandbox's server behind a preview
(``proxy/ws.py``).

Frames that complete no message and carry less than ``IDLE_FRAME_BYTES`` (pings, pongs, small
fragments): ``IDLE_FRAMES`` at once, then ``IDLE_FRAMES_PER_S``; past that the connection is
closed with 1008. Each is read and parsed on the CP's loop while nothing else bounds it (no
message is whole for the app to take, so nothing pauses the reading): a sandbox's stream of
empty pings kept a CP core busy (~0.5 MB/s saturates one), and its client's message, held as a
list of 1-2 byte fragments, cost ~20x its size (session 22, test_attack_session22_preview_cpu); a
client's empty continuation frames grew the CP without bound, its unsolicited pongs were read
at line rate (session 28, test_attack_session28_ws_protocol). Keepalive pings (one every few
seconds) and fragments of 1 KiB or more are never counted against it.
"""

from __future__ import annotations

import time

from websockets.frames import Frame, Opcode

__all__ = ["IDLE_FRAMES", "IDLE_FRAMES_PER_S", "IDLE_FRAME_BYTES", "IDLE_REASON", "IdleFramePace"]

IDLE_FRAMES = 256
IDLE_FRAMES_PER_S = 64.0
IDLE_FRAME_BYTES = 1024
IDLE_REASON = "too many frames without a message"

_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


class IdleFramePace:
    """One connection's budget of frames that complete no message."""

    def __init__(self) -> None:
        self.left, self.at = float(IDLE_FRAMES), time.monotonic()

    def take(self, frame: Frame) -> bool:
        """False once ``frame`` (one that completes no message, small) is past the budget."""
        if len(frame.data) >= IDLE_FRAME_BYTES or (frame.fin and frame.opcode in _DATA):
            return True
        now = time.monotonic()
        self.left = min(float(IDLE_FRAMES), self.left + (now - self.at) * IDLE_FRAMES_PER_S) - 1
        self.at = now
        return self.left >= 0
