"""Session 10's hostile client: JSON bodies held open, with no credentials at all.

``BodyCapMiddleware`` (cp/app.py) reads every non-upload request body whole, up to
``WARREN_MAX_JSON_BODY`` (1 MiB), before the app runs: before routing and before
authentication, on any path and method but GET/HEAD/OPTIONS. Nothing bounds how many such
bodies one process holds at once, nor for how long: uvicorn has no body-read deadline and no
connection limit here. An anonymous client that sends 1 MiB minus one byte on each of N
connections and stops holds N MiB of the control plane's memory for as long as it likes (the
team rate limit and the unary byte budget never see these requests).

Expected: what a process holds for request bodies it has not finished reading is bounded
(the unary budget's 128 MiB, or a read deadline that drops a stalled body), not a MiB per
connection.

Fixed (cp/body_cap.py): bodies being read are charged to a budget, 64 MiB per process and 8 MiB
per client address, before their bytes are read (503 ``server_busy`` past it), and a body not
whole within ``WARREN_BODY_READ_TIMEOUT_S`` is 408. This module's CP runs with a 10 s deadline
(the stalled share of the second test is taken in well under a second; the third test waits it
out).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.harness.platform import Platform, running_platform
from tests.harness.tcp_queues import read_all_it_was_sent

pytestmark = pytest.mark.root

CONNECTIONS = 400
BODY = 1 << 20  # WARREN_MAX_JSON_BODY's default
HELD_MIB = 192  # the unary budget (128 MiB) and some
SHARE = 8  # WARREN_BODY_BUDGET_PER_ADDRESS_MB's default: this many stalled bodies per address
DEADLINE_S = 10  # WARREN_BODY_READ_TIMEOUT_S for this module's CP
OTHER = "127.0.0.2"  # another client address (all of 127/8 is loopback)


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    if os.geteuid() != 0:
        pytest.skip("real agents need root (namespaces, cgroups, overlayfs)")
    async with running_platform(db_url, platform_dir, {"WARREN_BODY_READ_TIMEOUT_S": str(DEADLINE_S)}) as p:
        yield p


def cp_rss_mib(platform: Platform) -> int:
    root = psutil.Process(platform.cp.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) >> 20


def head(url: str, length: int) -> tuple[socket.socket, bytes]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=60)
    return s, (
        f"POST /v1/sandboxes HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
    )


def stalled(url: str) -> socket.socket | None:
    """A POST with a 1 MiB JSON body of which all but the last byte is sent; None if the CP
    refused it (answered and closed the connection while it was being sent)."""
    s, request = head(url, BODY)
    try:
        s.sendall(request + b" " * (BODY - 1))
    except OSError:  # reset or broken pipe: the CP answered 503 and closed
        s.close()
        return None
    return s


@pytest.fixture
def attackers(platform: Platform) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def budget_back(platform: Platform) -> None:
    """Wait until this address may send a whole 1 MiB body again (the CP's answer is then
    the route's own: 401, no credentials), i.e. the stalled bodies' charges came back."""
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=platform.url, timeout=60) as http:
        while True:
            body = b"{}" + b" " * (BODY - 2)
            r = http.post("/v1/sandboxes", content=body, headers={"content-type": "application/json"})
            if r.status_code != 503:
                assert r.status_code == 401, r.text
                return
            assert time.monotonic() < deadline, "the body budget did not come back"
            time.sleep(0.5)


def test_stalled_anonymous_bodies_do_not_hold_a_mib_each(
    platform: Platform, attackers: list[socket.socket]
) -> None:
    before = cp_rss_mib(platform)
    most = 0
    for _ in range(CONNECTIONS):
        s = stalled(platform.url)
        if s is not None:
            attackers.append(s)
    # The bytes are in the CP's socket buffers or its memory: wait until it has read all it
    # will (twice in a row, half a second apart), or 30 s.
    deadline = time.monotonic() + 30
    settled = 0
    while time.monotonic() < deadline and settled < 2:
        most = max(most, cp_rss_mib(platform) - before)
        if most > HELD_MIB:
            break
        settled = settled + 1 if read_all_it_was_sent(platform.url) else 0
        time.sleep(0.5)
    most = max(most, cp_rss_mib(platform) - before)
    print(f"{CONNECTIONS} stalled bodies: CP +{most} MiB (from {before} MiB)")
    assert most <= HELD_MIB, (
        f"{CONNECTIONS} anonymous stalled bodies grew the CP by {most} MiB (bound {HELD_MIB})"
    )


def test_another_address_is_served_while_one_holds_its_share(
    platform: Platform, attackers: list[socket.socket]
) -> None:
    budget_back(platform)
    with httpx.Client(base_url=platform.url, timeout=60) as http:
        # Stalled bodies from this address until it holds its whole share (8 of 1 MiB): then even
        # a small, authenticated request from it is refused before its body is read.
        for _ in range(4 * SHARE):
            s = stalled(platform.url)
            if s is not None:
                attackers.append(s)
            r = http.post("/v1/sandboxes", json={"vcpus": "many"}, headers=platform.headers)
            if r.status_code != 400:  # a 400: its body was read and judged, the share not full yet
                break
    assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy", r.text
    assert int(r.headers["retry-after"]) >= 1
    other = httpx.HTTPTransport(local_address=OTHER)
    with httpx.Client(base_url=platform.url, headers=platform.headers, transport=other, timeout=120) as http:
        r = http.post("/v1/sandboxes", json={"template": "minimal"})
        assert r.status_code == 201, r.text
        assert http.delete(f"/v1/sandboxes/{r.json()['id']}").status_code == 204
    for s in attackers:
        s.close()
    attackers.clear()
    budget_back(platform)


def test_a_body_not_whole_by_the_deadline_is_408(platform: Platform) -> None:
    s, request = head(platform.url, 100)
    with s:
        s.sendall(request + b"{")  # and the rest never comes
        answer = b""
        while b"\r\n" not in answer:  # the socket's own 60 s timeout bounds the wait
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
