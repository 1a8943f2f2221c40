"""exec through the guest: exit codes, env, cwd, timeouts, stdin, big and binary output."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import warren.guest
from tests.unit.guest.guest_helpers import RunningGuest, guest_python, pid_gone, wait_until
from warren.agent.guest_client import GuestClient, GuestError


async def test_health_and_wait_ready(client: GuestClient) -> None:
    await client.wait_ready(5)
    await client.health()


async def test_wait_ready_times_out_without_guest(tmp_path: Path) -> None:
    c = GuestClient(str(tmp_path / "nobody.sock"))
    t0 = time.monotonic()
    with pytest.raises(GuestError) as ei:
        await c.wait_ready(0.2)
    assert ei.value.kind == "timeout"
    assert time.monotonic() - t0 < 10  # gave up at its timeout (a loose bound: loaded machines)
    with pytest.raises(GuestError) as ei:
        await c.health()
    assert ei.value.kind == "unavailable"


async def test_exit_codes_and_streams(client: GuestClient) -> None:
    r = await client.exec("sh", ["-c", "echo out; echo err >&2; exit 7"])
    assert (r.stdout, r.stderr, r.exit_code, r.timed_out) == (b"out\n", b"err\n", 7, False)
    assert (await client.exec("true", [])).exit_code == 0
    assert (await client.exec("false", [])).exit_code == 1
    # No shell: arguments arrive verbatim.
    r = await client.exec("echo", ["a b", "$HOME", "*"])
    assert r.stdout == b"a b $HOME *\n"


async def test_killed_by_signal_reports_negative_code(client: GuestClient) -> None:
    r = await client.exec("sh", ["-c", "kill -9 $$"])
    assert r.exit_code == -9
    assert not r.timed_out


async def test_env_defaults_and_overrides(client: GuestClient) -> None:
    r = await client.exec("sh", ["-c", 'printf "%s|%s|%s|%s" "$HOME" "$LANG" "$FOO" "$PATH"'])
    home, lang, foo, path = r.stdout.decode().split("|")
    assert (home, lang, foo) == ("/root", "C.UTF-8", "")
    assert "/usr/bin" in path.split(":")
    r = await client.exec(
        "sh", ["-c", 'printf "%s|%s" "$FOO" "$LANG"'], env={"FOO": "bär baz", "LANG": "en_US.UTF-8"}
    )
    assert r.stdout.decode() == "bär baz|en_US.UTF-8"


async def test_path_lookup_uses_request_env(client: GuestClient, tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "mytool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho mytool ran\n")
    tool.chmod(0o755)
    with pytest.raises(GuestError) as ei:
        await client.exec("mytool", [])
    assert ei.value.kind == "not_found"
    r = await client.exec("mytool", [], env={"PATH": f"{tool.parent}:/usr/bin:/bin"})
    assert r.stdout == b"mytool ran\n"


async def test_cwd(client: GuestClient, tmp_path: Path) -> None:
    r = await client.exec("pwd", [], cwd=str(tmp_path))
    assert r.stdout.decode().strip() == str(tmp_path)
    r = await client.exec("pwd", [])
    assert r.stdout.decode().strip() == "/root"  # HOME by default
    with pytest.raises(GuestError) as ei:
        await client.exec("pwd", [], cwd=str(tmp_path / "missing"))
    assert ei.value.kind == "not_found"
    with pytest.raises(GuestError) as ei:
        await client.exec("pwd", [], cwd="relative/dir")
    assert ei.value.kind == "invalid_argument"
    # A failed spawn must not leave the guest in the wrong directory for the next one.
    assert (await client.exec("pwd", [], cwd="/tmp")).stdout == b"/tmp\n"


async def test_unknown_command_and_not_executable(client: GuestClient, tmp_path: Path) -> None:
    with pytest.raises(GuestError) as ei:
        await client.exec("no-such-command-xyz", [])
    assert ei.value.kind == "not_found"
    f = tmp_path / "plain.txt"
    f.write_text("not a program")
    with pytest.raises(GuestError) as ei:
        await client.exec(str(f), [])
    assert ei.value.kind == "permission"


async def test_timeout_kills_the_whole_process_group(client: GuestClient) -> None:
    t0 = time.monotonic()
    r = await client.exec("sh", ["-c", "sleep 30 & echo $!; wait"], timeout=0.5)
    elapsed = time.monotonic() - t0
    assert r.timed_out
    assert r.exit_code == -9
    assert 0.4 < elapsed < 25  # not before the timeout; nor after the 30 s sleep
    grandchild = int(r.stdout.split()[0])
    assert await wait_until(lambda: pid_gone(grandchild)), "the backgrounded sleep survived the timeout"


async def test_stdin_bytes(client: GuestClient) -> None:
    data = bytes(range(256)) * 3
    r = await client.exec("cat", [], stdin=data)
    assert r.stdout == data
    r = await client.exec("wc", ["-c"], stdin=b"")
    assert r.stdout.strip() == b"0"
    # Without stdin the command reads /dev/null instead of hanging.
    r = await client.exec("cat", [], timeout=5)
    assert (r.stdout, r.exit_code, r.timed_out) == (b"", 0, False)


async def test_big_stdin_and_output_at_once_do_not_deadlock(client: GuestClient) -> None:
    data = os.urandom(3 << 20)
    r = await client.exec("cat", [], stdin=data, timeout=30)
    assert r.exit_code == 0
    assert r.stdout == data


async def test_five_megabytes_of_output_on_both_streams(client: GuestClient) -> None:
    script = (
        "import sys\n"
        "blob = bytes(range(256)) * 4096\n"
        "for _ in range(5):\n"
        "    sys.stdout.buffer.write(blob); sys.stderr.buffer.write(blob[:1000])\n"
    )
    r = await client.exec("python3", ["-c", script], timeout=30)
    assert r.exit_code == 0
    assert r.stdout == (bytes(range(256)) * 4096) * 5
    assert len(r.stdout) == 5 * 1024 * 1024
    assert r.stderr == (bytes(range(256)) * 4)[:1000] * 5


async def test_non_utf8_output_is_passed_through(client: GuestClient) -> None:
    r = await client.exec("printf", ["\\377\\376\\000\\200abc"])
    assert r.stdout == b"\xff\xfe\x00\x80abc"


async def test_concurrent_execs(client: GuestClient) -> None:
    results = await asyncio.gather(
        *(client.exec("sh", ["-c", f"sleep 0.0{i % 5}; echo {i}; exit {i}"]) for i in range(30))
    )
    for i, r in enumerate(results):
        assert (r.exit_code, r.stdout) == (i, f"{i}\n".encode())


async def test_exit_reported_even_if_a_grandchild_keeps_the_pipes(client: GuestClient) -> None:
    # The grandchild holds the pipes far longer than any loaded machine takes to answer.
    t0 = time.monotonic()
    r = await client.exec("sh", ["-c", "sleep 300 & echo done $!"], timeout=120)
    done, pid = r.stdout.split()
    try:
        assert done == b"done" and r.exit_code == 0 and not r.timed_out
        assert time.monotonic() - t0 < 60  # not held until the grandchild's end
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


async def test_guest_survives_garbage_and_abrupt_clients(guest: RunningGuest) -> None:
    reader, writer = await asyncio.open_unix_connection(guest.socket)
    writer.write(b"\x00\x00\x00\x05\x01garba")  # a request frame that is not JSON
    await writer.drain()
    data = await reader.read()
    assert data[4] == 5  # an ERROR frame
    assert b"invalid_argument" in data
    writer.close()
    reader, writer = await asyncio.open_unix_connection(guest.socket)
    writer.write(b"\xff\xff\xff\xff\x01")  # an absurd frame length
    await writer.drain()
    assert b"invalid_argument" in await reader.read()
    writer.close()
    # A client that vanishes mid-exec kills its foreground command and leaves the guest fine.
    session = await guest.client.exec_stream("sleep", ["30"])
    pid = session.pid
    await session.close()
    assert await wait_until(lambda: pid_gone(pid))
    assert guest.proc.poll() is None
    await guest.client.health()
    assert (await guest.client.exec("echo", ["ok"])).stdout == b"ok\n"


async def test_sigterm_is_forwarded_and_guest_exits(guest: RunningGuest, tmp_path: Path) -> None:
    marker = tmp_path / "got-term"
    script = f'trap "echo term > {marker}; exit 0" TERM; while :; do sleep 0.05; done'
    s = await guest.client.exec_stream("sh", ["-c", script], background=True, tag="trap", stdin=False)
    await s.close()
    await asyncio.sleep(0.2)  # let the trap get installed
    guest.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(guest.proc.wait, 10) == 0
    assert marker.read_text() == "term\n"
    assert not os.path.exists(guest.socket)


def test_guest_starts_from_precompiled_bytecode() -> None:
    assert warren.guest.precompile()
    pycs = [Path(importlib.util.cache_from_source(str(m))) for m in warren.guest.guest_modules()]
    assert len(pycs) > 1 and all(pyc.exists() for pyc in pycs)
    py = guest_python()
    tag = subprocess.run(
        [py, "-I", "-S", "-c", "import sys; print(sys.implementation.cache_tag)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if tag != sys.implementation.cache_tag:
        pytest.skip(f"guest interpreter {tag} cannot use {sys.implementation.cache_tag} bytecode")
    r = subprocess.run(
        [py, "-I", "-S", "-v", str(warren.guest.GUEST_SCRIPT), "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "usage" in r.stdout
    # Loaded from the .pyc, not compiled from source on every sandbox start (files is only
    # imported by the first file operation).
    server = warren.guest.GUEST_PACKAGE / "server.py"
    assert f"code object from '{importlib.util.cache_from_source(str(server))}'" in r.stderr
    for module in warren.guest.guest_modules():
        assert f"code object from {module}" not in r.stderr
