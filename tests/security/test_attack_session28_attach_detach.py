"""Session 28: an attach client the guest detached for not reading was told its process had ended.

A tenant starts a background ``yes`` and attaches to it through the public exec stream
(``{"type": "attach", "pid": N}``), then reads its output slower than ``yes`` writes it. The guest
does not wait for an attach client: it queues the output for it and cuts it off once that holds
guest_agent/lag.py's SUBSCRIBER_CAP / SUBSCRIBERS_TOTAL (8 MiB), closing the connection without a
frame. The agent relayed the broken connection as the process's end: the client's last frame was
``{"type": "exit", "exit_code": -1, "error": "guest closed the connection mid-response"}``
while the process ran on (E2B's Connect: ``unavailable``, 503, "the process's output stream
broke off").

Now the agent tells it apart as it does for a terminal (guest_wire.GuestStream._detached: the
connection broke, the sandbox still runs and its guest answers health on a new connection): the
AttachProcess call ends ``ABORTED`` and the CP answers ``{"type": "error", "code": "detached",
"status": 409}`` saying why; the process keeps running and can be attached again.
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

# The client reads at most this much a second: far below what ``yes`` writes (hundreds of MB/s),
# so it falls 8 MiB behind whatever the load; what was on the way when it was cut (socket
# buffers, gRPC windows: ~10 MiB) is read in seconds.
READ_RATE = 4 << 20
DEADLINE_S = 90  # for the detached stream's end to be read (seconds in practice; slack for load)
LAST = re.compile(rb'\{"type": ?"(?:error|exit)"[^}]*\}')


def _stream(t: Tenant, sid: str, first: dict) -> tuple[socket.socket, int]:
    """An exec stream opened with ``first`` (attach or start), read up to its ``start`` frame."""
    got = try_websocket(t.url, f"/v1/sandboxes/{sid}/exec/stream", {"X-API-Key": t.api_key})
    assert not isinstance(got, tuple), got
    got.sendall(text_frame(json.dumps(first)))
    seen = b""
    while not (m := re.search(rb'"type": ?"start", ?"pid": ?(\d+)\}', seen)):  # before output
        chunk = got.recv(1)
        assert chunk and len(seen) < 256, f"no start frame: {seen!r}"
        seen += chunk
    return got, int(m.group(1))


def _end_of(s: socket.socket) -> dict:
    """The last frame of a stream read at READ_RATE: the error (or exit) it ended with."""
    s.settimeout(DEADLINE_S)
    deadline = time.monotonic() + DEADLINE_S
    tail, read = b"", 0
    while time.monotonic() < deadline and (data := s.recv(64 << 10)):
        tail, read = tail[-512:] + data, read + len(data)
        if found := LAST.search(tail):
            print(f"ended after {read / (1 << 20):.1f} MiB read")
            return json.loads(found.group())
        time.sleep(len(data) / READ_RATE)
    raise AssertionError(f"no end in {DEADLINE_S} s ({read} bytes read): {tail[-512:]!r}")


def test_an_attach_detached_for_not_reading_says_so_and_runs_on(alice: Tenant, sandbox: str) -> None:
    started = time.monotonic()
    r = alice.w("POST", f"/v1/sandboxes/{sandbox}/processes", {"cmd": "/usr/bin/yes"})
    assert r.status_code == 201, r.text
    pid = r.json()["pid"]
    s, _ = _stream(alice, sandbox, {"type": "attach", "pid": pid})
    with closing(s):
        frame = _end_of(s)
    print(f"attach to {pid} ended after {time.monotonic() - started:.1f} s: {frame}")
    _detached_and_running(alice, sandbox, pid, frame)


def test_a_background_start_detached_for_not_reading_says_so_and_runs_on(alice: Tenant, sandbox: str) -> None:
    """The stream that started a background process is not waited for either (unless it asked
    for backpressure): the same cut, the same answer."""
    started = time.monotonic()
    s, pid = _stream(alice, sandbox, {"type": "start", "cmd": "/usr/bin/yes", "background": True})
    with closing(s):
        frame = _end_of(s)
    print(f"background start of {pid} ended after {time.monotonic() - started:.1f} s: {frame}")
    _detached_and_running(alice, sandbox, pid, frame)


def _detached_and_running(alice: Tenant, sandbox: str, pid: int, frame: dict) -> None:
    # Before: {"type": "exit", "exit_code": -1, "error": "guest closed the connection ..."}.
    assert frame.get("code") == "detached" and frame.get("status") == 409, frame
    assert "not read" in frame["data"] and "keeps running" in frame["data"], frame
    # The process runs on: attach again, and it answers with its pid and its output.
    url = alice.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sandbox}/exec/stream"
    key = {"X-API-Key": alice.api_key}
    # close_timeout: the close is not waited for behind the output this client leaves unread.
    with ws_connect(url, additional_headers=key, open_timeout=30, close_timeout=1) as c:
        c.send(json.dumps({"type": "attach", "pid": pid}))
        assert json.loads(c.recv(timeout=30)) == {"type": "start", "pid": pid}
        out = json.loads(c.recv(timeout=30))
        # Its output; or, when this client too falls 8 MiB behind `yes` before the agent has
        # relayed a frame of it (a loaded machine, the agent starved: seen once in CI), the same
        # detach. Either way the attach found the process (its start above), which runs on.
        if out["type"] == "stdout":
            assert "y\n" in out["data"], out
        else:
            assert out.get("code") == "detached", out
    assert alice.sh(sandbox, f"cat /proc/{pid}/comm").strip() == "yes"
    alice.w("POST", f"/v1/sandboxes/{sandbox}/processes/{pid}/signal", {"signal": "SIGKILL"})
