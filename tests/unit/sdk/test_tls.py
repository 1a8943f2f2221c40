"""The SDK shares one TLS context between its clients (a client per ``Sandbox.create``), and that
context still verifies: a server whose certificate no trusted CA signed is refused, by the sync
and the async SDK alike, before any request (the API key included) is sent."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from warren import AsyncSandbox, Sandbox
from warren.cp.security.ca import CertificateAuthority
from warren.sdk import _transport
from warren.sdk._config import ConnectionConfig
from warren.sdk._exceptions import WarrenError

Server = tuple[str, list[bytes]]  # the URL, and what reached the server after a handshake


@pytest.fixture
def untrusted_https(tmp_path: Path) -> Iterator[Server]:
    """An HTTPS server on loopback with a certificate from a CA nobody trusts; it records what
    reached it after a completed handshake (nothing should)."""
    ca = CertificateAuthority.generate("untrusted test CA")
    issued = ca.issue_host_cert("h-test", "127.0.0.1")
    (tmp_path / "cert.pem").write_text(issued.cert_pem)
    (tmp_path / "key.pem").write_text(issued.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    received.append(tls.recv(65536))
            except (OSError, ssl.SSLError):
                pass  # the client refused the handshake: what the test wants

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", received
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_every_transport_shares_one_verifying_context() -> None:
    cfg = ConnectionConfig.resolve(api_key="k", url="http://127.0.0.1:1")
    a, b = _transport.SyncTransport(cfg), _transport.SyncTransport(cfg)
    try:
        ctx = _transport._tls_context()
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert a._client._transport._pool._ssl_context is ctx  # type: ignore[attr-defined]
        assert b._client._transport._pool._ssl_context is ctx  # type: ignore[attr-defined]
    finally:
        a.close()
        b.close()


def test_sync_sdk_refuses_a_certificate_no_trusted_ca_signed(untrusted_https: Server) -> None:
    url, received = untrusted_https
    with pytest.raises(WarrenError) as err:
        Sandbox.create(url=url, api_key="wk_secret_never_sent")
    assert err.value.code == "connection_error"
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)
    assert received == []


def test_async_sdk_refuses_a_certificate_no_trusted_ca_signed(untrusted_https: Server) -> None:
    url, received = untrusted_https

    async def create() -> None:
        await AsyncSandbox.create(url=url, api_key="wk_secret_never_sent")

    with pytest.raises(WarrenError) as err:
        asyncio.run(create())
    assert err.value.code == "connection_error"
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)
    assert received == []
