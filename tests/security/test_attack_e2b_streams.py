"""Attack: hold the control plane's (and the agent's) memory through E2B's envd plane (docs/e2b.md
§3), where Warren's own stream cap (WARREN_MAX_STREAMS_PER_TEAM, services/stream_slots.py) and
its stdin bound (256 KiB queued a stream) must hold as well.

A hostile tenant speaks raw Connect to its sandboxes' envd: it opens more long-lived streams
than the cap (``Start`` of ``sleep``, ``Connect`` to that process, ``WatchDir``, ``StreamInput``)
and reads none of them, then pushes 1 MiB inputs (``SendInput``, the largest one message may be,
many at once, and ``StreamInput``) at commands that never read their stdin. Past the cap a
stream is refused with Connect's ``resource_exhausted`` (HTTP 429), which E2B's SDK raises as
its ``RateLimitException``; a stream's slot comes back when it ends however it ends (its client
gone, its command ended, its sandbox killed); another team is unaffected. Each flood stops at the
first sign of buffering past the bound, so a failure costs the shared machine little."""

from __future__ import annotations

import base64
import json
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from typing import Any

import e2b
import httpx
import pytest

from tests.harness.cp import JWT_SECRET
from tests.harness.e2b import e2b_environment
from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_websocket_memory import BOUND_MIB, MIB, settle, watching
from tests.security.test_what_held_api import PeakRss
from warren.cp.services.envd_tokens import envd_access_token

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

CAP = 64  # WARREN_MAX_STREAMS_PER_TEAM's default, which this module's CP runs with
ATTEMPTS = CAP + 8
INPUT = MIB  # the largest input one SendInput / StreamInput message may carry
SLEEP = ["-c", "exec sleep 1000"]
KILL_SLEEPS = (
    'for d in /proc/[0-9]*; do [ "$(cat $d/comm)" = sleep ] && kill -9 ${d#/proc/}; done 2>/dev/null; true'
)
# The CP's bound under the input floods: the generic one plus what it holds by design, the
# team's queued input (16 of its processes hold a 1 MiB message each: max_streams_per_team x
# 256 KiB). The bodies of the calls in flight (16 at once, 1.4 MiB of base64 JSON each) come on
# top, as for any unary call (measured +51..58 MiB in all).
INPUT_BOUND_MIB = BOUND_MIB + 16
Refusal = tuple[int, dict[str, Any]]
PID = re.compile(rb'"pid":(\d+)}')


# ------------------------------------------------------------------------------ raw Connect


def envelope(msg: dict[str, Any], flags: int = 0) -> bytes:
    payload = json.dumps(msg).encode()
    return bytes((flags,)) + len(payload).to_bytes(4, "big") + payload


def headers(sid: str) -> dict[str, str]:
    return {
        "E2b-Sandbox-Id": sid,
        "E2b-Sandbox-Port": "49983",
        "X-Access-Token": envd_access_token(JWT_SECRET, sid),
        "Connect-Protocol-Version": "1",
    }


def _request(url: str, path: str, sid: str, body: bytes, *, length: bool = True) -> Opened:
    """A streaming Connect request on a socket with a small receive buffer (so a client that
    does not read holds the server back at once); the whole body unless ``length`` is False
    (a client stream: chunked, the caller sends its chunks, ``body`` unused)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    s = Opened()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.settimeout(60)
    s.connect((host, int(port)))
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers(sid).items())
    framing = f"Content-Length: {len(body)}" if length else "Transfer-Encoding: chunked"
    s.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/connect+json\r\n"
        f"{framing}\r\n{extra}\r\n".encode()
        + (body if length else b"")
    )
    return s


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _answer(s: socket.socket, until: bytes) -> tuple[int, bytes, bytes]:
    """The answer's status and head, and what came of its body until ``until`` was seen (a
    stream's first message) or, for a refusal, its whole JSON body."""
    data = b""
    while b"\r\n\r\n" not in data:
        got = s.recv(4096)
        assert got, f"the CP closed the connection: {data!r}"
        data += got
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if status == 200:
        # Until the first message, or a refusal after the head: Connect's end-of-stream message
        # with an error (the guest's own caps, e.g. attach streams to one process).
        while until not in body and b'"error"' not in body:
            got = s.recv(4096)
            assert got, f"the stream ended before {until!r}: {body!r}"
            body += got
        return status, head, body
    lines = head.split(b"\r\n")
    length = next(int(h.split(b":")[1]) for h in lines if h.lower().startswith(b"content-length"))
    while len(body) < length:
        body += s.recv(length - len(body))
    return status, head, body


class Opened(socket.socket):
    """An admitted stream's socket, with what was read of its body (its first message)."""

    first: bytes = b""


def open_stream(url: str, sid: str, method: str, msg: dict[str, Any], until: bytes) -> Opened | Refusal:
    """A server stream left open and unread once ``until`` arrived, or a refusal's status and
    JSON body."""
    s = _request(url, f"/{method}", sid, envelope(msg))
    status, _, body = _answer(s, until)
    if status == 200 and until in body:
        s.first = body
        return s
    if status == 200:  # an end-of-stream error: the JSON after the chunk's and envelope's heads
        with closing(s):
            end = body[body.index(b'{"') : body.rindex(b"}") + 1]
            return status, json.loads(end)["error"]
    with closing(s):
        return status, json.loads(body)


def start_sleep(url: str, sid: str, stdin: bool = False) -> Opened | Refusal:
    msg = {"process": {"cmd": "/bin/sh", "args": SLEEP}, "stdin": stdin}
    return open_stream(url, sid, "process.Process/Start", msg, b'"pid":')


def pid_of(s: Opened) -> int:
    """The pid in a ``Start`` stream's first message (read up to it, not past)."""
    found = PID.search(s.first)
    while found is None:
        s.first += s.recv(1)
        found = PID.search(s.first)
    return int(found.group(1))


def refused_as_rate_limit(refusals: list[Refusal]) -> bool:
    return bool(refusals) and all(
        status == 429 and body.get("code") == "resource_exhausted" and "streams" in body.get("message", "")
        for status, body in refusals
    )


def send_input(url: str, sid: str, pid: int, data: bytes, timeout: float = 5) -> int:
    """One ``SendInput``: its HTTP status (0: no answer within ``timeout``)."""
    body = {"process": {"pid": pid}, "input": {"stdin": base64.b64encode(data).decode()}}
    h = headers(sid) | {"Content-Type": "application/json"}
    try:
        r = httpx.post(f"{url}/process.Process/SendInput", json=body, headers=h, timeout=timeout)
        return r.status_code
    except httpx.TimeoutException:
        return 0


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sandboxes(alice: Tenant, bob: Tenant) -> Iterator[tuple[str, str]]:
    ids = [alice.create(memory_mb=256), bob.create(memory_mb=256)]
    yield ids[0], ids[1]
    alice.w("DELETE", f"/v1/sandboxes/{ids[0]}")
    bob.w("DELETE", f"/v1/sandboxes/{ids[1]}")


def _still_serves(platform: Platform, t: Tenant, sid: str) -> None:
    """E2B's SDK runs a command, watches a directory and feeds a command's stdin in ``sid``."""
    with e2b_environment(platform, template="minimal"):
        sbx = e2b.Sandbox.connect(sid, api_key=t.api_key)
        assert sbx.commands.run("echo ok").stdout == "ok\n"
        handle = sbx.commands.run("head -c 3", background=True, stdin=True)
        sbx.commands.send_stdin(handle.pid, "abc")
        assert handle.wait().stdout == "abc"
        watcher = sbx.files.watch_dir("/tmp")
        watcher.stop()


def _refused_to_the_sdk(platform: Platform, t: Tenant, sid: str) -> None:
    """E2B's SDK, at the cap, raises its rate-limit error naming the limit (its sync
    ``watch_dir`` polls, a unary call: only the async SDK's is a ``WatchDir`` stream)."""
    with e2b_environment(platform, template="minimal"):
        sbx = e2b.Sandbox.connect(sid, api_key=t.api_key)
        with pytest.raises(e2b.RateLimitException, match="streams open"):
            sbx.commands.run("true")


def _until_admitted(open_one: Callable[[], Opened | Refusal], what: str) -> None:
    """Poll (60 s at most) until a stream is admitted again; then close it."""
    deadline = time.monotonic() + 60
    while True:
        got = open_one()
        if not isinstance(got, tuple):
            got.close()
            return
        assert time.monotonic() < deadline, f"{what}: the team's stream slots did not come back: {got}"
        time.sleep(0.5)


def _fill(stack: ExitStack, url: str, sid: str, n: int) -> tuple[list[socket.socket], list[Refusal]]:
    """``n`` attempts, a third each ``Start``, ``Connect`` (to the process started last: the
    guest takes at most 16 attach streams a process, 32 a sandbox, which this test is not
    about) and ``WatchDir``: the open streams, and the refusals."""
    opened: list[socket.socket] = []
    refused: list[Refusal] = []
    last_pid = 0
    for i in range(n):
        if i % 3 == 1 and last_pid:
            sel = {"process": {"pid": last_pid}}
            got = open_stream(url, sid, "process.Process/Connect", sel, b'"start"')
        elif i % 3 == 2:
            got = open_stream(url, sid, "filesystem.Filesystem/WatchDir", {"path": "/tmp"}, b'"start"')
        else:
            got = start_sleep(url, sid)
            if not isinstance(got, tuple):
                last_pid = pid_of(got)
        if isinstance(got, tuple):
            refused.append(got)
        else:
            opened.append(stack.enter_context(closing(got)))
    return opened, refused


# ---------------------------------------------------------------------------------- streams


def test_process_and_watch_streams_past_the_cap_are_refused(
    platform: Platform, alice: Tenant, bob: Tenant, sandboxes: tuple[str, str]
) -> None:
    mine, theirs = sandboxes
    url = platform.cp.e2b_url
    with ExitStack() as stack, watching(platform) as rss:
        opened, refused = _fill(stack, url, mine, ATTEMPTS)
        print(f"{len(opened)} E2B streams open, {len(refused)} refused; RSS growth {rss.grown_mib} MiB")
        assert len(opened) <= CAP, f"{len(opened)} streams open past the cap of {CAP}"
        assert refused_as_rate_limit(refused), refused[:3]
        assert max(rss.grown_mib) < BOUND_MIB, rss.grown_mib
        _refused_to_the_sdk(platform, alice, mine)
        _still_serves(platform, bob, theirs)  # another team is not held back
    # The clients went away (their sockets closed, unread): the slots come back.
    _until_admitted(lambda: start_sleep(url, mine), "clients gone")
    alice.sh(mine, KILL_SLEEPS)


def test_a_slot_comes_back_when_the_command_ends_or_the_sandbox_is_killed(
    platform: Platform, alice: Tenant, sandboxes: tuple[str, str]
) -> None:
    mine, _ = sandboxes
    url = platform.cp.e2b_url
    other = alice.create(memory_mb=256)
    with ExitStack() as stack:
        # One stream of a command that ends on its own, the rest of the cap in another sandbox.
        short = start_sleep(url, mine)
        assert not isinstance(short, tuple), short
        stack.enter_context(closing(short))
        pid = pid_of(short)
        held = []
        for _ in range(CAP - 1):
            got = start_sleep(url, other)
            assert not isinstance(got, tuple), got
            held.append(stack.enter_context(closing(got)))
        got = start_sleep(url, mine)
        assert isinstance(got, tuple) and refused_as_rate_limit([got]), got
        # Its command ends (the client still connected, reading nothing): its slot is free.
        sig = {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}
        r = httpx.post(
            f"{url}/process.Process/SendSignal",
            json=sig,
            headers=headers(mine) | {"Content-Type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        _until_admitted(lambda: start_sleep(url, mine), "command ended")
        # The other sandbox is killed under its 63 streams: their slots come back.
        assert alice.w("DELETE", f"/v1/sandboxes/{other}").status_code in (200, 204)
        deadline = time.monotonic() + 60
        opened: list[socket.socket] = []
        while len(opened) < CAP - 1:
            got = start_sleep(url, mine)
            if isinstance(got, tuple):
                assert time.monotonic() < deadline, f"{len(opened)} slots came back after the kill: {got}"
                time.sleep(0.5)
                continue
            opened.append(stack.enter_context(closing(got)))
    alice.sh(mine, KILL_SLEEPS)


def test_stream_input_counts_toward_the_cap(
    platform: Platform, alice: Tenant, sandboxes: tuple[str, str]
) -> None:
    """A ``StreamInput`` left open (a client stream whose client never ends it) is a stream."""
    mine, _ = sandboxes
    url = platform.cp.e2b_url
    with ExitStack() as stack:
        starter = start_sleep(url, mine, stdin=True)
        assert not isinstance(starter, tuple), starter
        stack.enter_context(closing(starter))
        pid = pid_of(starter)
        refused = _stream_inputs(stack, url, mine, pid)
        opened = 1 + ATTEMPTS - len(refused)
        print(f"{opened} streams open with StreamInput, {len(refused)} refused")
        assert opened <= CAP and refused_as_rate_limit(refused), (opened, refused[:3])
    _until_admitted(lambda: start_sleep(url, mine), "StreamInput clients gone")
    alice.sh(mine, KILL_SLEEPS)


def _stream_inputs(stack: ExitStack, url: str, sid: str, pid: int) -> list[Refusal]:
    """``ATTEMPTS`` ``StreamInput`` streams at ``pid``, all opened before any answer is awaited
    (an admitted stream answers nothing until it ends; a refusal comes at once): the refusals
    that came within 3 s of the last one opened."""
    socks = []
    for _ in range(ATTEMPTS):
        s = _request(url, "/process.Process/StreamInput", sid, b"", length=False)
        stack.enter_context(closing(s))
        s.sendall(chunk(envelope({"start": {"process": {"pid": pid}}})))
        socks.append(s)
    refused: list[Refusal] = []
    waiting, deadline = list(socks), time.monotonic() + 3
    while waiting and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select(waiting, [], [], left)
        for s in readable:
            waiting.remove(s)
            status, _, body = _answer(s, b"")
            assert status != 200, f"the StreamInput ended at once: {body!r}"
            refused.append((status, json.loads(body)))
    return refused


# ------------------------------------------------------------------------------------ input


def _within(rss: PeakRss) -> bool:
    return rss.grown_mib[0] < INPUT_BOUND_MIB and rss.grown_mib[1] < BOUND_MIB


def _flood_input(url: str, sid: str, pids: list[int], per_pid: int, rss: PeakRss) -> dict[int, int]:
    """``per_pid`` 1 MiB ``SendInput`` calls at once at each process, in waves (stopped at the
    first sign of buffering past the bound): how many ended with each HTTP status."""
    counts: dict[int, int] = {}
    lock = threading.Lock()

    def one(pid: int) -> None:
        status = send_input(url, sid, pid, b"x" * INPUT)
        with lock:
            counts[status] = counts.get(status, 0) + 1

    with ThreadPoolExecutor(32) as pool:
        for _ in range(per_pid):
            if not _within(rss):
                break
            list(pool.map(one, pids))
            print(f"  a wave of {len(pids)}: {counts}")
    return counts


def test_input_at_commands_that_do_not_read_is_bounded(
    platform: Platform, alice: Tenant, sandboxes: tuple[str, str]
) -> None:
    """Many 1 MiB ``SendInput`` calls at once at commands that never read stdin (one process,
    then many), and ``StreamInput`` streams pushing 1 MiB messages: what the CP and the agent
    hold stays bounded; the input the platform cannot queue is refused (429)."""
    mine, _ = sandboxes
    url = platform.cp.e2b_url
    with ExitStack() as stack, watching(platform) as rss:
        procs = []
        for _ in range(16):
            s = start_sleep(url, mine, stdin=True)
            assert not isinstance(s, tuple), s
            procs.append(pid_of(s))
            s.close()  # the process runs on, its stdin open, never read
        one = _flood_input(url, mine, [procs[0]] * 32, 2, rss)
        print(f"SendInput x64 at one process: {one}; RSS growth {rss.grown_mib} MiB (CP, agent)")
        many = _flood_input(url, mine, procs, 4, rss)
        print(f"SendInput x64 at 16 processes: {many}; RSS growth {rss.grown_mib} MiB (CP, agent)")
        pushed, ended = _stream_input_flood(stack, url, mine, procs[1], rss)
        print(f"StreamInput x8: {pushed // MIB} MiB taken, {ended} ended; RSS growth {rss.grown_mib} MiB")
        assert _within(rss), rss.grown_mib
        # At 16 processes most calls meet the body budget first (8 MiB per address: 503 since
        # session 11), before the team's input bound (429): either is a refusal.
        assert one.get(429, 0) > 0 and many.get(429, 0) + many.get(503, 0) > 0, (one, many)
    alice.sh(mine, KILL_SLEEPS)


def _stream_input_flood(stack: ExitStack, url: str, sid: str, pid: int, rss: PeakRss) -> tuple[int, int]:
    """Eight ``StreamInput`` streams at ``pid``, each sending 1 MiB data messages until none
    takes more for 3 s, the server answered them all (a stream refused or ended), or RSS grew
    past the bound: the bytes taken, and how many streams the server ended."""
    msg = chunk(envelope({"data": {"input": {"stdin": base64.b64encode(b"y" * INPUT).decode()}}}))
    conns = []
    for _ in range(8):
        s = _request(url, "/process.Process/StreamInput", sid, b"", length=False)
        stack.enter_context(closing(s))
        s.sendall(chunk(envelope({"start": {"process": {"pid": pid}}})))
        s.setblocking(False)
        conns.append(s)
    pending = dict.fromkeys(conns, b"")
    sent, ended, last = 0, 0, time.monotonic()
    deadline = last + 60
    while pending and time.monotonic() - last < 3 and _within(rss):
        assert time.monotonic() < deadline, f"the streams took {sent // MIB} MiB in 60 s and more"
        readable, writable, _ = select.select(list(pending), list(pending), [], 0.2)
        for c in readable:  # the server answered: that stream is over
            del pending[c]
            ended += 1
        for c in writable:
            if c not in pending:
                continue
            data = pending[c] or msg
            try:
                n = c.send(data)
            except OSError:
                del pending[c]
                continue
            pending[c], sent, last = data[n:], sent + n, time.monotonic()
    return sent, ended


def test_connect_streams_replaying_output_nobody_reads(
    platform: Platform, alice: Tenant, sandboxes: tuple[str, str]
) -> None:
    """``Connect`` replays up to 1 MiB of a background process's output: ``Connect`` streams at a
    process that printed 2 MiB, none read, must not make the CP and the agent hold a MiB each;
    past the guest's 16 attach streams a process they are refused."""
    mine, _ = sandboxes
    url = platform.cp.e2b_url
    script = "head -c 2000000 /dev/zero | tr '\\0' x; touch /tmp/printed; exec sleep 1000"
    msg = {"process": {"cmd": "/bin/sh", "args": ["-c", script]}}
    starter = open_stream(url, mine, "process.Process/Start", msg, b'"pid":')
    assert not isinstance(starter, tuple), starter
    pid = pid_of(starter)
    starter.close()  # the process runs on without a reader, its output kept for attach
    deadline = time.monotonic() + 60
    while alice.x(mine, "test -e /tmp/printed").json()["exit_code"] != 0:
        assert time.monotonic() < deadline, "the background process did not print its output"
        time.sleep(0.5)
    with ExitStack() as stack, watching(platform) as rss:
        opened, refused = 0, []
        for _ in range(ATTEMPTS):
            got = open_stream(url, mine, "process.Process/Connect", {"process": {"pid": pid}}, b'"start"')
            if isinstance(got, tuple):
                refused.append(got)
                continue
            stack.enter_context(closing(got))
            opened += 1
        settle([platform.cp.pid, platform.agents[0].proc.pid])  # the replays held, if any
        print(
            f"{opened} Connect streams replaying 1 MiB, unread; {len(refused)} refused; RSS {rss.grown_mib}"
        )
        # Since session 18 the guest takes at most 16 attach streams to one process (process.py
        # MAX_ATTACH): the rest are refused in Connect's end-of-stream error, not held.
        attach_cap = [r for r in refused if r[0] == 200]
        assert opened == 16, (opened, refused[:3])
        assert all(
            r[1].get("code") == "resource_exhausted" and "attach" in r[1]["message"] for r in attach_cap
        ), attach_cap[:3]
        assert refused_as_rate_limit([r for r in refused if r[0] != 200]) or len(attach_cap) == len(refused)
        assert max(rss.grown_mib) < BOUND_MIB, rss.grown_mib
    alice.sh(mine, KILL_SLEEPS + "; rm -f /tmp/printed")


def test_start_streams_of_output_nobody_reads(
    platform: Platform, alice: Tenant, bob: Tenant, sandboxes: tuple[str, str]
) -> None:
    """The cap's worth of ``Start`` streams of ``yes``, none read: the commands are held back
    (the starter's backpressure, and the exec's flow credit: the agent sends 256 KiB past what
    the CP acknowledged), not buffered by the CP or the agent (before credit: CP +4.4 GiB, agent
    +232 MiB). Terminals (``Start`` with ``pty``) have the same credit since session 11
    (test_attack_terminal_output.py)."""
    mine, theirs = sandboxes
    url = platform.cp.e2b_url
    with ExitStack() as stack, watching(platform) as rss:
        for _ in range(CAP):
            msg = {"process": {"cmd": "/bin/sh", "args": ["-c", "exec yes"]}}
            got = open_stream(url, mine, "process.Process/Start", msg, b'"pid":')
            assert not isinstance(got, tuple), got
            stack.enter_context(closing(got))
        settle([platform.cp.pid, platform.agents[0].proc.pid])
        print(f"{CAP} Start streams of yes, unread: RSS growth {rss.grown_mib} MiB")
        _still_serves(platform, bob, theirs)
        assert max(rss.grown_mib) < BOUND_MIB, rss.grown_mib
    alice.sh(mine, 'for d in /proc/[0-9]*; do [ "$(cat $d/comm)" = yes ] && kill -9 ${d#/proc/}; done; true')
