"""gRPC keepalive between the control plane and a real agent (warren/rpc/keepalive.py): the
CP's channels ping, and the agent's server accepts those pings, with or without calls, without
answering GOAWAY ``too_many_pings``. A client pinging faster than the server allows does get
that GOAWAY: the check below would see it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.security.ca import CertificateAuthority
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc
from warren.rpc import keepalive

pytestmark = pytest.mark.root


# The worker's shared agent (tests/harness/shared_agent.py): these tests only create and destroy
# sandboxes of their own.
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


# Keepalive pings a client makes in each check: the fewest a server refusing them answers with
# GOAWAY. gRPC's abuse policy never counts the first ping after the server's last data (here the
# client's BDP probe on the answer), then one strike per early ping, GOAWAY past
# max_ping_strikes (2): at the third keepalive ping. The control server below proves it.
PINGS = 3


def test_the_policies_agree() -> None:
    """The CP pings well above the rate the agent accepts, and both ping while idle."""
    client, server = dict(keepalive.CLIENT_OPTIONS), dict(keepalive.SERVER_OPTIONS)
    assert client["grpc.keepalive_time_ms"] >= 2 * server["grpc.http2.min_ping_interval_without_data_ms"]
    assert client["grpc.keepalive_permit_without_calls"] == server["grpc.keepalive_permit_without_calls"] == 1
    assert client["grpc.http2.max_pings_without_data"] == 0
    assert client["grpc.keepalive_timeout_ms"] < client["grpc.keepalive_time_ms"]


async def test_the_pool_s_channels_carry_the_keepalive_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = HostClientPool(CertificateAuthority.load_or_create(tmp_path / "ca"))
    seen: list[list[tuple[str, object]]] = []
    real = grpc.aio.secure_channel

    def spy(target: str, creds: grpc.ChannelCredentials, options: Any = None, **kw: Any) -> grpc.aio.Channel:
        seen.append(list(options or []))
        return real(target, creds, options=options, **kw)

    monkeypatch.setattr(grpc.aio, "secure_channel", spy)
    try:
        pool.get_for(uuid.uuid4(), "127.0.0.1:1")
    finally:
        await pool.close()
    assert len(seen) == 1 and set(keepalive.CLIENT_OPTIONS) <= set(seen[0])


class _Lister(pb_grpc.HostAgentServicer):
    async def ListSandboxes(
        self, request: pb.ListSandboxesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListSandboxesResponse:
        return pb.ListSandboxesResponse()


@contextlib.asynccontextmanager
async def _default_policy_server() -> AsyncIterator[str]:
    """A server left at gRPC's ping policy (at most one ping every 5 minutes without calls):
    its address."""
    server = grpc.aio.server()
    pb_grpc.add_HostAgentServicer_to_server(_Lister(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def _stays_ready(address: str, ping_s: float, seconds: float) -> bool:
    """Whether an idle channel pinging every ``ping_s`` s keeps its one connection for
    ``seconds`` (a GOAWAY closes it: the channel leaves READY)."""
    # A connection of its own (gRPC shares one between channels alike in options and address).
    options = [*keepalive.client_options(ping_s), ("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = pb_grpc.HostAgentStub(channel)
        await stub.ListSandboxes(pb.ListSandboxesRequest(), timeout=30)
        assert channel.get_state() == grpc.ChannelConnectivity.READY
        try:
            async with asyncio.timeout(seconds):
                await channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
        except TimeoutError:
            return True
        return False


async def test_a_real_agent_accepts_the_pings_and_refuses_faster_ones(agent: AgentProcess) -> None:
    """The channels at once (each its own connection, judged by the server alone): the slow one
    waits out its pings while the fast one earns its GOAWAY, and the same slow pings at a server
    of gRPC's default policy earn theirs within the same wait (it is long enough to see one)."""
    # A little slower than the server's minimum interval (the CP pings at half that rate): kept.
    ping_s = keepalive.SERVER_MIN_PING_S + 1
    wait_s = PINGS * ping_s + ping_s / 2
    async with _default_policy_server() as strict:
        kept = _stays_ready(agent.address, ping_s, wait_s)
        control = _stays_ready(strict, ping_s, wait_s)
        # Once a second (the fastest a gRPC client pings): GOAWAY too_many_pings within a few.
        refused = _stays_ready(agent.address, 1, 60)
        assert await asyncio.gather(kept, control, refused) == [True, False, False]
