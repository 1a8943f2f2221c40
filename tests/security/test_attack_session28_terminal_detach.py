"""Session 28: a terminal client the guest detached for not reading was told the host was broken.

A tenant opens a sandbox's 32 terminals (the guest's MAX_PTYS) running ``yes`` through the public
WebSocket and reads none of their output. The guest detaches lagging terminal clients once they
together hold its cap (guest_agent/lag.py's SUBSCRIBERS_TOTAL, 8 MiB: within seconds here), or
one that held its terminal back for pty.STALL_LIMIT (10 s). It closes the connection without a
frame (an error queued after what the client had not read would keep that for it), and the agent
reported the broken connection as the host's failure: the client's last frame was
``{"type": "error", "code": "agent_error", "message": "host agent unreachable: guest:
unavailable: guest closed the connection mid-response", "status": 502}``.

Now the agent tells a guest that closed this connection while its container lives (the lifeline
says NOT_RUNNING otherwise) from one that died: the stream ends with ``ABORTED``, which the CP
answers as ``{"type": "error", "code": "detached", "status": 409}`` saying why. The terminal keeps
running, and a ``connect`` to its pid answers.
"""

from __future__ import annotations

import json
import re
import socket
import time
from contextlib import closing

import pytest
from websockets.sync.client import connect as ws_connect

from tests.harness.tenant import Tenant
from tests.security.test_attack_stream_count import try_websocket
from tests.security.test_what_held_api import text_frame

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

# One terminal whose client reads nothing: held back, then detached at its stall limit
# (pty.STALL_LIMIT, 10 s). A sandbox's 32 reach lag.SUBSCRIBERS_TOTAL, but only once the CP's
# socket buffers of all 32 have filled (~22 s here); the guest's detach (lag.cut) and what follows
# are the same.
YES = ["-c", "exec yes"]
# What the terminal's ``yes`` writes in a second while its client holds it back (0 once the
# buffers on the way are full) and once it writes to its scrollback ring only (MiBs).
HELD, FREE = 1 << 20, 4 << 20
DEADLINE_S = 90  # for a detached stream's end to be read (seconds in practice; slack for load)
ERROR = re.compile(rb'\{"type": ?"error"[^}]*\}')


def _terminal(t: Tenant, sid: str) -> tuple[socket.socket, int]:
    """A terminal WebSocket of ``yes`` read up to its ``started`` frame (its pid), then never
    again until the test looks for its end."""
    got = try_websocket(t.url, f"/v1/sandboxes/{sid}/pty", {"X-API-Key": t.api_key})
    assert not isinstance(got, tuple), got
    start = {"type": "start", "cmd": "/bin/sh", "args": YES, "cols": 80, "rows": 24}
    got.sendall(text_frame(json.dumps(start)))
    seen = b""
    while not re.search(rb'"pid": ?\d+\}', seen):  # the started frame comes before any output
        chunk = got.recv(1)
        assert chunk, f"the terminal closed before it started: {seen!r}"
        seen += chunk
    return got, int(re.findall(rb'"pid": ?(\d+)', seen)[0])


def _written(t: Tenant, sid: str, pid: int) -> int:
    """What the terminal's ``yes`` has written so far (its /proc/<pid>/io ``wchar``)."""
    return int(t.sh(sid, f"sed -n 's/^wchar: //p' /proc/{pid}/io"))


def _wait_detached(t: Tenant, sid: str, pid: int) -> None:
    """Until the guest detached the terminal's client, seen from inside the sandbox without
    reading the stream (reading would let it go on): its ``yes`` was held back (blocked writing
    to the terminal, the guest no longer reading it for that client), then writes unhindered
    (to the scrollback ring only: nobody is attached)."""
    deadline = time.monotonic() + DEADLINE_S
    before, held = _written(t, sid, pid), False
    while time.monotonic() < deadline:
        time.sleep(1)
        now = _written(t, sid, pid)
        if held and now - before > FREE:
            return
        held, before = held or now - before < HELD, now
    raise AssertionError(f"the unread terminal's client was not detached in {DEADLINE_S} s")


def _end_of(s: socket.socket) -> dict:
    """The error frame a detached stream ended with (read to its end: what the server had sent
    before it is finite)."""
    s.settimeout(DEADLINE_S)
    tail = b""
    while data := s.recv(1 << 20):
        tail = tail[-512:] + data
        if found := ERROR.search(tail):
            return json.loads(found.group())
    raise AssertionError(f"the stream ended without an error frame: {tail[-512:]!r}")


def test_a_terminal_detached_for_not_reading_says_so_and_runs_on(alice: Tenant, sandbox: str) -> None:
    started = time.monotonic()
    s, pid = _terminal(alice, sandbox)
    with closing(s):
        _wait_detached(alice, sandbox, pid)
        frame = _end_of(s)
    print(f"terminal {pid} detached after {time.monotonic() - started:.1f} s: {frame}")
    # Before: {"code": "agent_error", "message": "host agent unreachable: ...", "status": 502}.
    assert frame["code"] == "detached" and frame["status"] == 409, frame
    assert "not read" in frame["message"] and "keeps running" in frame["message"], frame
    # The terminal runs on: connect again, and it answers with its pid and its output.
    url = alice.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sandbox}/pty"
    key = {"X-API-Key": alice.api_key}
    # close_timeout: the close is not waited for behind the output this client leaves unread.
    with ws_connect(url, additional_headers=key, open_timeout=30, close_timeout=1) as c:
        c.send(json.dumps({"type": "connect", "pid": pid}))
        assert json.loads(c.recv(timeout=30)) == {"type": "started", "pid": pid}
        # Output frames split the stream anywhere: the first may be the "\n" of a "y\r" before.
        out = b""
        for _ in range(8):
            frame = c.recv(timeout=30)
            assert isinstance(frame, bytes), frame
            out += frame
            if b"y\r\n" in out:
                break
        assert b"y\r\n" in out, out
    alice.sh(sandbox, f"kill -9 {pid}")
