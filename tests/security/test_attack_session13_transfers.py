"""Session 13: an admitted file transfer holds a bounded, small amount of the CP and the agent.

Session 12 counted transfers with the team's streams (64 at most), but each admitted one still
held gRPC's flow-control windows, which grpc-core grows to MiBs a stream: 64 downloads nobody
read held CP +306 MiB and agent +181 MiB, and an upload into a guest that takes nothing up to
~17 MiB of the agent. Now both file streams keep flow credit (``ReadFileCredit``,
``WriteFileCredit``; agent/exec_credit.py, cp/services/file_transfer.py): a 256 KiB window each
way.

Written as the attacker runs it: its own team's key, its own sandbox (512 MiB, as session 12's
transfer tests: in 128 MiB the guest serving 64 readers was lost in CI), raw sockets that read or
send what the attacker likes. The guest made slow on purpose is the attacker's own sandbox,
paused (frozen) through the public API while its uploads are under way. The functional tests
check that what the window holds back still arrives whole and in order.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_session12_tenants import token_of
from tests.security.test_attack_websocket_memory import watching
from tests.security.test_what_held_api import PeakRss

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

WAIT_S = 60
MIB = 1 << 20
STREAM_CAP = 64  # WARREN_MAX_STREAMS_PER_TEAM's default, which the shared platform runs with
BIG = 64 * MIB
# RSS growth past this, over 64 transfers, is the transfers' bytes held (before flow credit:
# downloads CP +298, agent +181 MiB; uploads into a frozen guest agent +534 MiB), not their
# working set: a window (256 KiB) each in gRPC, plus the agent's guest read-ahead (128 KiB) and
# the HTTP side's buffers (measured after: ~30-40 MiB each).
BOUND_MIB = 80


@pytest.fixture(scope="module")
def sandbox(alice: Tenant) -> Iterator[str]:
    """The attacker's sandbox, with a 64 MiB file of random bytes."""
    sid = alice.create(memory_mb=512)
    alice.sh(sid, f"head -c {BIG} /dev/urandom > /tmp/big && mkdir -p /tmp/up", timeout_sec=120)
    yield sid
    alice.w("POST", f"/v1/sandboxes/{sid}/resume")
    alice.w("DELETE", f"/v1/sandboxes/{sid}")


def _addr(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _download_heads(alice: Tenant, sid: str) -> tuple[bytes, bytes]:
    """The raw requests of a Warren stream download and an E2B download of /tmp/big."""
    body = b'{"path": "/tmp/big"}'
    warren = (
        f"POST /v1/sandboxes/{sid}/files/stream/read HTTP/1.1\r\nHost: cp\r\nX-API-Key: {alice.api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    e2b = (
        f"GET /files?path=/tmp/big HTTP/1.1\r\nHost: cp\r\nE2b-Sandbox-Id: {sid}\r\n"
        f"E2b-Sandbox-Port: 49983\r\nX-Access-Token: {token_of(sid)}\r\n\r\n"
    ).encode()
    return warren, e2b


def _unread_download(url: str, head: bytes) -> tuple[socket.socket, bytes]:
    """A download whose answer's first bytes are read and nothing more (a small receive buffer)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.settimeout(WAIT_S)
    s.connect(_addr(url))
    s.sendall(head)
    return s, s.recv(1024)


def _slots_free(platform: Platform, alice: Tenant, sid: str) -> None:
    """Until the team's stream slots of an earlier test have come back with its connections."""
    warren, _ = _download_heads(alice, sid)
    deadline = time.monotonic() + WAIT_S
    while True:
        s, first = _unread_download(platform.url, warren)
        s.close()
        if first.startswith(b"HTTP/1.1 200"):
            return
        assert time.monotonic() < deadline, f"streams still refused: {first[:200]!r}"
        time.sleep(0.5)


def test_downloads_nobody_reads_hold_a_window_each(platform: Platform, alice: Tenant, sandbox: str) -> None:
    """64 downloads of a 64 MiB file (Warren's stream route and E2B's ``/files``, half each),
    read no further than their first bytes: the CP and the agent hold a window each, not gRPC's
    windows (before: CP +306 MiB, agent +181 MiB)."""
    _slots_free(platform, alice, sandbox)
    warren, e2b = _download_heads(alice, sandbox)
    rss = watching(platform)
    socks: list[socket.socket] = []
    try:
        with rss:
            for i in range(STREAM_CAP):
                s, first = _unread_download(
                    *((platform.url, warren) if i % 2 else (platform.cp.e2b_url, e2b))
                )
                socks.append(s)
                assert first.startswith(b"HTTP/1.1 200"), first[:300]
            _until_still(rss)
    finally:
        for s in socks:
            s.close()
    cp, agent = rss.grown_mib
    print(f"{STREAM_CAP} unread 64 MiB downloads: CP +{cp} MiB, agent +{agent} MiB")
    assert cp < BOUND_MIB and agent < BOUND_MIB, rss.grown_mib


def _until_still(rss: PeakRss, still_s: float = 1.5) -> None:
    """Until the peaks the sampler records stop growing for ``still_s`` (what each stream buffers
    ahead of its reader has arrived), at most WAIT_S."""
    peak = rss.peak
    last, since, deadline = list(peak), time.monotonic(), time.monotonic() + WAIT_S
    while time.monotonic() < deadline and time.monotonic() - since < still_s:
        time.sleep(0.25)
        if [p // MIB for p in peak] != [p // MIB for p in last]:
            last, since = list(peak), time.monotonic()


# ----------------------------------------------------------------- uploads into a frozen guest


def _upload(url: str, key: str, sid: str, path: str, size: int) -> socket.socket:
    """A stream upload of ``size`` file bytes to ``path`` whose head and form are sent, no byte
    of the file yet."""
    s = socket.create_connection(_addr(url), timeout=WAIT_S)
    form = (
        f'--bb\r\nContent-Disposition: form-data; name="path"\r\n\r\n{path}\r\n'
        '--bb\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
    ).encode()
    tail = b"\r\n--bb--\r\n"
    s.sendall(
        (
            f"POST /v1/sandboxes/{sid}/files/stream/write HTTP/1.1\r\nHost: cp\r\nX-API-Key: {key}\r\n"
            "Content-Type: multipart/form-data; boundary=bb\r\n"
            f"Content-Length: {len(form) + size + len(tail)}\r\n\r\n"
        ).encode()
        + form
    )
    return s


def _push_until_stalled(socks: list[socket.socket], data: bytes, stall_s: float = 1.5) -> int:
    """Send ``data`` on every socket, again and again, until none has taken a byte for
    ``stall_s`` (the CP reads no more of them), at most WAIT_S; the bytes sent."""
    for s in socks:
        s.setblocking(False)
    now = time.monotonic()
    last = dict.fromkeys(socks, now)
    sent, deadline = 0, now + WAIT_S
    while (now := time.monotonic()) < deadline and any(now - t < stall_s for t in last.values()):
        readable, writable, _ = select.select(socks, socks, [], 0.2)
        assert not readable, "an upload was answered while it was still being sent"
        for s in writable:
            try:
                sent += s.send(data)
                last[s] = time.monotonic()
            except BlockingIOError:
                pass
    for s in socks:
        s.setblocking(True)
    return sent


def _temp_files(alice: Tenant, sid: str) -> int:
    return int(alice.sh(sid, "ls -a /tmp/up | grep -c warren- || true").strip() or 0)


def test_uploads_into_a_frozen_guest_hold_a_window_each(
    platform: Platform, alice: Tenant, sandbox: str
) -> None:
    """64 stream uploads under way into the attacker's own sandbox, which it then pauses: the
    guest takes nothing more, and the client keeps sending as fast as the CP reads. The CP and the
    agent hold a window each (before: the agent's gRPC windows, MiBs an upload)."""
    _slots_free(platform, alice, sandbox)
    chunk = os.urandom(64 << 10)
    socks = [
        _upload(platform.url, alice.api_key, sandbox, f"/tmp/up/f{i}", 1 << 30) for i in range(STREAM_CAP)
    ]
    rss = watching(platform)
    try:
        for s in socks:
            s.sendall(chunk)
        deadline = time.monotonic() + WAIT_S
        while (n := _temp_files(alice, sandbox)) < STREAM_CAP:  # every upload reached the guest
            assert time.monotonic() < deadline, f"{n} of {STREAM_CAP} uploads reached the guest"
            time.sleep(0.25)
        r = alice.w("POST", f"/v1/sandboxes/{sandbox}/pause")
        assert r.status_code == 200, r.text
        with rss:
            sent = _push_until_stalled(socks, chunk)
            _until_still(rss)
    finally:
        for s in socks:
            s.close()
        alice.w("POST", f"/v1/sandboxes/{sandbox}/resume")
    cp, agent = rss.grown_mib
    print(f"{STREAM_CAP} uploads into a paused sandbox, {sent // MIB} MiB sent: CP +{cp}, agent +{agent} MiB")
    assert cp < BOUND_MIB and agent < BOUND_MIB, rss.grown_mib
    deadline = time.monotonic() + WAIT_S
    while (n := _temp_files(alice, sandbox)) > 0:  # the broken uploads leave nothing behind
        assert time.monotonic() < deadline, f"{n} partial uploads left in the guest"
        time.sleep(0.25)


# --------------------------------------------------------------- what the window holds back


def _sha256_in(alice: Tenant, sid: str, path: str) -> str:
    return alice.sh(sid, f"sha256sum {path}", timeout_sec=120).split()[0]


@pytest.mark.parametrize("route", ["warren", "e2b"])
def test_a_slow_reader_gets_every_byte_in_order(
    platform: Platform, alice: Tenant, sandbox: str, route: str
) -> None:
    """A reader that stops for half a second now and then (the agent's window fills and drains each
    time) still gets the whole file, in order."""
    if route == "warren":
        base, headers = platform.url, {"X-API-Key": alice.api_key}
        method, path, params, body = (
            "POST",
            f"/v1/sandboxes/{sandbox}/files/stream/read",
            {},
            {"path": "/tmp/big"},
        )
    else:
        base, headers = platform.cp.e2b_url, {"E2b-Sandbox-Id": sandbox, "X-Access-Token": token_of(sandbox)}
        method, path, params, body = "GET", "/files", {"path": "/tmp/big"}, None
    _slots_free(platform, alice, sandbox)
    digest, got, stops = hashlib.sha256(), 0, 0
    with (
        httpx.Client(base_url=base, headers=headers, timeout=WAIT_S) as client,
        client.stream(method, path, params=params, json=body) as resp,
    ):
        assert resp.status_code == 200, resp.read()[:300]
        for data in resp.iter_bytes(64 << 10):
            digest.update(data)
            got += len(data)
            if got >= (stops + 1) * 8 * MIB and stops < 4:
                stops += 1
                time.sleep(0.5)  # the reader stops: the window (256 KiB) fills behind it in ms
    assert stops == 4 and got == BIG
    assert digest.hexdigest() == _sha256_in(alice, sandbox, "/tmp/big")


def test_an_upload_paused_midway_arrives_whole(platform: Platform, alice: Tenant, sandbox: str) -> None:
    """An upload whose guest is frozen midway (the CP stops reading its body) and thawed again
    arrives whole: every byte, in order."""
    _slots_free(platform, alice, sandbox)
    size, piece = 24 * MIB, 1 * MIB
    data = os.urandom(size)
    s = _upload(platform.url, alice.api_key, sandbox, "/tmp/up/whole", size)
    try:
        s.sendall(data[: 4 * MIB])
        r = alice.w("POST", f"/v1/sandboxes/{sandbox}/pause")
        assert r.status_code == 200, r.text
        try:
            s.setblocking(False)
            off, last, deadline = 4 * MIB, time.monotonic(), time.monotonic() + WAIT_S
            while time.monotonic() - last < 1 and time.monotonic() < deadline:  # until it stalls
                _, writable, _ = select.select([], [s], [], 0.2)
                if writable and off < size:
                    try:
                        off += s.send(data[off : off + piece])
                        last = time.monotonic()
                    except BlockingIOError:
                        pass
            s.setblocking(True)
            assert off < size, "the whole upload was taken while the guest was frozen"
        finally:
            r = alice.w("POST", f"/v1/sandboxes/{sandbox}/resume")
            assert r.status_code == 200, r.text
        s.sendall(data[off:] + b"\r\n--bb--\r\n")
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 204"), answer[:300]
    finally:
        s.close()
    assert _sha256_in(alice, sandbox, "/tmp/up/whole") == hashlib.sha256(data).hexdigest()
    alice.sh(sandbox, "rm -f /tmp/up/whole")
