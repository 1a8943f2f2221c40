"""The preview proxy's ways to a sandbox port (cp/proxy/data.py), and its HTTP relay, full
duplex over each (cp/proxy/http.py). One CP and three agents: one with the plain loopback data
port, one with a data port over mutual TLS (``WARREN_AGENT_DIAL_DATA_TLS_ON_LOOPBACK``, as an
agent on another machine has it) and one without a data port, reached by DialPort over gRPC (its
writes kept to credit). One platform serves both concerns (they were two modules of a platform
each).

The ways: HTTP, a WebSocket and a download over the TLS data port and over DialPort. As an
attacker: the TLS data port refuses plain text, a client without a certificate, with a host's
certificate, or with another CA's, before the ticket is read (test_preview.py covers the plain
loopback data port at length, tests/integration/agent/test_dial_data.py the tickets).

Full duplex: a sandbox server may answer before it has read the request body, as much as it
likes, over the data port and DialPort. Before session 17 the proxy read the response only after
it had sent the whole body: over DialPort an upload stalled once the server had answered
~160-200 KiB without reading; over the data port the same happened once the answer and the body
outgrew the kernel's buffers. The client is a plain socket that sends its body while it reads the
answer (an HTTP/1.1 client may; a client that does not would deadlock with such a server without
any proxy)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import select
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.harness.environ import environ
from tests.harness.platform import Platform, running_platform
from tests.integration.cp.proxy.test_preview import Sbx, _wait_port, serve_apps
from tests.security.test_what_held_api import PeakRss
from warren import ids
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.proxy.data import client_context
from warren.cp.security.ca import CertificateAuthority
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

PORT = 8003  # SERVER's
TIMEOUT_S = 60.0  # a stalled exchange fails the test rather than hanging it
MIB = 1 << 20
# A download over each way: a thousand of the agent's 32 KiB DialPort messages, many times the
# kernel's buffers on the TLS data port (test_preview.py's 200 MiB /big, there for a bound on the
# CP's memory, moved 6x the bytes here, ~8 CPU-s more, for nothing more shown).
DOWNLOAD = 32 * MIB

# ``/up``: answers ``X-Answer-Bytes`` bytes first, then reads the whole body, then ends the
# answer with the body's SHA-256 (hex). ``/early``: a whole 413 at once, then the body drained
# (a lingering close: no reset to lose the answer). ``/hold/<name>``: never answers; reads the
# body (``/tmp/<name>.read`` once whole) and then to the end of the connection
# (``/tmp/<name>.ended``).
SERVER = r"""
import hashlib, socket, threading
def serve(c):
    f = c.makefile("rb")
    path = f.readline().split()[1].decode()
    head = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""): break
        k, v = line.split(b":", 1); head[k.strip().lower()] = v.strip()
    body, answer = int(head.get(b"content-length", b"0")), int(head.get(b"x-answer-bytes", b"0"))
    if "/early" in path:
        c.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n"
                  b"Connection: close\r\n\r\ntoo large")
        c.shutdown(socket.SHUT_WR)
        while f.read(1 << 16): pass
        c.close(); return
    if "/hold/" in path:
        name = "/tmp/" + path.rsplit("/", 1)[1]
        while body and (b := f.read(min(body, 1 << 16))): body -= len(b)
        if not body: open(name + ".read", "w").close()
        while f.read(1 << 16): pass
        open(name + ".ended", "w").close(); c.close(); return
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (answer + 64))
    block = b"a" * (1 << 20)
    while answer:
        n = min(answer, len(block)); c.sendall(block[:n]); answer -= n
    d = hashlib.sha256()
    while body:
        b = f.read(min(body, 1 << 20))
        if not b: return
        d.update(b); body -= len(b)
    c.sendall(d.hexdigest().encode()); c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8003)); s.listen(16)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


# The agents, in the order the platform starts them (its host_ids and agents).
PLAIN, TLS, DIALPORT = "data port", "TLS data port", "DialPort"
AGENTS = [PLAIN, TLS, DIALPORT]


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    async with running_platform(db_url, platform_dir) as p:
        with environ({"WARREN_AGENT_DIAL_DATA_TLS_ON_LOOPBACK": "true"}):
            await p.add_agent("127.0.0.22", platform_dir / "agent1")
        with environ({"WARREN_AGENT_DIAL_DATA_PORT": "-1"}):
            await p.add_agent("127.0.0.24", platform_dir / "agent2")
        yield p


@pytest.fixture(scope="module")
def http(platform: Platform) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
async def sbs(platform: Platform, http: httpx.Client) -> dict[str, Sbx]:
    """A sandbox on each agent, by its way (AGENTS), each serving SERVER and the apps of
    test_preview.py (http.server, the app and the WebSocket echo)."""
    by_host: dict[str, Sbx] = {}
    for _ in range(12):
        r = http.post("/v1/sandboxes", json={"memory_mb": 256}, headers=platform.headers)
        assert r.status_code == 201, r.text
        s = Sbx(platform, http, r.json())
        rows = await platform.sql(
            "SELECT host_id FROM sandboxes WHERE id = :i", i=ids.parse_id(ids.Kind.SANDBOX, s.id)
        )
        by_host.setdefault(ids.host_id(rows[0][0]), s)
        if len(by_host) == len(AGENTS):
            break
    assert len(by_host) == len(AGENTS), "the scheduler never used every host"
    for s in by_host.values():
        s.sh("cat > /tmp/duplex.py", stdin=SERVER)
        s.sh("(setsid python3 /tmp/duplex.py >/dev/null 2>&1 &)")
        serve_apps(s, "hello-over-data")
        _wait_port(s, PORT)
    return {way: by_host[host] for way, host in zip(AGENTS, platform.host_ids, strict=True)}


def _host(platform: Platform, way: str) -> str:
    return platform.host_ids[AGENTS.index(way)]


# -- the ways to a port ---------------------------------------------------------------------------


def test_http_websocket_and_a_download_over_tls_and_over_dialport(
    platform: Platform, sbs: dict[str, Sbx]
) -> None:
    for s in (sbs[TLS], sbs[DIALPORT]):
        for _ in range(3):  # a fresh connection, then kept ones
            r = s.http.get(s.url(8000, "/hello.txt"), headers=s.tok())
            assert r.status_code == 200 and r.text == "hello-over-data\n", r.text
        url = platform.url.replace("http://", "ws://") + s.url(8002, "/echo")
        with ws_connect(url, additional_headers=s.tok()) as ws:
            blob = os.urandom(200_000)
            ws.send(blob)
            assert ws.recv(timeout=10) == blob
        got, tail = 0, b""
        asked = {**s.tok(), "X-Answer-Bytes": str(DOWNLOAD)}
        with s.http.stream("GET", s.url(PORT, "/up"), headers=asked) as resp:
            assert resp.status_code == 200
            for chunk in resp.iter_raw(1 << 20):
                got += len(chunk)
                tail = (tail + chunk)[-64:]
        assert got == DOWNLOAD + 64 and tail.decode() == hashlib.sha256().hexdigest()  # whole, to its end
        assert s.http.get(s.url(8999, "/"), headers=s.tok()).json()["error"]["code"] == "port_not_open"
    log = platform.cp.log_tail(2000)
    # The TLS agent was reached over its data port, the one without a data port over DialPort.
    assert f"event=proxy_dialport_fallback host_id={_host(platform, DIALPORT)}" in log
    assert f"event=proxy_dialport_fallback host_id={_host(platform, TLS)}" not in log


# -- the TLS data port, as an attacker ----------------------------------------------------------


def _ca(platform_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(platform_dir / "cp" / "ca")


async def _ticket(platform: Platform, platform_dir: Path, sb: Sbx) -> tuple[pb.DialTicket, str]:
    agent = platform.agents[AGENTS.index(TLS)]
    pool = HostClientPool(_ca(platform_dir))
    try:
        client = pool.get_for(agent.host_uuid, agent.address)
        t = await client.stub.OpenDialTicket(pb.DialOpen(sandbox_id=sb.id, port=8000), timeout=30)
        return t, client.host_id
    finally:
        await pool.close()


def _context(cert_pem: str | None, key_pem: str | None, ca: CertificateAuthority) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca.cert_pem)
    if cert_pem and key_pem:
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:
            f.write(key_pem + "\n" + cert_pem)
            f.flush()
            ctx.load_cert_chain(f.name)
    return ctx


def _first_byte(ip: str, port: int, line: bytes, ctx: ssl.SSLContext | None, host_id: str) -> bytes:
    """What the data port answers to ``line`` (b"" for a refusal of any kind)."""
    with socket.create_connection((ip, port), timeout=15) as raw:
        try:
            if ctx is None:
                raw.sendall(line)
                return raw.recv(1)
            with ctx.wrap_socket(raw, server_hostname=host_id) as s:
                s.sendall(line)
                return s.recv(1)
        except (ssl.SSLError, ConnectionError, OSError):
            return b""


async def test_tls_data_port_refuses_every_other_client(
    platform: Platform, platform_dir: Path, sbs: dict[str, Sbx]
) -> None:
    ca = _ca(platform_dir)
    t, host_id = await _ticket(platform, platform_dir, sbs[TLS])
    assert t.tls
    agent = platform.agents[AGENTS.index(TLS)]
    line = b"WDIAL1 %s %s 8000\n" % (t.ticket.hex().encode(), sbs[TLS].id.encode())
    host = agent.credentials()
    stranger = CertificateAuthority.generate("another CA").client_cert()
    refused = {
        "plain text": None,
        "no client certificate": _context(None, None, ca),
        "the host's own (serverAuth) certificate": _context(host["cert_pem"], host["key_pem"], ca),
        "another CA's client certificate": _context(stranger.cert_pem, stranger.key_pem, ca),
    }
    for what, ctx in refused.items():
        assert _first_byte(agent.ip, t.data_port, line, ctx, host_id) == b"", what
    # The ticket was never read by those: the CP's own certificate still redeems it.
    assert _first_byte(agent.ip, t.data_port, line, client_context(ca), host_id) == b"\x01"


# -- full duplex ----------------------------------------------------------------------------------


def _body(size: int) -> Iterator[bytes]:
    block = random.Random(17).randbytes(MIB)
    for i in range(0, size, MIB):
        yield (i.to_bytes(8, "big") + block[8:])[: size - i]


def _post(base_url: str, sb: Sbx, path: str, *, body: int, answer: int = 0) -> socket.socket:
    """A connection to the proxy with a POST's head sent (``body`` bytes announced)."""
    url = urlsplit(base_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=TIMEOUT_S)
    sock.sendall(
        f"POST {sb.url(PORT, path)} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"X-Warren-Traffic-Token: {sb.token}\r\nX-Answer-Bytes: {answer}\r\n"
        f"Content-Length: {body}\r\nConnection: close\r\n\r\n".encode()
    )
    return sock


def _read_answer(sock: socket.socket) -> tuple[bytes, int, bytes]:
    """(status line, body bytes, the body's last 64 bytes) of the response on ``sock``."""
    f = sock.makefile("rb")
    status = f.readline().strip()
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    got, tail = 0, b""
    while got < length:
        b = f.read(min(length - got, MIB))
        if not b:
            break
        got += len(b)
        tail = (tail + b)[-64:]
    return status, got, tail


def _send_beside(sock: socket.socket, size: int, errors: list[BaseException]) -> tuple[threading.Thread, Any]:
    """Sends a ``size``-byte body in a thread (its errors into ``errors``); and its SHA-256."""
    want = hashlib.sha256()

    def send() -> None:
        try:
            for piece in _body(size):
                want.update(piece)
                sock.sendall(piece)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t, want


def _exchange(base_url: str, sb: Sbx, *, body: int, answer: int) -> tuple[bytes, int, bytes, str]:
    """POST ``body`` bytes to ``/up`` while reading the answer: (status line, answer bytes, the
    answer's last 64 bytes, the body's SHA-256)."""
    with _post(base_url, sb, "/up", body=body, answer=answer) as sock:
        errors: list[BaseException] = []
        sender, want = _send_beside(sock, body, errors)
        status, got, tail = _read_answer(sock)
        sender.join(TIMEOUT_S)
        assert not errors, errors
        return status, got, tail, want.hexdigest()


def _wait_file(sb: Sbx, path: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while sb.sh(f"test -e {path}")["exit_code"] != 0:
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("way", "body", "answer"),
    [
        (DIALPORT, 4 * MIB, 4 * MIB),
        (PLAIN, 64 * MIB, 64 * MIB),  # past the kernel's buffers both ways
    ],
)
def test_a_server_that_answers_before_reading_the_body(
    platform: Platform, sbs: dict[str, Sbx], way: str, body: int, answer: int
) -> None:
    status, got, tail, digest = _exchange(platform.url, sbs[way], body=body, answer=answer)
    assert status == b"HTTP/1.1 200 OK"
    assert got == answer + 64
    assert tail.decode() == digest


def test_the_paths_were_the_ones_named(platform: Platform, sbs: dict[str, Sbx]) -> None:
    for sb in sbs.values():
        status, got, tail, digest = _exchange(platform.url, sb, body=1, answer=0)
        assert (status, got, tail.decode()) == (b"HTTP/1.1 200 OK", 64, digest)
    log = platform.cp.log_tail(2000)
    assert f"event=proxy_dialport_fallback host_id={_host(platform, DIALPORT)}" in log
    for way in (PLAIN, TLS):
        assert f"event=proxy_dialport_fallback host_id={_host(platform, way)}" not in log


WAYS = [DIALPORT, PLAIN]


@pytest.mark.parametrize("way", WAYS)
def test_an_answer_that_ends_before_the_body_ends_the_exchange(
    platform: Platform, sbs: dict[str, Sbx], way: str
) -> None:
    """The whole 413 reaches the client, whatever becomes of the rest of its body (the proxy
    stops sending it and closes the upstream connection); the next upload goes through."""
    with _post(platform.url, sbs[way], "/early", body=16 * MIB) as sock:
        _send_beside(sock, 16 * MIB, [])  # may be cut: tolerated
        status, got, tail = _read_answer(sock)
    assert (status.split()[1], got, tail) == (b"413", 9, b"too large")
    status, got, tail, digest = _exchange(platform.url, sbs[way], body=MIB, answer=MIB)
    assert (status, got, tail.decode()) == (b"HTTP/1.1 200 OK", MIB + 64, digest)


@pytest.mark.parametrize("whole", [False, True])
@pytest.mark.parametrize("way", WAYS)
def test_a_client_that_leaves_mid_upload_ends_the_upstream_connection(
    platform: Platform, sbs: dict[str, Sbx], way: str, whole: bool
) -> None:
    """The client hangs up in the middle of its body, or after it while the server has not
    answered: the proxy closes its connection to the server (which sees the end)."""
    name = f"hold-{way.replace(' ', '-')}-{'whole' if whole else 'part'}"
    sock = _post(platform.url, sbs[way], f"/hold/{name}", body=4 * MIB)
    with sock:
        sock.sendall(bytes(4 * MIB if whole else MIB))
        if whole:
            _wait_file(sbs[way], f"/tmp/{name}.read")
    _wait_file(sbs[way], f"/tmp/{name}.ended")


CONNS = 16  # uploads whose clients never read the answer
BOUND_MIB = 48  # the CP's growth for all of them (~0.5 MiB each expected; RSS is noisy)


def _push_until_stalled(socks: list[socket.socket], data: bytes, stall_s: float = 3.0) -> int:
    """Sends ``data`` on every socket again and again, reading nothing, until none has taken a
    byte for ``stall_s`` (at most TIMEOUT_S); the bytes sent."""
    for s in socks:
        s.setblocking(False)
    now = time.monotonic()
    last = dict.fromkeys(socks, now)
    sent, deadline = 0, now + TIMEOUT_S
    while (now := time.monotonic()) < deadline and any(now - t < stall_s for t in last.values()):
        _, writable, _ = select.select([], socks, [], 0.2)
        for s in writable:
            with contextlib.suppress(BlockingIOError):
                sent += s.send(data)
                last[s] = time.monotonic()
    return sent


@pytest.mark.parametrize("way", WAYS)
def test_uploads_whose_answer_is_never_read_hold_a_bounded_share(
    platform: Platform, sbs: dict[str, Sbx], way: str
) -> None:
    """Body and answer now move at once: CONNS clients upload as fast as they are taken to a
    server that answers without end before it reads, and read none of it. Each direction
    stalls at its own bounds (the client's transport, the stream's window and credit), and
    neither is buffered in the CP on the way."""
    with ExitStack() as stack, PeakRss(platform) as rss:
        socks = [
            stack.enter_context(_post(platform.url, sbs[way], "/up", body=1 << 34, answer=1 << 34))
            for _ in range(CONNS)
        ]
        sent = _push_until_stalled(socks, bytes(MIB))
    cp, _ = rss.grown_mib
    print(f"{way}: {CONNS} unread answers ({sent // MIB} MiB of bodies taken): CP +{cp} MiB")
    assert cp <= BOUND_MIB, f"{CONNS} unread answers grew the CP by {cp} MiB (bound {BOUND_MIB})"
