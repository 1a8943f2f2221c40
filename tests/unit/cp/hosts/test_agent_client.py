"""The agent client's interceptor: every RPC arity fails as the domain's AgentError, with the
gRPC status name, the agent's message and the host id (a real grpc.aio server on loopback)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from tests.harness.agent_stub import served_stub
from warren.cp.hosts.agent_client import agent_errors
from warren.errors import AgentError
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc


class Refusing(pb_grpc.HostAgentServicer):
    """Knows no sandbox: each call fails with NOT_FOUND, after reading what it was sent."""

    async def Stat(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no such file: {request.path}")

    async def ReadFileStream(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield pb.ReadFileStreamResponse(chunk=b"first")
        await context.abort(grpc.StatusCode.NOT_FOUND, "gone midway")

    async def WriteFileStream(self, request_iterator: Any, context: Any) -> Any:
        async for _ in request_iterator:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "read-only path")

    async def DialPort(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for _ in request_iterator:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "port_not_open: nothing listens on 8000")
        yield pb.DialEvent()

    async def ExecStream(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for _ in request_iterator:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "sandbox is paused")
        yield pb.ExecEvent()


@pytest.fixture
async def stub() -> AsyncIterator[Any]:
    async with served_stub(Refusing()) as s:
        yield s


def _check(e: AgentError, rpc_code: str, message: str) -> None:
    assert (e.rpc_code, e.message) == (rpc_code, message)
    assert e.host_id == "host-x"  # type: ignore[attr-defined]


async def test_unary(stub: Any) -> None:
    with pytest.raises(AgentError) as e:
        await stub.Stat(pb.StatRequest(sandbox_id="sb", path="/nope"), timeout=10)
    _check(e.value, "NOT_FOUND", "no such file: /nope")


async def test_server_streaming_by_read_and_by_iteration(stub: Any) -> None:
    call = stub.ReadFileStream(pb.ReadFileRequest(sandbox_id="sb", path="/f"), timeout=10)
    assert (await call.read()).chunk == b"first"
    with pytest.raises(AgentError) as e:
        await call.read()
    _check(e.value, "NOT_FOUND", "gone midway")
    with pytest.raises(AgentError):
        async for _ in stub.ReadFileStream(pb.ReadFileRequest(sandbox_id="sb", path="/f"), timeout=10):
            pass


async def test_client_streaming_by_write(stub: Any) -> None:
    call = stub.WriteFileStream(None, timeout=10)
    await call.write(pb.WriteFileStreamRequest(meta=pb.WriteFileMeta(sandbox_id="sb", path="/sys/x")))
    with pytest.raises(AgentError) as e:
        await call
    _check(e.value, "PERMISSION_DENIED", "read-only path")


async def test_bidirectional(stub: Any) -> None:
    async def requests() -> AsyncIterator[Any]:
        yield pb.ExecStreamRequest(start=pb.ExecStart(sandbox_id="sb", cmd="true"))

    with pytest.raises(AgentError) as e:
        async for _ in stub.ExecStream(requests(), timeout=10):
            pass
    _check(e.value, "FAILED_PRECONDITION", "sandbox is paused")


async def test_an_unreachable_agent_says_so() -> None:
    async with grpc.aio.insecure_channel("127.0.0.1:1", interceptors=agent_errors("host-x")) as channel:
        with pytest.raises(AgentError) as e:
            await pb_grpc.HostAgentStub(channel).Stat(pb.StatRequest(), timeout=5)
    assert e.value.rpc_code == "UNAVAILABLE"
    assert e.value.message.startswith("host agent unreachable: ")


async def test_a_closed_port_is_the_agent_answering_not_an_unreachable_host(stub: Any) -> None:
    """UNAVAILABLE port_not_open comes from the agent itself: its message is not 'host agent
    unreachable' (the proxy strips the 'port_not_open: ' prefix it then starts with)."""

    async def requests() -> AsyncIterator[Any]:
        yield pb.DialRequest(open=pb.DialOpen(sandbox_id="sb", port=8000))

    with pytest.raises(AgentError) as e:
        async for _ in stub.DialPort(requests(), timeout=10):
            pass
    _check(e.value, "UNAVAILABLE", "port_not_open: nothing listens on 8000")
