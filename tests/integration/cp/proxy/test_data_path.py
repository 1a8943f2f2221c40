"""The proxy's two ways to a sandbox port (cp/proxy/data.py): the agent's data port over mutual
TLS (an agent with ``WARREN_AGENT_DIAL_DATA_TLS_ON_LOOPBACK``, as one on another machine is), and
DialPort over gRPC for an agent without a data port — one CP, one agent of each kind. As an
attacker: the TLS data port refuses plain text, a client without a certificate, with a host's
certificate, or with another CA's, before the ticket is read (test_preview.py covers the plain
loopback data port, tests/integration/agent/test_dial_data.py the tickets)."""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.harness.environ import environ
from tests.harness.platform import Platform, running_platform
from tests.integration.cp.proxy.test_preview import Sbx, serve_apps
from warren import ids
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.proxy.data import client_context
from warren.cp.security.ca import CertificateAuthority
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    async with running_platform(
        db_url, platform_dir, {"WARREN_AGENT_DIAL_DATA_TLS_ON_LOOPBACK": "true"}
    ) as p:
        with environ({"WARREN_AGENT_DIAL_DATA_PORT": "-1"}):
            await p.add_agent("127.0.0.22", platform_dir / "agent1")
        yield p


@pytest.fixture(scope="module")
def http(platform: Platform) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
async def sbs(platform: Platform, http: httpx.Client) -> list[Sbx]:
    """One sandbox on each agent (the TLS one first), each serving http.server, the app and
    the WebSocket echo server of test_preview.py."""
    by_host: dict[str, Sbx] = {}
    for _ in range(8):
        r = http.post("/v1/sandboxes", json={"memory_mb": 256}, headers=platform.headers)
        assert r.status_code == 201, r.text
        s = Sbx(platform, http, r.json())
        rows = await platform.sql(
            "SELECT host_id FROM sandboxes WHERE id = :i", i=ids.parse_id(ids.Kind.SANDBOX, s.id)
        )
        by_host.setdefault(ids.host_id(rows[0][0]), s)
        if len(by_host) == 2:
            break
    assert len(by_host) == 2, "the scheduler never used the second host"
    for s in by_host.values():
        serve_apps(s, "hello-over-data")
    return [by_host[h] for h in platform.host_ids]


def test_http_websocket_and_a_download_over_tls_and_over_dialport(platform: Platform, sbs: list[Sbx]) -> None:
    for s in sbs:
        for _ in range(3):  # a fresh connection, then kept ones
            r = s.http.get(s.url(8000, "/hello.txt"), headers=s.tok())
            assert r.status_code == 200 and r.text == "hello-over-data\n", r.text
        url = platform.url.replace("http://", "ws://") + s.url(8002, "/echo")
        with ws_connect(url, additional_headers=s.tok()) as ws:
            blob = os.urandom(200_000)
            ws.send(blob)
            assert ws.recv(timeout=10) == blob
        got = 0
        with s.http.stream("GET", s.url(8001, "/big"), headers=s.tok()) as resp:
            assert resp.status_code == 200
            for chunk in resp.iter_raw(1 << 20):
                got += len(chunk)
        assert got == 200 << 20
        assert s.http.get(s.url(8999, "/"), headers=s.tok()).json()["error"]["code"] == "port_not_open"
    log = platform.cp.log_tail(2000)
    tls_host, no_data_port = platform.host_ids
    # The first agent was reached over its data port, the second over DialPort.
    assert f"event=proxy_dialport_fallback host_id={no_data_port}" in log
    assert f"event=proxy_dialport_fallback host_id={tls_host}" not in log


# -- the TLS data port, as an attacker ----------------------------------------------------------


def _ca(platform_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(platform_dir / "cp" / "ca")


async def _ticket(platform: Platform, platform_dir: Path, sb: Sbx) -> tuple[pb.DialTicket, str]:
    agent = platform.agents[0]
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
    platform: Platform, platform_dir: Path, sbs: list[Sbx]
) -> None:
    ca = _ca(platform_dir)
    t, host_id = await _ticket(platform, platform_dir, sbs[0])
    assert t.tls
    ip = platform.agents[0].ip
    line = b"WDIAL1 %s %s 8000\n" % (t.ticket.hex().encode(), sbs[0].id.encode())
    host = platform.agents[0].credentials()
    stranger = CertificateAuthority.generate("another CA").client_cert()
    refused = {
        "plain text": None,
        "no client certificate": _context(None, None, ca),
        "the host's own (serverAuth) certificate": _context(host["cert_pem"], host["key_pem"], ca),
        "another CA's client certificate": _context(stranger.cert_pem, stranger.key_pem, ca),
    }
    for what, ctx in refused.items():
        assert _first_byte(ip, t.data_port, line, ctx, host_id) == b"", what
    # The ticket was never read by those: the CP's own certificate still redeems it.
    assert _first_byte(ip, t.data_port, line, client_context(ca), host_id) == b"\x01"
