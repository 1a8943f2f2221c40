"""Terminals in the guest: pty_start / pty_connect sessions driven over the real socket with the
agent's own session class (``warren.agent.pty_rpc.PtySession``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import pytest

from tests.unit.guest.guest_helpers import RunningGuest, wait_until
from warren.agent.guest_client import GuestClient, GuestError
from warren.agent.guest_wire import K_DATA, K_REQ, Conn, jdump
from warren.agent.pty_rpc import PtySession
from warren.guest.guest_agent.pty import RING_BYTES


async def _open(guest: RunningGuest, **req: object) -> PtySession:
    return await PtySession.open(guest.socket, {"op": "pty_start", "cols": 80, "rows": 24, **req})


async def _until(session: PtySession, needle: bytes, seen: bytearray, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while needle not in seen:
            ev = await anext(session)
            assert ev.kind == "output", ev
            seen += ev.data


async def _exit(session: PtySession, seen: bytearray | None = None) -> int:
    async with asyncio.timeout(10):
        async for ev in session:
            if ev.kind == "output":
                if seen is not None:
                    seen += ev.data
                continue
            assert ev.kind == "exit", ev
            return ev.exit_code
    raise AssertionError("no exit")


def _sleep_child(parent: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            comm, rest = stat.read_text().rsplit(")", 1)
            if comm.endswith("(sleep") and int(rest.split()[1]) == parent:
                return True
    return False


async def _sleeping(shell: int) -> None:
    """Until the shell's `sleep` runs (so a Ctrl-C reaches it, not the prompt)."""
    assert await wait_until(lambda: _sleep_child(shell), timeout=10)


async def test_tty_size_and_exit_code(guest: RunningGuest) -> None:
    s = await _open(guest, cmd="/bin/sh", args=["-c", "tty; stty size; exit 7"], cols=100, rows=30)
    seen = bytearray()
    assert await _exit(s, seen) == 7
    assert b"/dev/pts/" in seen
    assert b"30 100" in seen


async def test_shell_resize_signal_and_reconnect(guest: RunningGuest) -> None:
    s = await _open(guest, cmd="/bin/sh")
    seen = bytearray()
    await s.send_input(b"stty size\n")
    await _until(s, b"24 80", seen)
    await s.resize(120, 40)
    await s.send_input(b"stty size\n")
    await _until(s, b"40 120", seen)
    # Ctrl-C as a signal to the foreground group, then as the literal byte: the shell lives on.
    await s.send_input(b"sleep 100\n")
    await _sleeping(s.pid)
    await s.signal(signal.SIGINT)
    await s.send_input(b"echo alive-$((1+1))\n")
    await _until(s, b"alive-2", seen)
    await s.send_input(b"sleep 100\n")
    await _sleeping(s.pid)
    await s.send_input(b"\x03")
    await s.send_input(b"echo again-$((2+2))\n")
    await _until(s, b"again-4", seen)
    pid = s.pid
    await s.close()
    # The terminal outlived its connection; a reconnect replays the tail and sees new output.
    r = await PtySession.open(guest.socket, {"op": "pty_connect", "pid": pid})
    assert r.pid == pid
    seen2 = bytearray()
    await _until(r, b"again-4", seen2)  # the scrollback
    await r.send_input(b"echo later-$((3+3)); exit 3\n")
    assert await _exit(r, seen2) == 3
    assert b"later-6" in seen2


async def test_unknown_pid_and_bad_requests(guest: RunningGuest, client: GuestClient) -> None:
    with pytest.raises(GuestError) as e:
        await PtySession.open(guest.socket, {"op": "pty_connect", "pid": 999999})
    assert e.value.kind == "not_found"
    bads: list[dict[str, object]] = [{"cols": 0}, {"rows": 100000}, {"cols": "80"}, {"cmd": 5}, {"env": []}]
    for bad in bads:
        with pytest.raises(GuestError) as e:
            await _open(guest, **bad)
        assert e.value.kind == "invalid_argument", bad
    with pytest.raises(GuestError) as e:
        await _open(guest, cmd="no-such-command-xyz")
    assert e.value.kind == "not_found"
    # A bad resize inside a session fails that session; the guest serves on.
    s = await _open(guest, cmd="/bin/cat")
    conn: Conn = s._conn
    conn.send(10, b"{not json")
    await conn.drain()
    async with asyncio.timeout(10):
        ev = await anext(s)
    assert ev.kind == "error" and "invalid_argument" in ev.error
    await client.health()


async def test_output_with_no_reader_is_bounded(guest: RunningGuest, tmp_path: Path) -> None:
    # 4 MiB of output with nobody attached: the child is never blocked, only the ring remains.
    done = tmp_path / "written"
    script = f"head -c 4194304 /dev/zero | tr '\\0' x; touch {done}; sleep 30"
    s = await _open(guest, cmd="/bin/sh", args=["-c", script])
    pid = s.pid
    await s.close()
    assert await wait_until(done.exists, timeout=20)
    r = await PtySession.open(guest.socket, {"op": "pty_connect", "pid": pid})
    seen = bytearray()
    async with asyncio.timeout(10):
        while len(seen) < RING_BYTES:  # the replay comes first, whole, before any live output
            ev = await anext(r)
            assert ev.kind == "output"
            seen += ev.data
    assert len(seen) == RING_BYTES and set(seen) == {ord("x")}
    conn = await Conn.open(guest.socket)
    conn.send(K_REQ, jdump({"op": "pty_signal", "pid": pid, "signal": 9}))
    assert await conn.result() == {}
    conn.close()
    assert await _exit(r) == -9


async def test_input_op_and_many_terminals(guest: RunningGuest) -> None:
    s = await _open(guest, cmd="/bin/cat")
    conn = await Conn.open(guest.socket)
    conn.send(K_REQ, jdump({"op": "pty_input", "pid": s.pid}))
    conn.send(K_DATA, b"typed-by-op\n")
    conn.send(3)
    assert await conn.result() == {}
    conn.close()
    seen = bytearray()
    await _until(s, b"typed-by-op", seen)
    await s.signal(signal.SIGKILL)
    assert await _exit(s) == -9


async def test_input_to_an_exited_terminal_is_refused(guest: RunningGuest) -> None:
    # As send_stdin to a process that has exited: its own kind, `exited` (which the agent sends
    # on as data, E2B's not_found), not `{}` with the input dropped (sessions 28, 29).
    s = await _open(guest, cmd="/bin/cat")
    await s.signal(signal.SIGKILL)
    assert await _exit(s) == -9
    conn = await Conn.open(guest.socket)
    conn.send(K_REQ, jdump({"op": "pty_input", "pid": s.pid}))
    conn.send(K_DATA, b"too late\n")
    conn.send(3)
    with pytest.raises(GuestError) as e:
        await conn.result()
    conn.close()
    assert e.value.kind == "exited" and "has exited" in e.value.message


async def test_at_most_32_running_terminals(guest: RunningGuest) -> None:
    sessions = [await _open(guest, cmd="/bin/cat") for _ in range(32)]
    with pytest.raises(GuestError) as e:
        await _open(guest, cmd="/bin/cat")
    assert e.value.kind == "too_large" and "at most 32 terminals" in e.value.message
    for s in sessions:
        await s.signal(signal.SIGKILL)
        assert await _exit(s) == -9
    s = await _open(guest, cmd="/bin/cat")  # an exited terminal no longer counts
    await s.signal(signal.SIGKILL)
    assert await _exit(s) == -9


async def test_sigterm_reaches_terminals(guest: RunningGuest) -> None:
    # Not PID 1 here, so the guest forwards SIGTERM to what it started, terminals included,
    # and exits once they are gone.
    s = await _open(guest, cmd="/bin/sleep", args=["100"])
    guest.proc.send_signal(signal.SIGTERM)
    assert await _exit(s) == -signal.SIGTERM
    assert await asyncio.to_thread(guest.proc.wait, 5) == 0
