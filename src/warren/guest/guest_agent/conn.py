"""One client connection: framing in and out, back-pressure, and the operation it carries.

Each connection carries one request (its first frame) and that request's :class:`Op`. Output
is buffered up to ``HIGH_WATER`` before the producer is paused, which is what bounds memory.
"""

# ruff: noqa: SIM105

import _socket
import os

from .loop import EPOLLERRHUP, EPOLLIN, EPOLLOUT, Loop
from .outq import OutQueue
from .protocol import HDR, K_ERROR, K_REQ, K_RESULT, MAX_IN_FRAME, GuestFail, jdump, jload, log, os_fail

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .server import Guest


# Output buffered for one connection before we stop reading the producer (process pipes or
# a file); the producer resumes once the buffer drains below LOW. This is what bounds memory.
HIGH_WATER = 256 << 10


LOW_WATER = 64 << 10


LINGER = 10.0  # how long a finished connection waits for the client to hang up


class Conn:
    """One client connection = one request. Non-blocking, buffered both ways."""

    def __init__(self, guest: "Guest", sock: "_socket.socket") -> None:
        self.g = guest
        self.sock = sock
        self.fd = fd = sock.fileno()
        self.draining = False
        self.linger: list[Any] | None = None
        self.inbuf = bytearray()
        self.out = OutQueue()  # what the client has yet to take (outq.py: big pieces not copied)
        self.op: Op | None = None
        self.closed = False
        self.closing = False
        self.reading = True
        self.on_drain: Callable[[], None] | None = None
        guest.loop.watch(fd, EPOLLIN, self.on_event)

    def _update_mask(self) -> None:
        if self.closed:
            return
        if self.draining:
            mask = EPOLLIN
        else:
            mask = (EPOLLIN if self.reading and not self.closing else 0) | (EPOLLOUT if self.out else 0)
        self.g.loop.set_mask(self.fd, mask)

    def on_event(self, ev: int) -> None:
        if self.draining:
            self._discard()
            return
        if ev & EPOLLOUT:
            self.flush()
        if self.closed:
            return
        if ev & (EPOLLIN | EPOLLERRHUP):
            if self.reading and not self.closing:
                self.read()
            elif ev & EPOLLERRHUP:
                self.close()

    def _recv(self) -> bytes | None:
        """What the socket holds now: None when nothing yet, b"" when the client is gone (EOF or a
        socket error)."""
        try:
            return os.read(self.fd, 262144)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def read(self) -> None:
        data = self._recv()
        if data is None:
            return
        if not data:
            # Protocol clients never half-close: EOF means the client went away.
            self.close()
            return
        self.inbuf += data
        self.parse()

    def parse(self) -> None:
        buf = self.inbuf
        off = 0
        while self.reading and not self.closed and not self.closing and len(buf) - off >= HDR:
            n = int.from_bytes(buf[off : off + 4], "big")
            if n > MAX_IN_FRAME:
                self.fail(GuestFail("invalid_argument", f"frame of {n} bytes is too large"))
                return
            if len(buf) - off - HDR < n:
                break
            kind = buf[off + 4]
            payload = bytes(buf[off + HDR : off + HDR + n])
            off += HDR + n
            self.dispatch(kind, payload)
        if off:
            del buf[:off]

    def dispatch(self, kind: int, payload: bytes) -> None:
        try:
            if self.op is None:
                if kind != K_REQ:
                    raise GuestFail("invalid_argument", "the first frame must be a request")
                req = jload(payload)
                if not isinstance(req, dict):
                    raise GuestFail("invalid_argument", "a request must be a JSON object")
                op = self.g.start_op(self, req)
                if self.closed or self.draining:
                    if op is not None:
                        op.on_close()  # it completed (or its client vanished) while starting
                else:
                    self.op = op
            else:
                self.op.on_frame(kind, payload)
        except GuestFail as e:
            self.fail(e)
        except OSError as e:
            self.fail(os_fail(e, "I/O error"))
        except Exception as e:
            log(f"request failed: {e!r}")
            self.fail(GuestFail("internal", f"{type(e).__name__}: {e}"))

    def fail(self, e: "GuestFail") -> None:
        self.send(K_ERROR, jdump({"kind": e.kind, "message": e.message}))
        self.finish()

    def pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            self._update_mask()

    def resume_reading(self) -> None:
        if not self.reading and not self.closed:
            self.reading = True
            self._update_mask()
            if self.inbuf:
                self.parse()

    def send(self, kind: int, payload: bytes = b"") -> None:
        if self.closed or self.closing:
            return
        hdr = len(payload).to_bytes(4, "big") + bytes((kind,))
        if self.out:
            self.out.append(hdr)
            self.out.append(payload)
            return
        try:
            n = os.writev(self.fd, (hdr, payload))
        except BlockingIOError:
            n = 0
        except OSError:
            self.close()
            return
        total = HDR + len(payload)
        if n < total:
            if n < HDR:
                self.out.append(hdr[n:])
                self.out.append(payload)
            else:
                self.out.append(memoryview(payload)[n - HDR :])
            self._update_mask()

    def flush(self) -> None:
        if self.out:
            try:
                self.out.write_to(self.fd)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
        if not self.out:
            if self.closing:
                self._half_close()
                return
            self._update_mask()
        if len(self.out) < LOW_WATER and self.on_drain is not None:
            cb = self.on_drain
            self.on_drain = None
            cb()

    def congested(self) -> bool:
        return len(self.out) >= HIGH_WATER

    def finish(self) -> None:
        """The response is complete: end the connection once everything queued has been sent."""
        if self.closed or self.draining:
            return
        self.closing = True
        self.on_drain = None
        if not self.out:
            self._half_close()
        else:
            self._update_mask()

    def _half_close(self) -> None:
        # Closing a unix socket while client data sits unread in our receive queue makes the
        # kernel fail the client's reads with ECONNRESET, and the client could lose our final
        # frame (an upload refused early, stdin racing a process exit). So shut down our side
        # only, discard whatever the client still sends, and close when it hangs up.
        self.draining = True
        self.inbuf = bytearray()
        self._release_op()
        try:
            self.sock.shutdown(_socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self._update_mask()
        self.linger = self.g.loop.call_later(LINGER, self.close)

    def _discard(self) -> None:
        if self._recv() == b"":
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        Loop.cancel(self.linger)
        self.g.loop.unwatch(self.fd)
        try:
            self.sock.close()
        except OSError:
            pass
        self._release_op()

    def _release_op(self) -> None:
        op = self.op
        self.op = None
        if op is not None:
            try:
                op.on_close()
            except Exception as e:
                log(f"cleanup failed: {e!r}")


class Op:
    """A request in progress on one connection. Unary ops finish inside their constructor."""

    def __init__(self, conn: "Conn") -> None:
        self.conn = conn

    def on_frame(self, kind: int, payload: bytes) -> None:
        raise GuestFail("invalid_argument", f"unexpected frame kind {kind}")

    def on_close(self) -> None:
        pass

    def reply(self, result: "dict[str, Any]") -> None:
        self.conn.send(K_RESULT, jdump(result))
        self.conn.finish()
