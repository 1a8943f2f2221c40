"""``warren sandbox shell``: the local terminal becomes a terminal in the sandbox.

The sandbox side is a real PTY (``sbx.pty``): echo, line editing, job control and Ctrl-C are the
remote terminal's own, so the local side only passes bytes through. With a local terminal it is
put in raw mode (restored on the way out, whatever happens), its size is sent at the start and on
every SIGWINCH, and Ctrl-D at an empty prompt ends the remote shell like any EOF key. Without one
(a script piped in), stdin is forwarded as typed input and its end is Ctrl-D (repeated until
the terminal exits).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any

from warren.cli.client.connection import open_sandbox
from warren.sdk import PtyHandle, WarrenError

EOF_KEY = b"\x04"  # Ctrl-D: the terminal's end-of-file character
EOF_REPEAT = 0.5  # seconds between Ctrl-Ds once piped input has ended


def _size(fd: int) -> tuple[int, int]:
    try:
        sz = os.get_terminal_size(fd)
        return sz.columns, sz.lines
    except OSError:
        return shutil.get_terminal_size((80, 24))


def _write_out(data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(1, view)
        except BlockingIOError:
            continue
        view = view[n:]


def run_shell(sandbox_id: str, *, user: str | None = None, cmd: str | None = None) -> int:
    """Run the terminal session; returns the exit code for the CLI (128 + N when killed by
    signal N)."""
    fd = sys.stdin.fileno()
    is_tty = os.isatty(fd)
    cols, rows = _size(fd if is_tty else 1)
    envs = {"TERM": os.environ["TERM"]} if is_tty and os.environ.get("TERM") else None
    with open_sandbox(sandbox_id) as sbx:
        handle = sbx.pty.create(cols=cols, rows=rows, on_data=_write_out, cmd=cmd, envs=envs, user=user)
        code = _interact(handle, fd, is_tty)
    return code if code >= 0 else 128 - code


def _interact(handle: PtyHandle, fd: int, is_tty: bool) -> int:
    saved: Any = None
    old_winch: Any = None
    try:
        if is_tty:
            import termios
            import tty

            saved = termios.tcgetattr(fd)
            tty.setraw(fd, termios.TCSANOW)  # not TCSAFLUSH: keep what was typed ahead

            def on_winch(signum: int, frame: object) -> None:
                with contextlib.suppress(WarrenError):
                    handle.resize(*_size(fd))

            old_winch = signal.signal(signal.SIGWINCH, on_winch)
        pump = threading.Thread(
            target=_pump, args=(handle, fd, is_tty), daemon=True, name="warren-shell-stdin"
        )
        pump.start()
        return handle.wait()
    finally:
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)
        if saved is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _end_of_script(handle: PtyHandle) -> None:
    """Piped input has ended: Ctrl-D, as typed at the prompt, until the terminal exits. Once is
    not enough: a Ctrl-D typed ahead while the line discipline is canonical (a command runs) is
    dropped when the shell's line editor switches it to raw, so it is repeated."""
    handle.send_input(b"\n")
    while handle.exit_code is None:
        handle.send_input(EOF_KEY)
        time.sleep(EOF_REPEAT)


def _pump(handle: PtyHandle, fd: int, is_tty: bool) -> None:
    """Local keystrokes (or piped bytes) → the terminal's input."""
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                if not is_tty:
                    _end_of_script(handle)
                return
            handle.send_input(data)
    except (OSError, WarrenError):
        return
