"""The agent's control-plane link (warren.agent.control_plane) against a real control plane,
and the mTLS contract between the CP's HostClientPool and an agent's gRPC server.

These use a minimal HostAgent servicer on loopback so every branch is driven deterministically;
test_multihost.py repeats the key scenarios with real agent processes."""

from __future__ import annotations

import hashlib
import socket
import ssl
import stat
import tempfile
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from tests.harness.cp import InProcessCP, sql
from tests.harness.machine import free_port
from warren import ids
from warren.agent import control_plane as link
from warren.cp.hosts.client_pool import HostClientPool
from warren.errors import AgentError
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc


class Hooks:
    def __init__(self) -> None:
        self.paused = 0
        self.shutdowns = 0

    async def pause_all(self) -> None:
        self.paused += 1

    async def shutdown(self) -> None:
        self.shutdowns += 1

    def hooks(self) -> link.AgentHooks:
        return link.AgentHooks(pause_all=self.pause_all, shutdown=self.shutdown)


async def _registered(cp: InProcessCP, data_dir: Path, address: str = "127.0.0.1:1") -> link.HostCredentials:
    admin = await cp.signup(admin=True)
    _, token = await admin.create_host()
    return await link.obtain_credentials(
        cp_url=cp.url, data_dir=data_dir, register_token=token, address=address
    )


async def test_register_persists_credentials_and_reuses_them(cp: InProcessCP, tmp_path: Path) -> None:
    with pytest.raises(link.ControlPlaneError, match="no saved host credentials and no registration token"):
        await link.obtain_credentials(cp_url=cp.url, data_dir=tmp_path, register_token=None, address=None)
    creds = await _registered(cp, tmp_path)
    path = tmp_path / "host-credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = await link.obtain_credentials(cp_url=cp.url, data_dir=tmp_path, register_token=None, address=None)
    assert again == creds and creds.has_tls and creds.host_id.startswith("host-")
    specs = (
        await sql(cp, "SELECT arch, cpu_cores, memory_mb, disk_gb FROM hosts WHERE address = '127.0.0.1:1'")
    )[0]
    assert specs[0] and specs[1] > 0 and specs[2] > 0 and specs[3] > 0
    with pytest.raises(link.ControlPlaneError, match="401"):
        await link.register(cp.url, "f" * 64, "127.0.0.1:1", tmp_path / "x")


async def test_expired_jwt_is_refreshed_and_written_back(
    cp: InProcessCP, tmp_path: Path, fake_clock: Any
) -> None:
    creds = await _registered(cp, tmp_path)
    hooks = Hooks()
    loop = link.HeartbeatLoop(cp.url, tmp_path, creds, hooks.hooks())
    async with link.httpx.AsyncClient(base_url=cp.url) as http:
        assert await loop.beat_once(http)
        fake_clock.advance(7 * 86400 + 60)  # the 7-day host JWT has expired
        assert await loop.beat_once(http)  # 401 → refresh
        assert loop.creds.jwt != creds.jwt and loop.creds.refresh_token != creds.refresh_token
        assert link.load_credentials(tmp_path) == loop.creds
        assert await loop.beat_once(http) and loop.failures == 0
    assert hooks.paused == 0


async def test_refused_refresh_pauses_everything_and_stops(
    cp: InProcessCP, tmp_path: Path, fake_clock: Any
) -> None:
    creds = await _registered(cp, tmp_path)
    await sql(cp, "UPDATE host_refresh_tokens SET revoked_at = now()")
    hooks = Hooks()
    loop = link.HeartbeatLoop(cp.url, tmp_path, creds, hooks.hooks(), interval_s=0.01)
    fake_clock.advance(7 * 86400 + 60)
    await loop.run()  # returns: the loop stops for good
    assert hooks.paused == 1 and loop.stopped_reason == "refresh_failed"


async def test_three_transport_failures_pause_once_and_keep_trying(tmp_path: Path) -> None:
    creds = link.HostCredentials(host_id="host-x", jwt="a.e30.b", refresh_token="r")
    hooks = Hooks()
    loop = link.HeartbeatLoop(f"http://127.0.0.1:{free_port()}", tmp_path, creds, hooks.hooks())
    async with link.httpx.AsyncClient(base_url=loop.cp_url) as http:
        for _ in range(2):
            assert await loop.beat_once(http)
        assert hooks.paused == 0
        for _ in range(3):
            assert await loop.beat_once(http)
    assert hooks.paused == 1 and loop.failures == 5


async def test_deleted_host_removes_credentials_and_shuts_down(cp: InProcessCP, tmp_path: Path) -> None:
    creds = await _registered(cp, tmp_path, "127.0.0.1:2")
    admin = await cp.signup(admin=True)
    assert (await admin.req("DELETE", f"/v1/hosts/{creds.host_id}")).status_code == 204
    hooks = Hooks()
    loop = link.HeartbeatLoop(cp.url, tmp_path, creds, hooks.hooks(), interval_s=0.01)
    await loop.run()
    assert hooks.shutdowns == 1 and loop.stopped_reason == "host_deleted"
    assert not (tmp_path / "host-credentials.json").exists()


class _Agent(pb_grpc.HostAgentServicer):
    async def ListSandboxes(self, request: Any, context: Any) -> pb.ListSandboxesResponse:
        return pb.ListSandboxesResponse(sandboxes=[pb.SandboxInfo(sandbox_id="sb-x")])


async def _serve(tls: link.TlsMaterial, address: str) -> grpc.aio.Server:
    server = grpc.aio.server()
    pb_grpc.add_HostAgentServicer_to_server(_Agent(), server)
    server.add_secure_port(address, tls.server_credentials())
    await server.start()
    return server


def _served_fingerprint(address: str, ca_pem: str, client_cert: Any, host_id: str) -> str:
    host, port = address.rsplit(":", 1)
    ctx = ssl.create_default_context(cadata=ca_pem)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "c.pem").write_text(client_cert.cert_pem)
        (Path(d) / "k.pem").write_text(client_cert.key_pem)
        ctx.load_cert_chain(Path(d) / "c.pem", Path(d) / "k.pem")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host_id) as s,
    ):
        der = s.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()


async def test_mtls_identity_and_hot_swapped_certificates(cp: InProcessCP, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    creds = await _registered(cp, tmp_path / "a", address)
    other = await _registered(cp, tmp_path / "b", "127.0.0.1:3")
    tls = link.TlsMaterial(creds)
    server = await _serve(tls, address)
    pool: HostClientPool = cp.app.state.pool
    try:
        host_uuid = ids.parse_id(ids.Kind.HOST, creds.host_id)
        resp = await pool.get_for(host_uuid, address).stub.ListSandboxes(pb.ListSandboxesRequest(), timeout=5)
        assert [s.sandbox_id for s in resp.sandboxes] == ["sb-x"]

        # A caller without the CP's client certificate is refused by the agent.
        bare = grpc.ssl_channel_credentials(root_certificates=creds.ca_cert_pem.encode())
        async with grpc.aio.secure_channel(
            address, bare, options=[("grpc.ssl_target_name_override", creds.host_id)]
        ) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await pb_grpc.HostAgentStub(ch).ListSandboxes(pb.ListSandboxesRequest(), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # Nor may another host call it with its own (server-only) certificate.
        as_host = grpc.ssl_channel_credentials(
            creds.ca_cert_pem.encode(), other.key_pem.encode(), other.cert_pem.encode()
        )
        async with grpc.aio.secure_channel(
            address, as_host, options=[("grpc.ssl_target_name_override", creds.host_id)]
        ) as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await pb_grpc.HostAgentStub(ch).ListSandboxes(pb.ListSandboxesRequest(), timeout=5)

        # The CP refuses an agent whose certificate is not the one issued to the host it meant to
        # reach: the other host's row pointed at this agent's address.
        other_uuid = ids.parse_id(ids.Kind.HOST, other.host_id)
        with pytest.raises(AgentError) as ae:
            await pool.get_for(other_uuid, address).stub.ListSandboxes(pb.ListSandboxesRequest(), timeout=5)
        assert ae.value.rpc_code == "UNAVAILABLE"

        # Refresh: the new certificate is served to new connections without a restart.
        fp_before = _served_fingerprint(
            address, creds.ca_cert_pem, cp.app.state.ca.client_cert(), creds.host_id
        )
        assert (
            fp_before
            == (await sql(cp, "SELECT cert_fingerprint FROM hosts WHERE address = :a", a=address))[0][0]
        )
        loop = link.HeartbeatLoop(cp.url, tmp_path / "a", creds, Hooks().hooks(), tls=tls)
        async with link.httpx.AsyncClient(base_url=cp.url) as http:
            assert await loop.refresh(http) is True
        fp_after = _served_fingerprint(
            address, creds.ca_cert_pem, cp.app.state.ca.client_cert(), creds.host_id
        )
        assert fp_after != fp_before
        assert (
            fp_after
            == (await sql(cp, "SELECT cert_fingerprint FROM hosts WHERE address = :a", a=address))[0][0]
        )
        await pool.evict(host_uuid)
        resp = await pool.get_for(host_uuid, address).stub.ListSandboxes(pb.ListSandboxesRequest(), timeout=5)
        assert len(resp.sandboxes) == 1
    finally:
        await server.stop(0)
