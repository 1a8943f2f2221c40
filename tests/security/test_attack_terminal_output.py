"""Attack: hold the control plane's memory with terminals whose output nobody reads.

A hostile tenant opens as many terminals as a sandbox runs (the guest's limit, 32) running
``yes``, through Warren's terminal WebSocket and through E2B's envd (``Start`` with a ``pty``,
raw Connect, as any client may speak it), and reads none of their output. Before the terminal
stream had output credit, gRPC's window (grown by its bandwidth probes to MiBs a stream) and
the CP's own buffering held it: session 10 measured CP +23 MiB for 32 Warren terminals and
+129 MiB for 32 E2B ones. With credit the agent sends at most 256 KiB a terminal past what the
CP has handed on (``PtyRequest.output_acked``) and then stops reading the guest, which holds the
terminal back. A client that reads slowly still gets all of its terminal's output, in order."""

from __future__ import annotations

import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing

import e2b
import pytest
from websockets.sync.client import connect as ws_connect

from tests.harness.e2b import e2b_environment
from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_e2b_streams import open_stream
from tests.security.test_attack_stream_count import try_websocket
from tests.security.test_attack_websocket_memory import settle, watching
from tests.security.test_what_held_api import PeakRss, text_frame

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

TERMINALS = 32  # a sandbox's most (the guest's MAX_PTYS)
# The CP's RSS growth past which the unread terminals are being buffered: 1 MiB a terminal. With
# credit one holds at most the agent's 256 KiB window and what the CP is sending (measured
# session 11: +0-3 MiB for 32 Warren terminals and for 32 E2B ones; before credit session 10
# measured +23 and +129 MiB, which a fresh platform's small gRPC windows did not reproduce: the
# rest of what an unread terminal holds, ~3.5-4.5 MiB, is the kernel's socket buffers).
BOUND_MIB = 32
YES = ["-c", "exec yes"]
KILL_YES = 'for d in /proc/[0-9]*; do [ "$(cat $d/comm)" = yes ] && kill -9 ${d#/proc/}; done 2>/dev/null'
COMMANDS = "for d in /proc/[0-9]*; do cat $d/comm; done 2>/dev/null; true"
# Lines a slow reader must get whole and in order: ~7.5 MiB of terminal output, more than the
# kernel's socket buffers on the way (4 MiB at most each side) hold, so the agent runs out of credit.
NUMBERS = 1_000_000
SLOW_PAUSE_S = 0.05  # the slow reader's pause after each 128 KiB it takes
LINE = re.compile(r"^\d+$")


def _end_terminals(t: Tenant, sid: str) -> None:
    """Kill the ``yes`` terminals and wait until none runs (the guest's 32 are free again)."""
    deadline = time.monotonic() + 60
    while t.sh(sid, f"{KILL_YES}; {COMMANDS}").count("yes\n"):
        assert time.monotonic() < deadline, "the terminals' yes did not end"
        time.sleep(0.5)


def _warren_terminal(t: Tenant, sid: str) -> socket.socket:
    """A terminal WebSocket of ``yes`` read up to its ``started`` frame, then never again."""
    got = try_websocket(t.url, f"/v1/sandboxes/{sid}/pty", {"X-API-Key": t.api_key})
    assert not isinstance(got, tuple), got
    start = {"type": "start", "cmd": "/bin/sh", "args": YES, "cols": 80, "rows": 24}
    got.sendall(text_frame(json.dumps(start)))
    seen = b""
    while b'"pid"' not in seen:  # the started frame comes before any output
        chunk = got.recv(1)
        assert chunk, f"the terminal closed before it started: {seen!r}"
        seen += chunk
    return got


def _e2b_terminal(platform: Platform, sid: str) -> socket.socket:
    """envd's ``Start`` of ``yes`` on a terminal, read up to its pid, then never again."""
    msg = {"process": {"cmd": "/bin/sh", "args": YES}, "pty": {"size": {"cols": 80, "rows": 24}}}
    got = open_stream(platform.cp.e2b_url, sid, "process.Process/Start", msg, b'"pid":')
    assert not isinstance(got, tuple), got
    return got


def _held(platform: Platform, rss: PeakRss, what: str) -> None:
    settle([platform.cp.pid, platform.agents[0].proc.pid])  # until the windows have filled
    print(f"{TERMINALS} {what} terminals of yes, unread: RSS growth {rss.grown_mib} MiB (CP, agent)")
    assert rss.grown_mib[0] < BOUND_MIB, f"{what}: the CP grew {rss.grown_mib[0]} MiB (bound {BOUND_MIB})"


def test_unread_warren_terminals_are_held_back_not_buffered(
    platform: Platform, alice: Tenant, bob: Tenant, sandbox: str
) -> None:
    with ExitStack() as stack, watching(platform) as rss, ThreadPoolExecutor(TERMINALS) as pool:
        for s in pool.map(lambda _: _warren_terminal(alice, sandbox), range(TERMINALS)):
            stack.enter_context(closing(s))
        _held(platform, rss, "Warren")
        assert bob.w("GET", "/v1/sandboxes").status_code == 200  # the CP serves others meanwhile
    _end_terminals(alice, sandbox)


def test_unread_e2b_terminals_are_held_back_not_buffered(
    platform: Platform, alice: Tenant, sandbox: str
) -> None:
    with ExitStack() as stack, watching(platform) as rss, ThreadPoolExecutor(TERMINALS) as pool:
        for s in pool.map(lambda _: _e2b_terminal(platform, sandbox), range(TERMINALS)):
            stack.enter_context(closing(s))
        _held(platform, rss, "E2B")
    _end_terminals(alice, sandbox)


def _expected_numbers() -> list[str]:
    return [str(i) for i in range(1, NUMBERS + 1)]


def test_a_slow_warren_terminal_reader_gets_all_output_in_order(alice: Tenant, sandbox: str) -> None:
    """The client pauses after each 128 KiB it takes (the agent's window fills and empties
    again and again); the terminal's output arrives whole, in order, then its exit."""
    url = alice.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sandbox}/pty"
    got, since_pause = bytearray(), 0
    headers = {"X-API-Key": alice.api_key}
    start = {"type": "start", "cmd": "seq", "args": ["1", str(NUMBERS)], "cols": 80, "rows": 24}
    with ws_connect(url, additional_headers=headers, open_timeout=30, max_size=None) as c:
        c.send(json.dumps(start))
        assert json.loads(c.recv(timeout=30))["type"] == "started"
        while True:
            msg = c.recv(timeout=60)
            if isinstance(msg, str):
                end = json.loads(msg)
                break
            got += msg
            since_pause += len(msg)
            if since_pause >= 128 << 10:
                time.sleep(SLOW_PAUSE_S)
                since_pause = 0
    assert end == {"type": "exit", "exit_code": 0}, end
    assert got.decode().split("\r\n") == [*_expected_numbers(), ""]


def test_a_slow_e2b_terminal_reader_gets_all_output_in_order(
    platform: Platform, alice: Tenant, sandbox: str
) -> None:
    """E2B's SDK on a terminal (its login shell) running ``seq``, its callback pausing after each
    128 KiB: every number arrives, in order."""
    with e2b_environment(platform, template="minimal"):
        sbx = e2b.Sandbox.connect(sandbox, api_key=alice.api_key)
        handle = sbx.pty.create(e2b.PtySize(rows=24, cols=80), timeout=0)
        sbx.pty.send_stdin(handle.pid, f"seq 1 {NUMBERS}; exit\n".encode())
        got = bytearray()
        since_pause = 0

        def on_pty(data: bytes) -> None:  # called on this thread, as the stream is read
            nonlocal since_pause
            got.extend(data)
            since_pause += len(data)
            if since_pause >= 128 << 10:
                time.sleep(SLOW_PAUSE_S)
                since_pause = 0

        result = handle.wait(on_pty=on_pty)
    assert result.exit_code == 0, result
    # A line's text after its last carriage return: bash ends its prompt with escape sequences
    # and a \r right before the command's first output.
    lines = [ln.rsplit("\r", 1)[-1] for ln in got.decode(errors="replace").split("\r\n")]
    lines = [ln for ln in lines if LINE.match(ln)]
    assert lines == _expected_numbers(), (len(lines), lines[:3], lines[-3:])
