"""What a command's streams share, whether it runs on pipes (``process``: exec, attach) or on a
terminal (``pty``): subscribers that get its start event, a replay of recent output and its
exit event; input queued for the child with backpressure on whoever sends it; the op that
feeds that input (``send_stdin``, ``pty_input``).
"""

import os

from .conn import HIGH_WATER, Op
from .protocol import K_DATA, K_END, K_EVENT, jdump

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from .conn import Conn


class Streamed:
    """The subscriber and input bookkeeping of a :class:`~.process.Proc` or a
    :class:`~.pty.Pty`; each says what it replays, what its exit adds and how its input is
    written."""

    pid: int
    exit_code: "int | None"
    finished: bool
    subs: "list[Conn]"
    inbuf: bytearray
    in_waiters: "list[Conn]"

    def replay(self) -> "Iterable[tuple[int, bytes]]":
        """The (frame kind, data) of the recent output a late subscriber is sent first."""
        raise NotImplementedError

    def exit_fields(self) -> "dict[str, Any]":
        """What the exit event says beyond its code (an ``error`` here wins over the signal's)."""
        return {}

    def feed(self, data: bytes, conn: "Conn") -> None:
        raise NotImplementedError

    def _flush_input(self) -> None:
        raise NotImplementedError

    def exit_event(self) -> bytes:
        code = self.exit_code if self.exit_code is not None else -1
        ev: dict[str, Any] = {"type": "exit", "exit_code": code, **self.exit_fields()}
        if code < 0 and "error" not in ev:
            ev["error"] = f"killed by signal {-code}"
        return jdump(ev)

    def subscribe(self, c: "Conn", replay: bool) -> None:
        c.send(K_EVENT, jdump({"type": "start", "pid": self.pid}))
        if replay:
            for kind, data in self.replay():
                c.send(kind, data)
        if self.finished:
            c.send(K_EVENT, self.exit_event())
            c.finish()
        else:
            self.subs.append(c)

    def _end_subscribers(self) -> None:
        """The exit event to every subscriber, whose stream ends with it."""
        ev = self.exit_event()
        for c in self.subs:
            c.send(K_EVENT, ev)
            c.finish()
        self.subs = []

    def _take_input(self, data: bytes, conn: "Conn") -> None:
        self.inbuf += data
        self._flush_input()
        if len(self.inbuf) >= HIGH_WATER:
            # Backpressure on the sender until the child reads its input.
            conn.pause_reading()
            self.in_waiters.append(conn)

    def _write_input(self, fd: int) -> bool:
        """As much of the queued input as ``fd`` takes now; False when it will never take any
        (EPIPE, EIO: the child's side is gone, and the queue is dropped)."""
        if self.inbuf:
            try:
                n = os.write(fd, self.inbuf)
                del self.inbuf[:n]
            except BlockingIOError:
                pass
            except OSError:
                self.inbuf.clear()
                return False
        return True

    def _wake_input(self) -> None:
        waiters, self.in_waiters = self.in_waiters, []
        for c in waiters:
            c.resume_reading()


class InputOp(Op):
    """``send_stdin`` / ``pty_input``: DATA frames are the command's input, END is answered."""

    def __init__(self, conn: "Conn", target: "Streamed") -> None:
        super().__init__(conn)
        self.target = target

    def on_frame(self, kind: int, payload: bytes) -> None:
        if kind == K_DATA:
            self.target.feed(payload, self.conn)
        elif kind == K_END:
            self.reply({})
        else:
            super().on_frame(kind, payload)

    def on_close(self) -> None:
        if self.conn in self.target.in_waiters:
            self.target.in_waiters.remove(self.conn)
