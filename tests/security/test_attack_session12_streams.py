"""Session 12's hostile client on what session 11 left open: streams nobody paced, an E2B upload
with no total, and WebSockets no address counted.

- **Unpaced streams.** The main API's file uploads (``/files/stream/write``, ``/files/write``,
  the signed upload URL) and E2B's Connect streams (``Start``, ``StreamInput``) read their
  bodies with no deadline: a client trickling a byte a second held its connection, the agent's
  file stream or its team's stream slot for ever. Fixed: they are paced by the upload rule
  (``cp/body_cap.Pace``): a file upload as a whole, a Connect stream message by message (a
  ``StreamInput`` may idle ``IDLE_DEADLINES`` body deadlines between messages: E2B's SDK sends a
  keepalive every 50 s).
- **envd ``/files`` had no total.** An octet-stream upload had no cap but the sandbox's disk, a
  multipart one 100 files of the cap each. Fixed: at most ``WARREN_MAX_UPLOAD_BYTES`` in all (413
  in E2B's shape ``{"code": 413, "message"}``), the partial file discarded.
- **Upgraded WebSockets left their address's count** (cp/connection_guard.py): one address held
  as many idle WebSockets as the process cap. Fixed: they stay counted until they close.

This module's CP runs with a short body deadline, a small per-address cap and a small upload
cap, so each probe reaches its bound within seconds.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import select
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.harness.cp import JWT_SECRET
from tests.harness.platform import Platform, running_platform
from tests.harness.tenant import Tenant
from warren.cp.e2b.envd.connect import IDLE_DEADLINES
from warren.cp.services.envd_tokens import envd_access_token

pytestmark = pytest.mark.root

# WARREN_BODY_READ_TIMEOUT_S: the trickle probes wait it out (a StreamInput message
# IDLE_DEADLINES of it), the steady upload and the keepalives outlast it. (It was 4 s: 31 s more
# of this module's waiting, for the same orders of events; the trickles still send a byte a
# second, faster than the deadline, so it is the pace that ends them, not an idle timeout.)
BODY_DEADLINE_S = 2
PER_ADDRESS = 40  # WARREN_HTTP_MAX_CONNECTIONS_PER_ADDRESS
UPLOAD_CAP = 4 << 20  # WARREN_MAX_UPLOAD_BYTES
MIB = 1 << 20
OCTETS = {"Content-Type": "application/octet-stream"}
# Well past every deadline a fix sets here (BODY_DEADLINE_S, IDLE_DEADLINES of them for a
# StreamInput message); before the fixes nothing answered at all.
WAIT_S = 45


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    if os.geteuid() != 0:
        pytest.skip("real agents need root (namespaces, cgroups, overlayfs)")
    env = {
        "WARREN_BODY_READ_TIMEOUT_S": str(BODY_DEADLINE_S),
        "WARREN_HTTP_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS),
        "WARREN_MAX_UPLOAD_BYTES": str(UPLOAD_CAP),
    }
    async with running_platform(db_url, platform_dir, env) as p:
        yield p


# ------------------------------------------------------------------------------ raw HTTP


def hostport(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def opened(url: str, head: str, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(hostport(url), timeout=WAIT_S, source_address=(source, 0))
    s.sendall(head.encode())
    return s


def post_head(path: str, headers: dict[str, str], length: int | None) -> str:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST {path} HTTP/1.1\r\nHost: cp\r\n{framing}\r\n{extra}\r\n"


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def trickle_until_answered(s: socket.socket, byte: bytes, every_s: float = 1.0) -> tuple[int, bytes]:
    """Send ``byte`` every ``every_s`` until the server answers (its status and what came of
    the answer) or ``WAIT_S`` passes (status 0: the server kept waiting)."""
    got, deadline = b"", time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        readable, _, _ = select.select([s], [], [], every_s)
        if readable:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                data = b""
            got += data
            if not data or (b"\r\n\r\n" in got and _whole(got)):
                break
            continue
        try:
            s.sendall(byte)
        except OSError:
            break
    status = int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else 0
    return status, got


def _whole(answer: bytes) -> bool:
    """Whether an answer with a Content-Length has all of its body (a stream's never does)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return b"\x02" in body  # a Connect stream's end envelope


def multipart_head(path: str, boundary: str = "b0undary") -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\n{path}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


# ------------------------------------------------------------------ the main API's uploads


@pytest.mark.parametrize("route", ["stream/write", "write"])
def test_a_trickled_file_upload_is_cut_off(
    platform: Platform, alice: Tenant, sandbox: str, route: str
) -> None:
    """A tenant's upload that sends its form's head and then a byte a second: 408 once its
    pace is spent (the deadline plus a second per 16 KiB), and no file is left."""
    head = post_head(
        f"/v1/sandboxes/{sandbox}/files/{route}",
        {"X-API-Key": alice.api_key, "Content-Type": "multipart/form-data; boundary=b0undary"},
        64 * MIB,
    )
    with contextlib.closing(opened(platform.url, head)) as s:
        s.sendall(multipart_head(f"/tmp/trickled-{route.replace('/', '-')}"))
        status, answer = trickle_until_answered(s, b"x")
    print(f"{route}: {status} {answer[-200:]!r}")
    assert status == 408 and b"request_timeout" in answer, answer[-300:]
    r = alice.w(
        "POST", f"/v1/sandboxes/{sandbox}/files/stat", {"path": f"/tmp/trickled-{route.replace('/', '-')}"}
    )
    assert r.status_code == 404, r.text


def test_a_stalled_signed_upload_is_cut_off(platform: Platform, alice: Tenant, sandbox: str) -> None:
    """Whoever holds a signed upload URL (no API key) and sends its head only, then a byte a
    second: 408, as any upload."""
    r = alice.w("GET", f"/v1/sandboxes/{sandbox}/files/upload-url?path=/tmp/signed-trickle")
    assert r.status_code == 200, r.text
    url = httpx.URL(r.json()["url"])
    target = url.raw_path.decode()
    head = post_head(target, OCTETS, 2 * MIB)  # under the cap
    with contextlib.closing(opened(platform.url, head)) as s:
        status, answer = trickle_until_answered(s, b"x")
    assert status == 408 and b"request_timeout" in answer, answer[-300:]


def test_a_steady_upload_is_never_cut_off(platform: Platform, alice: Tenant, sandbox: str) -> None:
    """The pace is the client's allowance: an upload that keeps sending 32 KiB a second (twice
    the minimum rate) for longer than the deadline arrives whole."""
    head = post_head(
        f"/v1/sandboxes/{sandbox}/files/stream/write",
        {"X-API-Key": alice.api_key, "Content-Type": "multipart/form-data; boundary=b0undary"},
        None,
    )
    seconds, piece = 3 * BODY_DEADLINE_S, b"y" * (32 << 10)
    with contextlib.closing(opened(platform.url, head)) as s:
        s.sendall(chunk(multipart_head("/tmp/steady")))
        for _ in range(seconds):
            s.sendall(chunk(piece))
            time.sleep(1)
        s.sendall(chunk(b"\r\n--b0undary--\r\n") + chunk(b""))
        s.settimeout(WAIT_S)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 204"), answer[:300]
    out = alice.sh(sandbox, "stat -c %s /tmp/steady")
    assert int(out) == seconds * len(piece)


# ---------------------------------------------------------------------- E2B Connect streams


def envd_headers(sid: str) -> dict[str, str]:
    return {
        "E2b-Sandbox-Id": sid,
        "E2b-Sandbox-Port": "49983",
        "X-Access-Token": envd_access_token(JWT_SECRET, sid),
        "Connect-Protocol-Version": "1",
        "Content-Type": "application/connect+json",
    }


def envelope(msg: dict[str, Any], flags: int = 0) -> bytes:
    payload = json.dumps(msg).encode()
    return bytes((flags,)) + len(payload).to_bytes(4, "big") + payload


def test_a_trickled_start_message_is_cut_off(platform: Platform, sandbox: str) -> None:
    """``Start``'s one request message, its envelope head sent and then a byte a second (the
    stream slot was claimed before a byte was read): ``deadline_exceeded`` within the body
    deadline, and the team can open streams again."""
    whole = envelope({"process": {"cmd": "/bin/true", "args": []}})
    head = post_head("/process.Process/Start", envd_headers(sandbox), len(whole) + 4096)
    with contextlib.closing(opened(platform.cp.e2b_url, head)) as s:
        s.sendall(whole[:5])
        status, answer = trickle_until_answered(s, b" ")
    print(f"Start: {status} {answer[-200:]!r}")
    assert status == 504 and b"deadline_exceeded" in answer, answer[-300:]


def test_a_trickled_stream_input_message_is_cut_off(platform: Platform, sandbox: str) -> None:
    """A ``StreamInput`` whose second message (a 1 MiB data envelope) comes a byte a second:
    the stream ends with ``deadline_exceeded`` once that message's allowance is spent."""
    head = post_head("/process.Process/StreamInput", envd_headers(sandbox), None)
    with contextlib.closing(opened(platform.cp.e2b_url, head)) as s:
        s.sendall(chunk(envelope({"start": {"process": {"pid": 1}}})))
        s.sendall(chunk(b"\x00" + MIB.to_bytes(4, "big")))
        status, answer = trickle_until_answered(s, chunk(b" "))
    print(f"StreamInput: {status} {answer[-200:]!r}")
    assert status == 200 and b"deadline_exceeded" in answer, answer[-300:]


def test_an_idle_stream_input_that_sends_keepalives_stays_open(platform: Platform, sandbox: str) -> None:
    """What E2B's SDK does with no input to send: a keepalive now and then (here every 1.5 body
    deadlines, for longer than one message's allowance in all). The clock starts again with each
    message, so the stream stays open, and ends cleanly when its client ends it."""
    head = post_head("/process.Process/StreamInput", envd_headers(sandbox), None)
    every = 1.5 * BODY_DEADLINE_S
    # One round past the allowance (9 s against 8 here): a stream timed from its start would
    # end within the last round, or answer an error at its end. (A second extra round proved
    # nothing more.)
    rounds = int(IDLE_DEADLINES * BODY_DEADLINE_S / every) + 1
    with contextlib.closing(opened(platform.cp.e2b_url, head)) as s:
        s.sendall(chunk(envelope({"start": {"process": {"pid": 1}}})))
        for _ in range(rounds):
            readable, _, _ = select.select([s], [], [], every)
            assert not readable, f"the stream ended: {s.recv(65536)!r}"
            s.sendall(chunk(envelope({"keepalive": {}})))
        s.sendall(chunk(envelope({}, flags=2)) + chunk(b""))
        status, answer = trickle_until_answered(s, b"", every_s=WAIT_S)
    assert status == 200 and b"error" not in answer.partition(b"\r\n\r\n")[2], answer[-300:]


# -------------------------------------------------------------------------- envd /files


def envd_upload(
    platform: Platform, sid: str, path: str | None, body: bytes, **headers: str
) -> httpx.Response:
    h = {k: v for k, v in envd_headers(sid).items() if k not in ("Content-Type", "Connect-Protocol-Version")}
    params = {"path": path} if path else {}
    with httpx.Client(base_url=platform.cp.e2b_url, timeout=120) as c:
        return c.post("/files", params=params, content=body, headers={**h, **headers})


def multipart(files: list[tuple[str, bytes]], boundary: str = "xb0undary") -> tuple[bytes, str]:
    out = b""
    for name, data in files:
        out += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _absent(alice: Tenant, sid: str, *paths: str) -> None:
    for p in paths:
        r = alice.w("POST", f"/v1/sandboxes/{sid}/files/stat", {"path": p})
        assert r.status_code == 404, (p, r.text)


def test_an_octet_stream_upload_is_capped(platform: Platform, alice: Tenant, sandbox: str) -> None:
    """An octet-stream body one MiB past the platform's file limit: E2B's 413, no file."""
    r = envd_upload(
        platform,
        sandbox,
        "/tmp/big-octets",
        b"z" * (UPLOAD_CAP + MIB),
        **OCTETS,
    )
    assert r.status_code == 413 and r.json()["code"] == 413, r.text
    _absent(alice, sandbox, "/tmp/big-octets")
    ok = envd_upload(platform, sandbox, "/tmp/at-cap", b"z" * UPLOAD_CAP, **OCTETS)
    assert ok.status_code == 200, ok.text


def test_a_multipart_upload_is_capped_in_all(platform: Platform, alice: Tenant, sandbox: str) -> None:
    """Three files of half the limit each, every one under the per-file cap: 413 for the whole."""
    names = [f"/tmp/part-{i}" for i in range(3)]
    body, ctype = multipart([(n, b"p" * (UPLOAD_CAP // 2)) for n in names])
    r = envd_upload(platform, sandbox, None, body, **{"Content-Type": ctype})
    assert r.status_code == 413 and r.json()["code"] == 413, r.text
    _absent(alice, sandbox, names[2])


def test_empty_gzip_members_are_capped(platform: Platform, alice: Tenant, sandbox: str) -> None:
    """A gzip body of empty members inflates to nothing, so no inflated cap sees it: the body as
    sent is capped too."""
    member = gzip.compress(b"")
    body = member * ((UPLOAD_CAP + MIB) // len(member))
    r = envd_upload(
        platform, sandbox, "/tmp/empty-members", body,
        **{"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"},
    )  # fmt: skip
    assert r.status_code == 413 and r.json()["code"] == 413, r.text


# -------------------------------------------------------------- WebSockets per address


def _exec_ws(platform: Platform, t: Tenant, sid: str, source: str) -> Any:
    host, port = hostport(platform.url)
    sock = socket.create_connection((host, port), timeout=WAIT_S, source_address=(source, 0))
    try:
        return ws_connect(
            f"ws://{host}:{port}/v1/sandboxes/{sid}/exec/stream",
            sock=sock, additional_headers={"X-API-Key": t.api_key}, open_timeout=WAIT_S,
        )  # fmt: skip
    except Exception:
        sock.close()
        raise


def test_upgraded_websockets_count_against_their_address(
    platform: Platform, alice: Tenant, bob: Tenant, sandbox: str
) -> None:
    """Idle exec streams of two teams (each well under its team's stream cap) from one address:
    at most the per-address cap are accepted, the rest refused at accept; once they close, the
    address is served again."""
    source = f"127.0.12.{uuid.uuid4().int % 200 + 2}"
    theirs = bob.create(memory_mb=128)
    held: list[Any] = []
    refused = 0
    try:
        for i in range(PER_ADDRESS + 10):
            t, sid = (alice, sandbox) if i % 2 else (bob, theirs)
            try:
                held.append(_exec_ws(platform, t, sid, source))
            except Exception as e:
                refused += 1
                print(f"refused: {type(e).__name__}: {str(e)[:120]}")
        print(f"{len(held)} WebSockets held from {source}, {refused} refused")
        assert len(held) <= PER_ADDRESS and refused >= 10
    finally:
        for w in held:
            w.close()
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            _exec_ws(platform, alice, sandbox, source).close()
            break
        except Exception:
            assert time.monotonic() < deadline, "the address's closed WebSockets were never given back"
            time.sleep(0.5)
    bob.w("DELETE", f"/v1/sandboxes/{theirs}")
