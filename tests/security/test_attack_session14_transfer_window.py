"""Session 14: file transfers' flow windows grow with the round trip (rpc/flow_window.py), and
what a tenant can make them hold is still bounded.

A window grows only on evidence that its reader takes what it is given, so the attacker reads
each download fast first (its window grows) and then stops reading it, 64 times: the grown
windows of its team stay within its share of the CP's budget (16 MiB past the 256 KiB each), the
CP and the agent within session 13's bound. And a guest's refusal in the middle of an upload (a
full disk, a path through a file) answers its own status, never 502: the agent used to end the
call with a chunk on its way, which turned the CP's status into INTERNAL.

Written as the attacker runs it: its own team's key, its own sandbox, raw sockets. What the
windows hold is the CP's own figure (``warren_file_transfer_window_*``, scraped by the admin).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_session13_transfers import (
    BIG,
    BOUND_MIB,
    STREAM_CAP,
    WAIT_S,
    _addr,
    _download_heads,
    _slots_free,
    _until_still,
    _upload,
)
from tests.security.test_attack_websocket_memory import watching

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

MIB = 1 << 20
TEAM_SHARE = 16 * MIB  # WARREN_TRANSFER_WINDOW_TEAM_MB's default, the shared platform's
READ_FAST = 4 * MIB  # what each download's reader takes before it stops: its window has grown
HELD = "warren_file_transfer_window_held_bytes"
GROWN = "warren_file_transfer_windows_grown_total"
CAPPED = "warren_file_transfer_window_capped_total"


@pytest.fixture(scope="module")
def sandbox(alice: Tenant) -> Iterator[str]:
    """The attacker's sandbox, with a 64 MiB file of random bytes."""
    sid = alice.create(memory_mb=512)
    alice.sh(sid, f"head -c {BIG} /dev/urandom > /tmp/big", timeout_sec=120)
    yield sid
    alice.w("DELETE", f"/v1/sandboxes/{sid}")


def _metric(platform: Platform, name: str) -> float:
    """One of the CP's file window metrics (summed over its labels), as the admin scrapes it."""
    r = httpx.get(f"{platform.url}/metrics", headers=platform.user_headers, timeout=WAIT_S)
    assert r.status_code == 200, r.text[:300]
    found = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", r.text, re.M)
    assert found, f"{name} is not among the CP's metrics"
    return sum(float(v) for v in found)


def _read_fast_then_stop(url: str, head: bytes) -> socket.socket:
    """A download whose reader takes READ_FAST bytes as fast as they come, then nothing more."""
    s = socket.create_connection(_addr(url), timeout=WAIT_S)
    s.sendall(head)
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(65536)
    assert got.startswith(b"HTTP/1.1 200"), got[:300]
    n = len(got) - got.index(b"\r\n\r\n") - 4
    while n < READ_FAST:
        data = s.recv(1 << 20)
        assert data, "the download ended early"
        n += len(data)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # and its kernel buffer takes little
    return s


def test_fast_then_unread_downloads_stay_within_the_teams_share(
    platform: Platform, alice: Tenant, sandbox: str
) -> None:
    """64 downloads of a 64 MiB file, each read fast for 4 MiB (its window grows) and then not at
    all: the team's grown windows together stay within its share, the share (not the readers)
    is what stopped them, and the CP and the agent stay within session 13's bound."""
    _slots_free(platform, alice, sandbox)
    warren, _ = _download_heads(alice, sandbox)
    capped, grown = _metric(platform, CAPPED), _metric(platform, GROWN)
    rss = watching(platform)
    socks: list[socket.socket] = []
    try:
        with rss:
            for _ in range(STREAM_CAP):
                socks.append(_read_fast_then_stop(platform.url, warren))
            _until_still(rss)
        held = _metric(platform, HELD)  # every download open, none read
        capped, grown = _metric(platform, CAPPED) - capped, _metric(platform, GROWN) - grown
    finally:
        for s in socks:
            s.close()
    cp, agent = rss.grown_mib
    print(
        f"{STREAM_CAP} downloads read fast for {READ_FAST // MIB} MiB, then unread: grown windows "
        f"hold {held / MIB:.2f} MiB, {grown:.0f} transfers grew, {capped:.0f} growths capped; "
        f"CP +{cp} MiB, agent +{agent} MiB"
    )
    assert 0 < held <= TEAM_SHARE and grown > 0, held
    assert capped > 0  # the share, not the readers, stopped them
    assert cp < BOUND_MIB and agent < BOUND_MIB, rss.grown_mib
    deadline = time.monotonic() + WAIT_S
    while (held := _metric(platform, HELD)) > 0:  # given back as the downloads end
        assert time.monotonic() < deadline, f"{held} bytes of windows still held"
        time.sleep(0.25)


# ------------------------------------------------------------------ refusals midway through uploads


@pytest.fixture(scope="module")
def small_disk(alice: Tenant) -> Iterator[str]:
    """A sandbox of the attacker's with a 16 MiB disk, whose /tmp/file is a file."""
    sid = alice.create(memory_mb=256, disk_size_mb=16)
    alice.sh(sid, "echo x > /tmp/file")
    yield sid
    alice.w("DELETE", f"/v1/sandboxes/{sid}")


def _answer_to_upload(url: str, key: str, sid: str, path: str, size: int) -> bytes:
    """The status line of a stream upload of ``size`` bytes, sent until the CP answers."""
    s = _upload(url, key, sid, path, size)
    chunk = os.urandom(1 << 20)
    try:
        s.setblocking(False)
        sent, deadline = 0, time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([s], [s] if sent < size else [], [], 0.2)
            if readable:
                break
            if writable:
                with contextlib.suppress(BlockingIOError, ConnectionError):
                    sent += s.send(chunk[: size - sent])
        s.setblocking(True)
        s.settimeout(WAIT_S)
        return s.recv(4096).split(b"\r\n", 1)[0][:12]  # "HTTP/1.1 413"
    finally:
        s.close()


@pytest.mark.parametrize(
    ("path", "status"),
    [("/tmp/full", b"HTTP/1.1 413"), ("/tmp/file/x", b"HTTP/1.1 400")],
    ids=["disk-full", "through-a-file"],
)
def test_a_guest_refusal_midway_through_an_upload_is_its_own_status(
    platform: Platform, alice: Tenant, small_disk: str, path: str, status: bytes
) -> None:
    """Uploads of 48 MiB into a 16 MiB disk (the guest refuses once it is full: 413) and to a
    path through a file (400), 16 times each: never 502 (before: 1 upload in ~8 into a full
    disk, the CP's status for the call INTERNAL "Internal error from Core")."""
    answers = [_answer_to_upload(platform.url, alice.api_key, small_disk, path, 48 * MIB) for _ in range(16)]
    assert set(answers) == {status}, answers
