"""Session 11's hostile client at the HTTP front: what session 10's attack pass left open.

- **The E2B listener** (its own port, its own ASGI app) read request bodies with no budget and no
  deadline: its control API reads a JSON body of up to 1 MiB after authentication, so a tenant
  that sends all but the last byte on each of N connections held N MiB of the CP.
- **Template uploads** (``/v1/templates``, ``/v1/templates/import``) were neither charged to the
  body budget nor timed: a stalled one held its connection, its spool file and one of its team's
  upload slots for ever.
- **uvicorn** put no deadline on a connection that had not finished its request head, and no bound
  on how many it held: N connections that send half a request line (or nothing) stayed open for
  ever, each an fd, until the process could accept nobody.

Fixed: the E2B listener reads bodies through the main port's body cap, on the same per-process
budget (cp/body_cap.py); template uploads are charged a window and paced; a request head must be
whole within ``WARREN_HTTP_HEAD_TIMEOUT_S`` and connections are capped per process and per client
address (cp/connection_guard.py). This module's CP runs with short deadlines and small caps so
that each probe reaches them; every probe prints what the CP held (RSS, open fds).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.harness.platform import Platform, running_platform
from tests.harness.tcp_queues import read_all_it_was_sent
from tests.harness.tenant import Tenant

pytestmark = pytest.mark.root

# WARREN_BODY_READ_TIMEOUT_S: three probes wait it out (a late E2B body, stalled and trickled
# template uploads); the stalled E2B bodies are all sent and measured well within it. (It was
# 10 s: 12 s more of this module's waiting.)
BODY_DEADLINE_S = 6
# WARREN_HTTP_HEAD_TIMEOUT_S: the stalled-heads probe waits it out; every other probe's head is
# whole at once. (It was 10 s: 5 more of waiting that proved nothing more.)
HEAD_DEADLINE_S = 5
MAX_CONNECTIONS = 2500  # WARREN_HTTP_MAX_CONNECTIONS
PER_ADDRESS = 300  # WARREN_HTTP_MAX_CONNECTIONS_PER_ADDRESS
SHARE_MIB = 4  # WARREN_BODY_BUDGET_PER_ADDRESS_MB
BODY = 1 << 20  # WARREN_MAX_JSON_BODY's default
STALLED_BODIES = 300
BODIES_BOUND_MIB = 160  # the 64 MiB body budget and some; 300 MiB unbounded
STALLED_HEADS = 2000
LEGIT = "127.0.0.2"  # a client address no probe uses
WAIT_S = 60


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    if os.geteuid() != 0:
        pytest.skip("real agents need root (namespaces, cgroups, overlayfs)")
    env = {
        "WARREN_BODY_READ_TIMEOUT_S": str(BODY_DEADLINE_S),
        "WARREN_BODY_BUDGET_PER_ADDRESS_MB": str(SHARE_MIB),
        "WARREN_HTTP_HEAD_TIMEOUT_S": str(HEAD_DEADLINE_S),
        "WARREN_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "WARREN_HTTP_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS),
    }
    async with running_platform(db_url, platform_dir, env) as p:
        yield p


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


# ------------------------------------------------------------------------------ helpers


def cp_usage(platform: Platform) -> tuple[int, int]:
    """The CP's RSS (MiB) and open file descriptors."""
    p = psutil.Process(platform.cp.pid)
    return p.memory_info().rss >> 20, p.num_fds()


def hostport(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def connect(url: str, source: str) -> socket.socket:
    return socket.create_connection(hostport(url), timeout=WAIT_S, source_address=(source, 0))


def post_head(path: str, length: int, content_type: str = "application/json", **headers: str) -> bytes:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: cp\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def answer_of(s: socket.socket) -> bytes:
    """What the server sends before it closes (the socket's own timeout bounds the wait)."""
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            got += chunk
    return got


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def wait_closed(socks: list[socket.socket], within_s: float, tick: Callable[[], None]) -> int:
    """Read every socket until the server closes it or ``within_s`` passes; how many it closed.
    ``tick`` runs about once a second meanwhile."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + within_s
    next_tick = 0.0
    while closed < len(socks) and time.monotonic() < deadline:
        if time.monotonic() >= next_tick:
            tick()
            next_tick = time.monotonic() + 1
        for key, _ in sel.select(timeout=1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                sel.unregister(sock)
                closed += 1
    sel.close()
    return closed


REFUSED = (503, -1)  # a refused connection's answer, or a reset that beat it to the client


def served(url: str, path: str, headers: dict[str, str], source: str = LEGIT) -> int:
    """The status of a GET from ``source``; -1 if the connection was closed without one."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=WAIT_S) as http:
        try:
            return http.get(url + path, headers=headers).status_code
        except httpx.TransportError:
            return -1


def until_served(url: str, path: str, headers: dict[str, str], source: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while (code := served(url, path, headers, source)) != 200:
        assert time.monotonic() < deadline, f"{source} still refused ({code}) after its connections went"
        time.sleep(0.5)


# ----------------------------------------------------------- E2B listener: stalled bodies


def test_stalled_bodies_on_the_e2b_listener_are_bounded(
    platform: Platform, alice: Tenant, sockets: list[socket.socket]
) -> None:
    """A tenant's stalled 1 MiB bodies to E2B's control API, from 20 addresses: the CP holds
    the body budget's 64 MiB of them, not 300 MiB; the rest are 503 ``server_busy``."""
    url = platform.cp.e2b_url
    rss0, fds0 = cp_usage(platform)
    for i in range(STALLED_BODIES):
        s = connect(url, f"127.0.7.{i % 20 + 1}")
        try:
            s.sendall(post_head("/sandboxes", BODY, x_api_key=alice.api_key) + b" " * (BODY - 1))
        except OSError:  # answered 503 and closed while it was being sent
            s.close()
            continue
        sockets.append(s)
    most = 0
    # The bytes reach the CP's memory as it reads them: until it has read all it will (twice
    # in a row, half a second apart), or 20 s.
    deadline = time.monotonic() + 20
    settled = 0
    while time.monotonic() < deadline and most <= BODIES_BOUND_MIB and settled < 2:
        most = max(most, cp_usage(platform)[0] - rss0)
        settled = settled + 1 if read_all_it_was_sent(url) else 0
        time.sleep(0.5)
    most = max(most, cp_usage(platform)[0] - rss0)
    print(f"{STALLED_BODIES} stalled E2B bodies: CP +{most} MiB from {rss0} MiB, fds {fds0}")
    assert most <= BODIES_BOUND_MIB, f"{STALLED_BODIES} stalled bodies grew the CP by {most} MiB"


def test_the_e2b_listener_answers_busy_and_late_in_e2b_shape(platform: Platform, alice: Tenant) -> None:
    """Variant: from one address, a body past its share is 503 with Retry-After and a body not
    whole by the deadline is 408, both in E2B's error shape, before the route reads anything."""
    url = platform.cp.e2b_url
    holders = []
    try:
        for _ in range(SHARE_MIB):  # the whole share of 127.0.8.1, stalled
            s = connect(url, "127.0.8.1")
            s.sendall(post_head("/sandboxes", BODY, x_api_key=alice.api_key) + b" " * (BODY // 2))
            holders.append(s)
        deadline = time.monotonic() + WAIT_S
        while True:
            s = connect(url, "127.0.8.1")
            with s:
                s.sendall(post_head("/sandboxes", 2, x_api_key=alice.api_key) + b"{}")
                busy = answer_of(s)
            if status_of(busy) == 503 or time.monotonic() > deadline:
                break
        assert status_of(busy) == 503, busy[:300]
        assert b"retry-after: " in busy.lower() and b'"code":503' in busy, busy[:300]
    finally:
        for s in holders:
            s.close()
    s = connect(url, "127.0.8.2")
    with s:
        s.sendall(post_head("/sandboxes", 100, x_api_key=alice.api_key) + b"{")  # the rest never comes
        late = answer_of(s)
    assert status_of(late) == 408 and b'"code":408' in late, late[:300]


# -------------------------------------------------------------------- template uploads


def _import_head(api_key: str, boundary: str = "B0UNDARY") -> tuple[bytes, bytes]:
    """A template import announcing a 64 MiB image, and the first bytes of its body."""
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nstalled-import\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="image.tar"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + b"\0" * 4096
    head = post_head(
        "/v1/templates/import", 64 << 20, f"multipart/form-data; boundary={boundary}", x_api_key=api_key
    )
    return head, body


def test_stalled_template_uploads_are_charged_and_time_out(
    platform: Platform, alice: Tenant, sockets: list[socket.socket]
) -> None:
    """Two teams' stalled imports (two each, their teams' bound) from one address: while they
    are read they hold the address's body share (a JSON body from it is 503), and each is 408
    once it has kept the CP waiting past the deadline; then the address is served again."""
    start = time.monotonic()
    for key in (platform.api_key, alice.api_key) * 2:
        s = connect(platform.url, "127.0.9.1")
        head, body = _import_head(key)
        s.sendall(head + body)
        sockets.append(s)
    deadline = time.monotonic() + WAIT_S
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.9.1"), timeout=WAIT_S) as http:
        while (r := http.post(platform.url + "/v1/sandboxes", json={"vcpus": "many"})).status_code != 503:
            assert time.monotonic() < deadline and r.status_code == 401, r.text
            time.sleep(0.2)
    assert r.json()["error"]["code"] == "server_busy", r.text
    answers = [answer_of(s) for s in sockets]
    took = time.monotonic() - start
    print(f"4 stalled imports: 408 after {took:.1f} s (deadline {BODY_DEADLINE_S} s)")
    assert all(status_of(a) == 408 for a in answers), [a[:200] for a in answers]
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.9.1"), timeout=WAIT_S) as http:
        r = http.post(platform.url + "/v1/sandboxes", json={"vcpus": "many"}, headers=platform.headers)
        assert r.status_code == 400, r.text  # read and judged: the share came back


def test_a_trickled_template_upload_times_out(platform: Platform) -> None:
    """Variant: an upload that keeps sending, one byte every half second, cannot stretch its
    deadline (it is paced: the time waited for bytes may grow by one second per 16 KiB)."""
    s = connect(platform.url, "127.0.9.2")
    head, body = _import_head(platform.api_key)
    with s:
        s.sendall(head + body)
        s.settimeout(0.5)
        answer = b""
        deadline = time.monotonic() + WAIT_S
        while not answer and time.monotonic() < deadline:
            try:
                answer = s.recv(65536)
            except TimeoutError:
                with contextlib.suppress(OSError):
                    s.sendall(b"\0")
    assert status_of(answer) == 408, answer[:300]


# ----------------------------------------------------------------- stalled request heads


def test_stalled_heads_are_closed_and_the_front_still_serves(
    platform: Platform, sockets: list[socket.socket]
) -> None:
    """2 000 connections, half to each listener, from 8 addresses: half send part of a request
    line, half nothing. A request from another address is served on both ports meanwhile; the
    CP closes every one of them once the head deadline passes."""
    rss0, fds0 = cp_usage(platform)
    for i in range(STALLED_HEADS):
        url = platform.url if i % 2 else platform.cp.e2b_url
        s = connect(url, f"127.0.10.{i % 8 + 1}")
        if i % 4 < 2:
            s.sendall(b"POST /v1/sandboxes HT")
        sockets.append(s)
    assert served(platform.url, "/v1/sandboxes", platform.headers) == 200
    assert served(platform.cp.e2b_url, "/sandboxes", {"X-API-KEY": platform.api_key}) == 200
    peak = [rss0, fds0]

    def sample() -> None:
        rss, fds = cp_usage(platform)
        peak[:] = [max(peak[0], rss), max(peak[1], fds)]

    closed = wait_closed(sockets, HEAD_DEADLINE_S + WAIT_S, sample)
    rss2, fds2 = cp_usage(platform)
    print(
        f"{STALLED_HEADS} stalled heads: CP {rss0} MiB (peak {peak[0]}, after {rss2}), fds {fds0} "
        f"(peak {peak[1]}, after {fds2}); {closed} closed by the CP"
    )
    assert closed == STALLED_HEADS, f"{STALLED_HEADS - closed} stalled connections still open"


def _keep_alive(url: str, source: str, n: int) -> tuple[list[socket.socket], int]:
    """``n`` connections from ``source`` that each finished a request and stay open (idle
    keep-alive: the head deadline does not apply); the first refused one ends the run."""
    socks: list[socket.socket] = []
    for _ in range(n):
        s = connect(url, source)
        try:
            s.sendall(b"GET /v1/no-such-route HTTP/1.1\r\nHost: cp\r\n\r\n")
            status = status_of(s.recv(65536))
        except OSError:
            status = -1
        if status != 404:
            s.close()
            return socks, status
        socks.append(s)
    return socks, 0


def test_connections_past_the_per_address_cap_are_refused(
    platform: Platform, sockets: list[socket.socket]
) -> None:
    held, refused = _keep_alive(platform.url, "127.0.11.1", PER_ADDRESS + 1)
    sockets += held
    fds = cp_usage(platform)[1]
    print(f"one address: {len(held)} connections held, the next {refused}; CP fds {fds}")
    assert len(held) == PER_ADDRESS and refused in REFUSED, (len(held), refused)
    assert served(platform.url, "/v1/sandboxes", platform.headers, "127.0.11.1") in REFUSED
    assert served(platform.url, "/v1/sandboxes", platform.headers, "127.0.11.2") == 200
    for s in sockets:
        s.close()
    until_served(platform.url, "/v1/sandboxes", platform.headers, "127.0.11.1")


def test_connections_past_the_process_cap_are_refused(
    platform: Platform, sockets: list[socket.socket]
) -> None:
    """Variant: from many addresses until the process's cap; a fresh address is refused too,
    and served once they go."""
    refused = 0
    for i in range(MAX_CONNECTIONS // (PER_ADDRESS - 50) + 1):
        held, refused = _keep_alive(platform.url, f"127.0.12.{i + 1}", PER_ADDRESS - 50)
        sockets += held
        if refused:
            break
    fds = cp_usage(platform)[1]
    print(f"many addresses: {len(sockets)} connections held, the next {refused}; CP fds {fds}")
    assert refused in REFUSED and len(sockets) <= MAX_CONNECTIONS, (len(sockets), refused)
    assert served(platform.url, "/v1/sandboxes", platform.headers, "127.0.13.1") in REFUSED
    for s in sockets:
        s.close()
    until_served(platform.url, "/v1/sandboxes", platform.headers, "127.0.13.1")
