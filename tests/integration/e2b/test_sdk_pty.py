"""E2B's SDK (``e2b``, unchanged) ``sandbox.pty`` against a live platform's envd plane
(docs/e2b.md §3.1): a terminal started, typed into, resized, connected to and killed; sync and
async."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator

import pytest
from e2b import AsyncSandbox, CommandExitException, CommandHandle, PtySize, Sandbox
from e2b.exceptions import NotFoundException, SandboxNotRunningException

from tests.harness.e2b import E2BEnv

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def sbx(e2b_env: E2BEnv) -> Iterator[Sandbox]:
    s = Sandbox.create(template=e2b_env.template, timeout=600)
    try:
        yield s
    finally:
        s.kill()


def test_type_resize_and_exit(sbx: Sandbox) -> None:
    h = sbx.pty.create(PtySize(rows=24, cols=80))
    mark = uuid.uuid4().hex[:8]
    sbx.pty.send_stdin(h.pid, f"stty size; echo {mark}-$(whoami)-$PWD\n".encode())
    out = read_until(h, f"{mark}-user-/home/user\r\n".encode())
    assert b"24 80" in out, out
    sbx.pty.resize(h.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(h.pid, b"stty size; exit 0\n")
    rest = bytearray()
    r = h.wait(on_pty=rest.extend)
    assert r.exit_code == 0
    assert b"30 100" in rest, rest


def read_until(h: CommandHandle, want: bytes) -> bytes:
    """A terminal's output up to ``want`` (the prompt and the typed echo come first)."""
    seen = bytearray()
    deadline = time.monotonic() + DEADLINE_S
    for _, _, chunk in h:
        seen.extend(chunk or b"")
        if want in seen:
            return bytes(seen)
        assert time.monotonic() < deadline, seen
    raise AssertionError(f"the terminal ended before {want!r}: {bytes(seen)!r}")


def test_kill_and_connect(sbx: Sandbox) -> None:
    h = sbx.pty.create(PtySize(rows=10, cols=40), user="root", cwd="/tmp")
    sbx.pty.send_stdin(h.pid, b"echo ready-$(whoami)-$PWD\n")
    read_until(h, b"ready-root-/tmp\r\n")
    h.disconnect()
    again = sbx.pty.connect(h.pid)  # replays the terminal's recent output
    assert again.pid == h.pid
    assert sbx.pty.kill(h.pid) is True
    with pytest.raises(CommandExitException) as e:
        again.wait()
    assert (e.value.exit_code, e.value.error) == (-1, "signal: killed")
    assert sbx.pty.kill(h.pid) is False
    # Exited: gone, as in envd (not input taken and dropped); the guest's kind `exited` says so.
    with pytest.raises(NotFoundException, match=f"process with pid {h.pid} not found"):
        sbx.pty.send_stdin(h.pid, b"too late\n")
    with pytest.raises(NotFoundException):
        sbx.pty.connect(2**31 - 1)


async def test_async_pty(sbx: Sandbox) -> None:
    s = await AsyncSandbox.connect(sbx.sandbox_id)
    out = bytearray()
    h = await s.pty.create(PtySize(rows=12, cols=34), on_data=out.extend)
    await s.pty.send_stdin(h.pid, b"stty size\n")
    deadline = time.monotonic() + DEADLINE_S
    while b"12 34" not in out:  # run before the resize below
        assert time.monotonic() < deadline, out
        await asyncio.sleep(0.05)
    await s.pty.resize(h.pid, PtySize(rows=13, cols=35))
    await s.pty.send_stdin(h.pid, b"stty size; exit 3\n")
    with pytest.raises(CommandExitException) as e:
        await h.wait()
    assert e.value.exit_code == 3
    assert b"13 35" in out, out


def _reconnected_before_its_timeout(sbx: Sandbox) -> CommandHandle:
    """A terminal made with a timeout, its stream dropped (the deadline is the terminal's, not
    its stream's), then reconnected. It must still be there for the reconnect: 3 s is enough on
    a quiet machine, and a loaded one that reconnected only after its end (gone: not found)
    makes it again with twice the timeout, rather than every run waiting out 15 s."""
    for timeout in (3, 6, 12, 24):
        h = sbx.pty.create(PtySize(rows=10, cols=40), timeout=timeout)
        h.disconnect()
        with contextlib.suppress(NotFoundException):
            return sbx.pty.connect(h.pid, timeout=DEADLINE_S)
    raise AssertionError(f"no terminal was still there to reconnect to (the last: {timeout} s)")


def test_terminal_is_killed_at_its_timeout(sbx: Sandbox) -> None:
    again = _reconnected_before_its_timeout(sbx)
    with pytest.raises(CommandExitException) as e:
        again.wait()
    assert (e.value.exit_code, e.value.error) == (-1, "signal: killed")


def test_sandbox_killed_while_a_terminal_runs(e2b_env: E2BEnv) -> None:
    s = Sandbox.create(template=e2b_env.template, timeout=120)
    h = s.pty.create(PtySize(rows=10, cols=40))
    s.kill()
    with pytest.raises((SandboxNotRunningException, CommandExitException)) as e:
        h.wait()
    if isinstance(e.value, CommandExitException):  # the kill's SIGKILL reached it first
        assert e.value.exit_code == -1
