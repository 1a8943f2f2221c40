"""Interactive sessions, background processes, attach, list, signal, stdin by selector."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.unit.guest.guest_helpers import RunningGuest, pid_gone, wait_until
from warren.agent.guest_client import ExecEvent, ExecSession, GuestClient, GuestError
from warren.agent.guest_wire import K_DATA, K_END, K_REQ, Conn, jdump


async def next_event(session: ExecSession, timeout: float = 5.0) -> ExecEvent:
    async with asyncio.timeout(timeout):
        return await anext(session)


async def read_until(session: ExecSession, needle: bytes, timeout: float = 5.0) -> bytes:
    """Collect stdout until `needle` appears (output may arrive in any chunking)."""
    got = b""
    async with asyncio.timeout(timeout):
        while needle not in got:
            ev = await anext(session)
            assert ev.kind in ("stdout", "stderr"), ev
            if ev.kind == "stdout":
                got += ev.data
    return got


async def rest(session: ExecSession) -> tuple[bytes, ExecEvent]:
    out = b""
    async with asyncio.timeout(10):
        async for ev in session:
            if ev.kind == "stdout":
                out += ev.data
            elif ev.kind in ("exit", "error"):
                return out, ev
    raise AssertionError("stream ended without exit")


async def test_interactive_stdin_echo(client: GuestClient) -> None:
    s = await client.exec_stream("cat", [])
    start = await next_event(s)
    assert start.kind == "start" and start.pid == s.pid > 0
    await s.send_stdin(b"ping\n")
    assert await read_until(s, b"ping\n") == b"ping\n"
    await s.send_stdin(b"\x00\xffbinary\n")
    assert await read_until(s, b"binary\n") == b"\x00\xffbinary\n"
    await s.close_stdin()
    out, ev = await rest(s)
    assert (out, ev.kind, ev.exit_code) == (b"", "exit", 0)


async def test_stream_events_arrive_as_produced(client: GuestClient) -> None:
    s = await client.exec_stream("sh", ["-c", "echo one; sleep 0.3; echo two >&2; sleep 0.3; exit 4"])
    assert (await next_event(s)).kind == "start"
    ev = await next_event(s)
    assert (ev.kind, ev.data) == ("stdout", b"one\n")  # before the command finished
    ev = await next_event(s)
    assert (ev.kind, ev.data) == ("stderr", b"two\n")
    ev = await next_event(s)
    assert (ev.kind, ev.exit_code, ev.timed_out) == ("exit", 4, False)
    with pytest.raises(StopAsyncIteration):
        await anext(s)


async def test_signal_over_the_session(client: GuestClient) -> None:
    s = await client.exec_stream("sleep", ["30"], stdin=False)
    await next_event(s)
    await s.signal(signal.SIGTERM)
    _, ev = await rest(s)
    assert (ev.kind, ev.exit_code) == ("exit", -signal.SIGTERM)
    assert "signal 15" in ev.error


async def test_stream_timeout(client: GuestClient) -> None:
    s = await client.exec_stream("sleep", ["30"], timeout=0.3)
    _, ev = await rest(s)
    assert ev.kind == "exit" and ev.timed_out and ev.exit_code == -9


async def test_background_process_lifecycle(client: GuestClient) -> None:
    script = 'echo started; while read line; do echo "got:$line"; done; echo bye; exit 3'
    s = await client.exec_stream("sh", ["-c", script], tag="bg", background=True)
    pid = s.pid
    assert (await next_event(s)).kind == "start"
    await read_until(s, b"started\n")
    await s.close()  # the requesting connection goes away; a background process stays

    procs = {p.tag: p for p in await client.list_processes()}
    assert procs["bg"].pid == pid and procs["bg"].running and procs["bg"].exit_code is None
    assert (procs["bg"].cmd, procs["bg"].args) == ("sh", ["-c", script])

    await client.send_stdin("bg", b"x\n")
    await client.send_stdin(pid, b"y\n")
    a = await client.attach("bg")
    assert (await next_event(a)).pid == pid
    # attach replays the buffered output first, then continues live.
    assert await read_until(a, b"got:y\n") == b"started\ngot:x\ngot:y\n"
    await client.close_stdin("bg")
    out, ev = await rest(a)
    assert out == b"bye\n"
    assert (ev.kind, ev.exit_code) == ("exit", 3)

    procs = {p.tag: p for p in await client.list_processes()}
    assert not procs["bg"].running and procs["bg"].exit_code == 3
    # A late attach to an exited background process still sees its output and exit.
    a2 = await client.attach("bg")
    out, ev = await rest(a2)
    assert out == b"started\ngot:x\ngot:y\nbye\n"
    assert ev.exit_code == 3
    with pytest.raises(GuestError) as ei:
        await client.send_stdin("bg", b"late")
    assert ei.value.kind == "exited" and "has exited" in ei.value.message


async def test_stdin_to_an_exited_process_is_told_from_one_without_stdin(client: GuestClient) -> None:
    """Both are refused, an exited one by its own kind, ``exited``: E2B answers it not_found
    (envd removed the process), a running one without stdin stays invalid_argument (sessions
    28, 29: the kind, not the words, reaches the CP)."""
    s = await client.exec_stream("sleep", ["30"], tag="nostdin", background=True, stdin=False)
    await s.close()
    with pytest.raises(GuestError) as ei:
        await client.send_stdin("nostdin", b"x")
    assert ei.value.kind == "invalid_argument" and "has no open stdin" in ei.value.message
    await client.signal("nostdin", signal.SIGKILL)
    await rest(await client.attach("nostdin"))  # its exit
    with pytest.raises(GuestError) as ei:
        await client.send_stdin("nostdin", b"x")
    assert ei.value.kind == "exited" and "has exited" in ei.value.message, ei.value


async def test_signal_by_tag_and_pid(client: GuestClient) -> None:
    s1 = await client.exec_stream("sleep", ["30"], tag="s1", background=True, stdin=False)
    s2 = await client.exec_stream("sleep", ["30"], tag="s2", background=True, stdin=False)
    await s1.close()
    await s2.close()
    await client.signal("s1", signal.SIGKILL)
    await client.signal(s2.pid, signal.SIGTERM)
    _, ev1 = await rest(await client.attach("s1"))
    _, ev2 = await rest(await client.attach(s2.pid))
    assert ev1.exit_code == -signal.SIGKILL
    assert ev2.exit_code == -signal.SIGTERM
    assert pid_gone(s1.pid) and pid_gone(s2.pid)
    with pytest.raises(GuestError) as ei:
        await client.signal("s1", signal.SIGTERM)  # already exited
    assert ei.value.kind == "not_found"


async def test_unknown_selectors(client: GuestClient) -> None:
    for call in (
        client.attach("nope"),
        client.signal("nope", 15),
        client.send_stdin(999999, b"x"),
        client.close_stdin("nope"),
    ):
        with pytest.raises(GuestError) as ei:
            await call
        assert ei.value.kind == "not_found"


async def test_duplicate_running_tag_is_refused(client: GuestClient) -> None:
    s = await client.exec_stream("sleep", ["30"], tag="dup", background=True, stdin=False)
    await s.close()
    with pytest.raises(GuestError) as ei:
        await client.exec_stream("sleep", ["30"], tag="dup", background=True)
    assert ei.value.kind == "exists"
    await client.signal("dup", signal.SIGKILL)


async def test_background_ring_is_bounded_and_keeps_the_latest(client: GuestClient) -> None:
    # 3 MiB of output nobody reads: the process must not block, the ring keeps the recent end.
    script = "import sys\nfor i in range(3072): sys.stdout.write(f'{i:07d}' + 'x' * 1016 + '\\n')\n"
    s = await client.exec_stream("python3", ["-c", script], tag="noisy", background=True, stdin=False)
    await s.close()
    assert await wait_until(lambda: pid_gone(s.pid))
    out, ev = await rest(await client.attach("noisy"))
    assert ev.exit_code == 0
    assert len(out) <= (1 << 20) + 65536
    assert out.endswith(b"0003071" + b"x" * 1016 + b"\n")


async def test_slow_reader_gets_backpressure_not_guest_memory(guest: RunningGuest) -> None:
    s = await guest.client.exec_stream("head", ["-c", str(64 << 20), "/dev/zero"], stdin=False)
    base = guest.rss_kib()
    await asyncio.sleep(0.5)  # read nothing: the guest must stop reading the pipe, not buffer
    assert guest.rss_kib() - base < 8 * 1024
    assert not pid_gone(s.pid), "head should be blocked on a full pipe, not finished"
    total = 0
    async with asyncio.timeout(60):
        async for ev in s:
            if ev.kind == "stdout":
                total += len(ev.data)
            elif ev.kind == "exit":
                assert ev.exit_code == 0
    assert total == 64 << 20
    assert guest.rss_kib("VmHWM") - base < 16 * 1024


async def test_background_never_waits_for_a_client_that_does_not_read(guest: RunningGuest) -> None:
    base = guest.rss_kib()
    s = await guest.client.exec_stream(
        "head", ["-c", str(40 << 20), "/dev/zero"], background=True, tag="flood", stdin=False
    )
    # Nobody reads the session: the command still runs to completion...
    assert await wait_until(lambda: pid_gone(s.pid), timeout=30)
    procs = {p.tag: p for p in await guest.client.list_processes()}
    assert procs["flood"].exit_code == 0
    # ...and the guest buffered at most the per-client cap, not the 40 MiB.
    assert guest.rss_kib("VmHWM") - base < 24 * 1024
    kinds = [ev.kind async for ev in s]
    assert kinds[-1] == "error"  # the lagging client was detached, and told so
    await s.close()


async def test_stdin_op_open_while_its_process_exits(guest: RunningGuest) -> None:
    """Input sent on a send_stdin op opened while the process ran, after it exited: ``exited``
    too (before: taken and dropped, or ``stdin is closed``)."""
    client = guest.client
    s = await client.exec_stream("cat", [], tag="midop", background=True)
    await s.close()
    conn = await Conn.open(guest.socket)
    conn.send(K_REQ, jdump({"op": "send_stdin", "tag": "midop"}))
    conn.send(K_DATA, b"taken\n")
    a = await client.attach("midop")
    assert (await next_event(a)).kind == "start"
    assert b"taken\n" in await read_until(a, b"taken\n")  # the op is open and fed
    await client.signal("midop", signal.SIGKILL)
    assert (await rest(a))[1].exit_code == -9
    conn.send(K_DATA, b"too late\n")
    conn.send(K_END)
    with pytest.raises(GuestError) as ei:
        await conn.result()
    conn.close()
    assert ei.value.kind == "exited" and "has exited" in ei.value.message, ei.value
