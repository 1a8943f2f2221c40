"""Session 29: one team's many exec streams crowding every other team's requests on the CP
(docs/security.md §24, ``services/transfer_turns.py``).

An exec stream relays its client's stdin to the agent message by message on the CP's one event
loop, as an upload does: beside Mallory's 64 streams pushing stdin another team's reads had a p99
of 72-155 ms (``bench/stream_turns.py``). Now stream input takes the same turns as file
transfers: an account hands on at most ``WARREN_TRANSFER_TURNS_PER_OWNER`` (2) messages at once,
the rest wait their turn (p99 26-42 ms), which the CP counts
(``warren_transfer_turn_waits_total``, direction ``input``). Output takes no turns (the agent's
output credit already paces it; turns made no difference there), but runs beside.

The attack, as Mallory runs it: 8 streams pushing 4 MiB of stdin each and 4 streams writing
4 MiB of output each, all at once in her sandbox; then 8 terminals typed into, 1 MiB each.
Expected: every stream's bytes arrive intact (counted), and her input took turns, the streams'
and the terminals' (before, no stream message ever waited: the counter had no such direction).
That the loop then serves other teams sooner is the benchmark's to show, not a test's (no
timing here).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_session29_transfer_turns import _waits

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

MIB = 1 << 20
SIZE = 4 * MIB
OUTPUTS, INPUTS = 4, 8
PIECE = 64 << 10
TERMINAL_SIZE = MIB


def _stream(alice: Tenant, sid: str, kind: str = "exec/stream") -> Any:
    url = alice.url.replace("http://", "ws://", 1) + f"/v1/sandboxes/{sid}/{kind}"
    return ws_connect(url, additional_headers={"X-API-Key": alice.api_key}, max_size=None, open_timeout=30)


def _frames(ws: Any) -> tuple[int, str, int]:
    """Output bytes and stdout text until the exit frame, and the exit code."""
    got, text = 0, []
    while True:
        f = json.loads(ws.recv(timeout=120))
        if f["type"] in ("stdout", "stderr"):
            got += len(f["data"])
            text.append(f["data"])
        elif f["type"] == "exit":
            return got, "".join(text), f["exit_code"]
        elif f["type"] == "error":
            raise AssertionError(f)


def _output(alice: Tenant, sid: str) -> tuple[int, int]:
    """A command writing SIZE bytes: what reached this client, and its exit code."""
    with _stream(alice, sid) as ws:
        script = f"head -c {SIZE} /dev/zero | tr '\\0' a"
        ws.send(json.dumps({"type": "start", "cmd": "/bin/sh", "args": ["-c", script]}))
        got, _, code = _frames(ws)
    return got, code


def _input(alice: Tenant, sid: str) -> tuple[str, int]:
    """SIZE bytes of stdin to ``wc -c``: what it counted, and its exit code."""
    with _stream(alice, sid) as ws:
        ws.send(json.dumps({"type": "start", "cmd": "/usr/bin/wc", "args": ["-c"]}))
        piece = json.dumps({"type": "stdin", "data": "b" * PIECE})
        for _ in range(SIZE // PIECE):
            ws.send(piece)
        ws.send(json.dumps({"type": "close_stdin"}))
        _, text, code = _frames(ws)
    return text.strip(), code


def _terminal(alice: Tenant, sid: str) -> tuple[str, int]:
    """TERMINAL_SIZE bytes typed into a raw terminal's ``head -c | wc -c``: what it counted,
    and its exit code."""
    script = f"stty raw -echo; echo ready; head -c {TERMINAL_SIZE} | wc -c"
    start = {"type": "start", "cols": 80, "rows": 24, "cmd": "/bin/sh", "args": ["-c", script]}
    with _stream(alice, sid, "pty") as ws:
        ws.send(json.dumps(start))
        out = b""
        while b"ready" not in out:  # raw from here: nothing typed is lost to the line discipline
            if isinstance(m := ws.recv(timeout=60), bytes):
                out += m
        for _ in range(TERMINAL_SIZE // PIECE):
            ws.send(b"b" * PIECE)
        out = b""
        while True:
            m = ws.recv(timeout=120)
            if isinstance(m, bytes):
                out += m
            elif (f := json.loads(m))["type"] == "exit":
                return out.decode().split("ready")[-1].strip(), f["exit_code"]
            elif f["type"] == "error":
                raise AssertionError(f)


def test_one_teams_many_streams_take_turns_and_arrive_whole(
    platform: Platform, alice: Tenant, sandbox: str
) -> None:
    before = _waits(platform, "input")

    with ThreadPoolExecutor(OUTPUTS + INPUTS) as pool:
        outs = [pool.submit(_output, alice, sandbox) for _ in range(OUTPUTS)]
        ins = [pool.submit(_input, alice, sandbox) for _ in range(INPUTS)]
        assert [o.result() for o in outs] == [(SIZE, 0)] * OUTPUTS
        assert [i.result() for i in ins] == [(str(SIZE), 0)] * INPUTS

    assert _waits(platform, "input") > before

    # Terminals: their input takes the same turns.
    before = _waits(platform, "input")
    with ThreadPoolExecutor(INPUTS) as pool:
        typed = [pool.submit(_terminal, alice, sandbox) for _ in range(INPUTS)]
        assert [t.result() for t in typed] == [(str(TERMINAL_SIZE), 0)] * INPUTS
    assert _waits(platform, "input") > before
