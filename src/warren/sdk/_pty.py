"""``sbx.pty``: interactive terminals (a shell, or any command, on a pseudo-terminal).

One WebSocket per handle (``/v1/sandboxes/{id}/pty``, docs/networking.md §2): input and output
are raw bytes, sizes and signals small JSON frames. Output is read as it comes by a reader of the
handle's own (a daemon thread for :class:`Sandbox`, a task for :class:`AsyncSandbox`), which calls
``on_data`` with each chunk. The terminal outlives its handle: ``disconnect()`` detaches and
``pty.connect(pid)`` attaches again (replaying the last 64 KiB of output first).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from warren.sdk._exceptions import StreamError, WarrenError
from warren.sdk._exec_frames import raise_frame_error
from warren.sdk._transport import Call, Op, WsClose, WsOpen, awaiting, blocking

__all__ = ["AsyncPty", "AsyncPtyHandle", "Pty", "PtyHandle"]

DataCallback = Callable[[bytes], Any]
# The server refuses binary input frames over 64 KiB: longer input is sent in pieces.
MAX_INPUT_FRAME = 64 << 10


class _PtyHandleBase:
    """A terminal: ``pid``, input, resizes, signals and, at the end, its exit code."""

    def __init__(
        self, transport: Any, sandbox_id: str, conn: Any, pid: int, on_data: DataCallback | None
    ) -> None:
        self._transport = transport
        self._sandbox_id = sandbox_id
        self._conn: Any = conn
        self.pid = pid
        self._on_data = on_data
        self.exit_code: int | None = None
        self._error: BaseException | None = None
        self._detached = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid} sandbox={self._sandbox_id}>"

    def _read_loop(self) -> Op[None]:
        """Run by the handle's reader until the exit, an error, or a disconnect."""
        conn = self._conn
        try:
            while True:
                try:
                    raw = yield Call(conn.recv)
                except Exception:  # the socket closed (a disconnect, or the server went away)
                    if not self._detached:
                        self._error = StreamError("the terminal stream closed", code="stream_closed")
                    break
                if isinstance(raw, bytes):
                    if self._on_data is not None:
                        yield Call(self._on_data, (raw,))
                    continue
                frame = json.loads(raw)
                kind = frame.get("type") if isinstance(frame, dict) else None
                if kind == "exit":
                    self.exit_code = int(frame.get("exit_code", -1))
                    break
                if kind == "error":
                    try:
                        raise_frame_error(frame)
                    except WarrenError as e:
                        self._error = e
                    break
        except Exception as e:  # an on_data callback failed: wait() re-raises it
            self._error = e
        finally:
            self._conn = None
        yield WsClose(conn)

    def _send(self, message: bytes | str) -> Op[None]:
        if self._conn is None:
            raise StreamError("this terminal handle is closed; use pty.connect(pid)", code="disconnected")
        try:
            yield Call(self._conn.send, (message,))
        except Exception as e:
            raise StreamError(f"the terminal stream closed: {e}", code="stream_closed") from e

    def _send_input(self, data: bytes | str) -> Op[None]:
        """Type ``data`` (text is UTF-8 encoded); ``"\\x03"`` is Ctrl-C, ``"\\x04"`` Ctrl-D.

        Example::

            t.send_input("ls -l\\n")
        """
        raw = data.encode() if isinstance(data, str) else bytes(data)
        for i in range(0, len(raw), MAX_INPUT_FRAME):
            yield from self._send(raw[i : i + MAX_INPUT_FRAME])

    def _resize(self, cols: int, rows: int) -> Op[None]:
        """Set the terminal's size (1..1000 each); its programs get SIGWINCH.

        Example::

            t.resize(120, 40)
        """
        yield from self._send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    def _send_signal(self, signal: int) -> Op[None]:
        """Send ``signal`` to the terminal's foreground process group (what Ctrl-C reaches).

        Example::

            t.send_signal(signal.SIGINT)   # like typing Ctrl-C
        """
        yield from self._send(json.dumps({"type": "signal", "signal": int(signal)}))

    def _kill(self) -> Op[bool]:
        """SIGKILL the terminal (its foreground group and its session leader's group). False
        when it had already exited.

        Example::

            t.kill()
        """
        if self.exit_code is not None:
            return False
        yield from self._send_signal(9)
        return True

    def _start_reader(self) -> None:
        raise NotImplementedError

    def _result(self) -> int:
        if self.exit_code is not None:
            return self.exit_code
        if self._error is not None:
            raise self._error
        raise StreamError(
            "the terminal is detached (disconnect()); use pty.connect(pid)", code="disconnected"
        )

    def _disconnect(self) -> Op[None]:
        """Stop receiving output; the terminal keeps running (``pty.connect(pid)``).

        Example::

            pid = t.pid
            t.disconnect()
        """
        self._detached = True
        if self._conn is not None:
            yield WsClose(self._conn)


class PtyHandle(_PtyHandleBase):
    """A terminal of a :class:`~warren.Sandbox`. ``wait()`` returns its exit code."""

    send_input = blocking(_PtyHandleBase._send_input)
    resize = blocking(_PtyHandleBase._resize)
    send_signal = blocking(_PtyHandleBase._send_signal)
    kill = blocking(_PtyHandleBase._kill)
    disconnect = blocking(_PtyHandleBase._disconnect)

    def _start_reader(self) -> None:
        self._reader = threading.Thread(
            target=self._transport.run, args=(self._read_loop(),), name=f"warren-pty-{self.pid}", daemon=True
        )
        self._reader.start()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the terminal to exit and return its exit code (negative: killed by that
        signal). ``on_data`` keeps being called meanwhile.

        Example::

            t.send_input("exit 3\\n")
            print(t.wait(timeout=10))   # 3
        """
        self._reader.join(timeout)
        if self._reader.is_alive():
            raise TimeoutError(f"the terminal did not exit within {timeout}s")
        return self._result()


class AsyncPtyHandle(_PtyHandleBase):
    """A terminal of an :class:`~warren.AsyncSandbox`. ``await wait()`` returns its exit code."""

    send_input = awaiting(_PtyHandleBase._send_input)
    resize = awaiting(_PtyHandleBase._resize)
    send_signal = awaiting(_PtyHandleBase._send_signal)
    kill = awaiting(_PtyHandleBase._kill)
    disconnect = awaiting(_PtyHandleBase._disconnect)

    def _start_reader(self) -> None:
        self._reader: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self._transport.run(self._read_loop())
        )

    async def wait(self, timeout: float | None = None) -> int:  # noqa: ASYNC109 (as the sync one)
        """As :meth:`PtyHandle.wait`.

        Example::

            code = await t.wait()
        """
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self._result()


H = TypeVar("H", bound=_PtyHandleBase)


class _PtyBase(Generic[H]):
    _handle_cls: type[H]

    def __init__(self, transport: Any, sandbox_id: str) -> None:
        self._transport = transport
        self._sandbox_id = sandbox_id

    def _open(self, first: dict[str, Any], on_data: DataCallback | None) -> Op[H]:
        conn = yield WsOpen(f"/v1/sandboxes/{self._sandbox_id}/pty")
        try:
            yield Call(conn.send, (json.dumps(first),))
            raw = yield Call(conn.recv)
            frame = json.loads(raw) if isinstance(raw, str) else {}
        except Exception as e:
            yield WsClose(conn)
            if isinstance(e, WarrenError):
                raise
            raise StreamError(f"the terminal stream closed: {e}", code="stream_closed") from e
        if frame.get("type") != "started":
            yield WsClose(conn)
            if frame.get("type") == "error":
                raise_frame_error(frame)
            raise StreamError("the server did not start the terminal", code="stream_error")
        handle = self._handle_cls(self._transport, self._sandbox_id, conn, int(frame["pid"]), on_data)
        handle._start_reader()
        return handle

    def _create(
        self,
        cols: int = 80,
        rows: int = 24,
        on_data: DataCallback | None = None,
        cmd: str | Sequence[str] | None = None,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
    ) -> Op[H]:
        """Start a terminal: ``cmd`` (a string runs through ``/bin/sh -c``, a list as argv), by
        default the user's login shell; ``TERM=xterm-256color`` unless ``envs`` says otherwise.
        ``on_data`` gets each chunk of output (on an :class:`~warren.AsyncSandbox` it may be a
        coroutine function).

        Example::

            t = sbx.pty.create(on_data=lambda b: print(b.decode(errors="replace"), end=""))
            t.send_input("echo hi; exit\\n")
            print(t.wait())   # 0
        """
        first: dict[str, Any] = {"type": "start", "cols": cols, "rows": rows}
        if cmd is not None:
            parts = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
            first["cmd"], first["args"] = parts[0], parts[1:]
        if envs:
            first["env"] = dict(envs)
        if cwd:
            first["cwd"] = cwd
        if user:
            first["user"] = user
        return (yield from self._open(first, on_data))

    def _connect(self, pid: int, on_data: DataCallback | None = None) -> Op[H]:
        """Attach to a running terminal: the last 64 KiB of its output, then what follows.

        Example::

            t = sbx.pty.connect(pid, on_data=sys.stdout.buffer.write)
        """
        return (yield from self._open({"type": "connect", "pid": pid}, on_data))


class Pty(_PtyBase[PtyHandle]):
    """``sbx.pty`` of a :class:`~warren.Sandbox`."""

    _handle_cls = PtyHandle
    create = blocking(_PtyBase[PtyHandle]._create)
    connect = blocking(_PtyBase[PtyHandle]._connect)


class AsyncPty(_PtyBase[AsyncPtyHandle]):
    """``sbx.pty`` of an :class:`~warren.AsyncSandbox`."""

    _handle_cls = AsyncPtyHandle
    create = awaiting(_PtyBase[AsyncPtyHandle]._create)
    connect = awaiting(_PtyBase[AsyncPtyHandle]._connect)
