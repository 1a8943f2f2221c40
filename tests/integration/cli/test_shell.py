"""``warren sandbox shell`` as a real terminal: the CLI runs on a local PTY of the test's own
(``pty.fork``), so it sees a tty, goes raw, sends its size and forwards keystrokes; and with a
script piped in instead."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cp import PASSWORD
from tests.harness.platform import Platform
from warren import Sandbox

pytestmark = [pytest.mark.root, pytest.mark.timeout(300), pytest.mark.shared_platform]


@pytest.fixture(scope="module")
def cli_env(platform: Platform, platform_dir: Path) -> dict[str, str]:
    home = platform_dir / "cli-shell-home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "XDG_CONFIG_HOME": str(home), "WARREN_URL": "", "WARREN_API_KEY": "",
           "WARREN_ACCESS_TOKEN": "", "TERM": "xterm-256color"}  # fmt: skip
    p = subprocess.run(
        [sys.executable, "-m", "warren.cli.main", "login", "--url", platform.url, "--email", platform.email,
         "--password", PASSWORD],
        env=env, capture_output=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return env


@pytest.fixture(scope="module")
def sbx(platform: Platform) -> Iterator[Sandbox]:
    with Sandbox.create(memory_mb=256, **platform.sdk()) as s:
        yield s


@pytest.fixture(scope="module")
def sid(sbx: Sandbox) -> str:
    return sbx.id


class LocalTerminal:
    """The CLI as a child on a local PTY: what it prints, and keystrokes typed into it."""

    def __init__(self, argv: list[str], env: dict[str, str], cols: int = 91, rows: int = 27) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: the CLI, with the PTY as its terminal
            os.execve(sys.executable, [sys.executable, "-m", "warren.cli.main", *argv], env)
        self.pid, self.fd = pid, fd
        self.set_size(cols, rows)
        self.buf = bytearray()

    def set_size(self, cols: int, rows: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))  # SIGWINCH

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)

    def expect(self, needle: bytes, timeout: float = 60.0, *, since: int = 0) -> None:
        """Wait until ``needle`` has been output (at or after offset ``since``)."""
        deadline = time.monotonic() + timeout
        while needle not in self.buf[since:]:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} not seen in {bytes(self.buf[-3000:])!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    self.buf += os.read(self.fd, 65536)
                except OSError:  # EIO: the child has gone
                    assert needle in self.buf, bytes(self.buf[-3000:])

    def exit_code(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.1)[0]:
                with contextlib.suppress(OSError):  # EIO: the child has gone
                    self.buf += os.read(self.fd, 65536)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        raise AssertionError(f"the CLI did not exit: {bytes(self.buf[-3000:])!r}")

    def close(self) -> None:
        try:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


def test_shell_in_a_local_terminal(cli_env: dict[str, str], sbx: Sandbox, sid: str) -> None:
    t = LocalTerminal(["sandbox", "shell", sid], cli_env)
    try:
        t.expect(b"# ")  # the remote prompt: the CLI is up (and raw)
        # The local size arrived with the start; a resize follows SIGWINCH.
        t.type(b"echo got-$((6*7)); stty size; echo $TERM\r")
        t.expect(b"got-42")
        t.expect(b"27 91")
        t.expect(b"xterm-256color")
        t.set_size(100, 33)  # SIGWINCH to the CLI, which sends a resize: poll until it landed
        for _ in range(100):
            t.type(b"stty size\r")
            with contextlib.suppress(AssertionError):
                t.expect(b"33 100", timeout=0.5)
                break
        t.expect(b"33 100", timeout=0)
        # Ctrl-C reaches the remote foreground job, not the local CLI.
        t.type(b"sleep 100\r")
        deadline = time.monotonic() + 60
        while sbx.commands.run("grep -qx sleep /proc/[0-9]*/comm").exit_code != 0:
            assert time.monotonic() < deadline, "sleep never started"
        t.type(b"\x03")
        t.type(b"echo after-$((1+1))\r")
        t.expect(b"after-2")
        t.type(b"echo ran-$((2+3)); false\r")
        # Ctrl-D only at the next prompt: typed while the command runs, the cooked terminal
        # swallows it as an empty read nobody makes, and bash's line editor never sees it.
        t.expect(b"ran-5\r\n")
        t.expect(b"# ", since=t.buf.index(b"ran-5\r\n"))
        t.type(b"\x04")  # Ctrl-D at an empty prompt: the shell ends, the CLI exits with its code
        assert t.exit_code() == 1
    finally:
        t.close()


def test_shell_cmd_and_user_and_restored_terminal(cli_env: dict[str, str], sid: str) -> None:
    t = LocalTerminal(["sandbox", "shell", "--cmd", "id -un; tty; exit 7", sid], cli_env)
    try:
        assert t.exit_code() == 7
        assert b"root" in t.buf and b"/dev/pts/" in t.buf
    finally:
        t.close()


def test_piped_script(cli_env: dict[str, str], sid: str) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "warren.cli.main", "sandbox", "shell", sid],
        input=b"echo piped-$((2*3))\ntty\n",
        capture_output=True,
        timeout=60,
        env=cli_env,
    )
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, (out, p.stderr)
    assert "piped-6" in out and "/dev/pts/" in out
