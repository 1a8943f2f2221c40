"""A scripted agent: any ``HostAgentServicer`` registered to a control plane like ``warren
agent`` (a one-time token for host credentials) and served over the same mutual TLS. Tests use
it to pin exactly what the CP sends and how it maps an agent's answers and failures."""

from __future__ import annotations

from pathlib import Path

import grpc.aio

from tests.harness.machine import free_port
from warren.agent import control_plane as link
from warren.rpc import hostagent_pb2_grpc as pb_grpc


async def serve_fake_agent(
    servicer: pb_grpc.HostAgentServicer, cp_url: str, register_token: str, data_dir: Path
) -> tuple[grpc.aio.Server, str]:
    """Register, then serve ``servicer`` on a free port of 127.0.0.1 (its credentials are kept
    in ``data_dir``). Returns the started server (``await server.stop(0)`` when done) and the
    address the host registered with."""
    address = f"127.0.0.1:{free_port()}"
    creds = await link.obtain_credentials(
        cp_url=cp_url, data_dir=data_dir, register_token=register_token, address=address
    )
    server = grpc.aio.server()
    pb_grpc.add_HostAgentServicer_to_server(servicer, server)
    server.add_secure_port(address, link.TlsMaterial(creds).server_credentials())
    await server.start()
    return server, address
