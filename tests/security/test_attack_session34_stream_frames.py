"""Session 34: a stream's messages that hand the process no input.

While a command ran, its exec stream read everything else the client sent without a bound, and
two other streams read what their protocol does not even take:

- **Refused frames at line rate.** A frame that is not JSON, or not a known type, is answered
  with a non-fatal error and the stream read on. A client sending 256 KiB binary frames to a
  stream running ``sleep 30`` had the CP read 8.5 GiB in 9 s, 5.2 CPU-s of its one event loop;
  the same over an ``attach``.
- **Signals and ``close_stdin`` queued without bound.** Each became a request queued for the
  agent, and only stdin counted against the queue's bound: a flood of either grew the CP by
  64 MiB in 2 s.
- **A watch read and dropped the client's messages** for as long as it lived: small frames,
  125 MiB in 8 s and a CP core the whole time.
- **E2B's ``StreamInput`` parsed keepalives** at line rate: 56 MiB in 8 s, 8.0 CPU-s.

Now such messages have a budget (``services/stream_pace.py``: 256 at once, then 64 a second; a
refused frame costs 32), past which the stream ends with ``too_many_messages`` (429; Connect's
``resource_exhausted``); an exec stream queues 64 requests at most; a watch is closed 1008 by the
first message. Written as the attacker runs it: her team's key (or her sandbox's envd token), a
raw client that sends as fast as the socket takes and never reads.
"""

from __future__ import annotations

import json
import select
import socket
import time
from contextlib import closing

import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_session12_streams import chunk, envd_headers, envelope, opened, post_head
from tests.security.test_attack_session28_ws_protocol import BINARY, MIB, flood
from tests.security.test_attack_websocket_memory import big_frame, watching
from tests.security.test_what_held_api import raw_websocket, text_frame

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

FLOOD_S = 8
# What may get through before the stream ends: the kernels' socket buffers on loopback (~3 MiB)
# and the budget's 8 refused frames (8 x 256 KiB). Before: the flood's whole 256 MiB within a
# second.
REFUSED_BOUND = 32 * MIB
GROWTH_BOUND_MIB = 32  # before: 64 MiB (the flood's own stop) within 2 s
SLEEP = {"type": "start", "cmd": "sleep", "args": ["30"]}
UNKNOWN = big_frame(json.dumps({"type": "nope", "pad": "x" * (256 << 10)}).encode())


def _exec_stream(alice: Tenant, sandbox: str) -> socket.socket:
    return raw_websocket(alice.url, f"/v1/sandboxes/{sandbox}/exec/stream", {"X-API-Key": alice.api_key})


def _background_sleep(alice: Tenant, sandbox: str) -> int:
    r = alice.w("POST", f"/v1/sandboxes/{sandbox}/processes", {"cmd": "sleep", "args": ["30"]})
    assert r.status_code == 201, r.text
    pid: int = r.json()["pid"]
    return pid


@pytest.mark.parametrize(
    ("route", "frames"),
    [("start", BINARY), ("start", UNKNOWN), ("attach", BINARY)],
    ids=["start-binary", "start-unknown-type", "attach-binary"],
)
def test_refused_frames_while_a_command_runs_are_bounded(
    platform: Platform, alice: Tenant, sandbox: str, route: str, frames: bytes
) -> None:
    first = SLEEP if route == "start" else {"type": "attach", "pid": _background_sleep(alice, sandbox)}
    cp = psutil.Process(platform.cp.pid)
    with closing(_exec_stream(alice, sandbox)) as c:
        c.sendall(text_frame(json.dumps(first)))
        cpu, began = sum(cp.cpu_times()[:2]), time.monotonic()
        sent, _ = flood(c, frames, seconds=FLOOD_S)
        cpu, took = sum(cp.cpu_times()[:2]) - cpu, time.monotonic() - began
    print(f"{route}: {sent / MIB:.1f} MiB of refused frames taken in {took:.1f} s, CP {cpu:.1f} CPU-s")
    assert sent < REFUSED_BOUND, f"{sent // MIB} MiB of refused frames read (CP {cpu:.1f} CPU-s)"


@pytest.mark.parametrize(
    "frame",
    [{"type": "signal", "signal": 28}, {"type": "close_stdin"}],
    ids=["signal", "close_stdin"],
)
def test_a_flood_of_signals_or_closes_is_not_queued_without_bound(
    platform: Platform, alice: Tenant, sandbox: str, frame: dict[str, object]
) -> None:
    """SIGWINCH: ``sleep`` ignores it, so the command outlives the flood."""
    with watching(platform) as rss, closing(_exec_stream(alice, sandbox)) as c:
        c.sendall(text_frame(json.dumps(SLEEP)))
        sent, _ = flood(c, text_frame(json.dumps(frame)) * 1000, rss, FLOOD_S)
    print(f"{frame['type']}: {sent / MIB:.1f} MiB sent, RSS growth {rss.grown_mib} MiB (CP, agent)")
    assert max(rss.grown_mib) < GROWTH_BOUND_MIB, f"{sent // MIB} MiB sent, RSS growth {rss.grown_mib} MiB"


@pytest.mark.parametrize(
    "frame",
    [{"type": "resize", "cols": 80, "rows": 24}, {"type": "signal", "signal": 28}],
    ids=["resize", "signal"],
)
def test_a_terminals_flood_of_control_frames_is_ended(
    platform: Platform, alice: Tenant, sandbox: str, frame: dict[str, object]
) -> None:
    """A terminal's resizes or signals at line rate: the CP and the agent spent a core each on
    them (6.3 and 7.1 CPU-s in 8 s) for as long as the terminal lived."""
    start = {"type": "start", "cmd": "sleep", "args": ["30"], "cols": 80, "rows": 24}
    cp, agent = psutil.Process(platform.cp.pid), psutil.Process(platform.agents[0].proc.pid)
    with closing(raw_websocket(alice.url, f"/v1/sandboxes/{sandbox}/pty", {"X-API-Key": alice.api_key})) as c:
        c.sendall(text_frame(json.dumps(start)))
        cpu = [sum(p.cpu_times()[:2]) for p in (cp, agent)]
        sent, ended = flood(c, text_frame(json.dumps(frame)) * 1000, seconds=FLOOD_S)
        cpu = [sum(p.cpu_times()[:2]) - was for p, was in zip((cp, agent), cpu, strict=True)]
    used = f"CP {cpu[0]:.1f}, agent {cpu[1]:.1f} CPU-s"
    print(f"terminal {frame['type']}: {sent / MIB:.1f} MiB sent, ended: {ended}, {used}")
    assert ended and sent < REFUSED_BOUND, f"{sent // MIB} MiB read in {FLOOD_S} s (ended: {ended}), {used}"


@pytest.mark.parametrize("frames", [BINARY, text_frame("x" * 100) * 1000], ids=["binary", "small-text"])
def test_messages_to_a_watch_are_not_read_on(alice: Tenant, sandbox: str, frames: bytes) -> None:
    """The watch takes no messages; it read and dropped them for as long as it lived (small
    frames: 125 MiB in 8 s, a CP core the whole time)."""
    path = f"/v1/sandboxes/{sandbox}/watch?path=/tmp"
    with closing(raw_websocket(alice.url, path, {"X-API-Key": alice.api_key})) as c:
        sent, _ = flood(c, frames, seconds=FLOOD_S)
    print(f"watch: {sent / MIB:.1f} MiB taken")
    assert sent < REFUSED_BOUND, f"{sent // MIB} MiB of messages read by a watch"


def test_a_message_ends_a_watch_with_1008(alice: Tenant, sandbox: str) -> None:
    url = alice.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sandbox}/watch?path=/tmp"
    with connect(url, additional_headers={"X-API-Key": alice.api_key}, open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=30)) == {"type": "started"}
        ws.send("hello")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd is not None, closed.value
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "the watch takes no messages")


def _signals_then_a_line(alice: Tenant, sandbox: str, signals: int) -> tuple[dict, str]:  # type: ignore[type-arg]
    """A client that sends ``signals`` SIGUSR1 (the command ignores them), then a line of stdin,
    and reads: the stream's last frame and the command's output."""
    script = "trap '' USR1; echo ready; read line; echo got $line"
    url = alice.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sandbox}/exec/stream"
    with connect(url, additional_headers={"X-API-Key": alice.api_key}, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "start", "cmd": "sh", "args": ["-c", script], "timeout_sec": 120}))
        out = ""
        while "ready" not in out:
            f = json.loads(ws.recv(timeout=60))
            out += f.get("data", "") if f["type"] == "stdout" else ""
        try:
            for _ in range(signals):
                ws.send(json.dumps({"type": "signal", "signal": "SIGUSR1"}))
            ws.send(json.dumps({"type": "stdin", "data": "done\n"}))
        except ConnectionClosed:
            pass  # the CP may end a client past its budget while it is still sending; read what it said
        while True:
            f = json.loads(ws.recv(timeout=120))
            if f["type"] == "stdout":
                out += f["data"]
            elif f["type"] in ("exit", "error"):
                return f, out


def test_a_client_within_the_budget_is_served_and_one_past_it_is_told(alice: Tenant, sandbox: str) -> None:
    last, out = _signals_then_a_line(alice, sandbox, 200)
    assert last == {"type": "exit", "exit_code": 0} and "got done" in out, (last, out)
    last, out = _signals_then_a_line(alice, sandbox, 400)
    assert (last.get("code"), last.get("status")) == ("too_many_messages", 429), last
    assert "without input" in last["data"] and "got done" not in out, (last, out)


def test_a_stream_input_of_keepalives_is_ended(platform: Platform, sandbox: str) -> None:
    """E2B's ``StreamInput``, flooded with keepalives: the CP parsed them, a core's worth, for as
    long as the call lived (56 MiB in 8 s, 8.0 CPU-s). Now the call ends with
    ``resource_exhausted`` past the budget."""
    head = post_head("/process.Process/StreamInput", envd_headers(sandbox), None)
    keepalives = chunk(envelope({"keepalive": {}}) * 2000)
    with closing(opened(platform.cp.e2b_url, head)) as s:
        s.sendall(chunk(envelope({"start": {"process": {"pid": 1}}})))
        s.setblocking(False)
        sent, pending, answer = 0, b"", b""
        deadline = time.monotonic() + FLOOD_S
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([s], [s], [], 0.2)
            if readable:
                answer = s.recv(65536)
                break
            if writable:
                data = pending or keepalives
                try:
                    n = s.send(data)
                except OSError:
                    break
                pending, sent = data[n:], sent + n
        s.setblocking(True)
        s.settimeout(30)
        while answer and b"\x02" not in answer.partition(b"\r\n\r\n")[2]:
            more = s.recv(65536)
            if not more:
                break
            answer += more
    print(f"StreamInput: {sent / MIB:.1f} MiB of keepalives sent; answer {answer[-200:]!r}")
    assert answer.startswith(b"HTTP/1.1 200") and b"resource_exhausted" in answer, answer[-300:]
    assert b"without input" in answer, answer[-300:]
