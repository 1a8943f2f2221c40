"""An agent servicer of a test's own, served in-process on loopback (plain gRPC), and the CP's
typed stub for it through the CP's own interceptors (``agent_errors``): how a unit test sees
what the CP makes of an agent's answers without a real agent."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc.aio

from warren.cp.hosts.agent_client import agent_errors
from warren.rpc import hostagent_pb2_grpc as pb_grpc


@contextlib.asynccontextmanager
async def served_stub(servicer: Any, host_id: str = "host-x") -> AsyncIterator[Any]:
    """``servicer`` served on a free loopback port, and a ``HostAgentStub`` to it."""
    server = grpc.aio.server()
    pb_grpc.add_HostAgentServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=agent_errors(host_id))
    try:
        yield pb_grpc.HostAgentStub(channel)
    finally:
        await channel.close()
        await server.stop(0)
