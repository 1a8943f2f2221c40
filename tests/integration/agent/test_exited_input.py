"""Input to a process or a terminal that has exited, in a real sandbox through the agent's RPCs,
as the CP's interceptor (``cp/hosts/agent_client.py``) turns the answer into an AgentError:
INVALID_ARGUMENT with the guest's words (Warren's API answers 400 with them) and the guest's
kind ``exited`` as data (``warren/rpc/guest_kind.py``), which E2B's SendInput answers
``not_found`` by (``services/envd_process.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.cp.hosts.agent_client import agent_errors
from warren.cp.services.envd_process import input_refused_as_exited
from warren.errors import AgentError
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc

pytestmark = pytest.mark.root


# The worker's shared agent (tests/harness/shared_agent.py): this module only creates and
# destroys a sandbox of its own.
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


@pytest.fixture(scope="module")
def sb(agent: AgentProcess) -> Iterator[str]:
    sid = agent.create(memory_mb=128).sandbox_id
    yield sid
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=60)


@pytest.fixture
async def stub(agent: AgentProcess) -> AsyncIterator[Any]:
    channel = grpc.aio.insecure_channel(agent.address, interceptors=agent_errors("h-test"))
    try:
        yield pb_grpc.HostAgentStub(channel)
    finally:
        await channel.close()


async def _refused(call: Any) -> AgentError:
    with pytest.raises(AgentError) as e:
        await call
    return e.value


async def test_stdin_to_an_exited_process(stub: Any, sb: str) -> None:
    start = pb.ExecStart(sandbox_id=sb, cmd="sleep", args=["30"], tag="quits", background=True)
    events = stub.ExecStream(iter([pb.ExecStreamRequest(start=start)]), timeout=60)
    pid = (await events.read()).start.pid
    events.cancel()  # a background process runs on without its stream
    sel = pb.ProcessSelector(tag="quits")
    # Running, its stdin closed with the stream: refused too, but by another kind.
    await stub.CloseStdin(pb.CloseStdinRequest(sandbox_id=sb, process=sel), timeout=30)
    e = await _refused(stub.SendStdin(pb.SendStdinRequest(sandbox_id=sb, process=sel, data=b"x"), timeout=30))
    assert (e.rpc_code, e.guest_kind) == ("INVALID_ARGUMENT", "invalid_argument"), e.message
    assert not input_refused_as_exited(e)

    await stub.SignalProcess(pb.SignalProcessRequest(sandbox_id=sb, process=sel, signal=9), timeout=30)
    async for ev in stub.AttachProcess(pb.AttachProcessRequest(sandbox_id=sb, process=sel), timeout=60):
        if ev.WhichOneof("event") == "exit":
            break
    e = await _refused(stub.SendStdin(pb.SendStdinRequest(sandbox_id=sb, process=sel, data=b"x"), timeout=30))
    assert (e.rpc_code, e.message) == ("INVALID_ARGUMENT", f"process {pid} has exited: it takes no input")
    assert e.guest_kind == "exited" and input_refused_as_exited(e)


async def test_input_to_an_exited_terminal(stub: Any, sb: str) -> None:
    done = asyncio.Event()

    async def requests() -> AsyncIterator[pb.PtyRequest]:
        size = pb.PtySize(cols=80, rows=24)
        yield pb.PtyRequest(start=pb.PtyStart(sandbox_id=sb, size=size, cmd="/bin/sh", args=["-c", "exit 3"]))
        await done.wait()  # the call's request side stays open until its exit is read

    call = stub.PtyStream(requests(), timeout=60)
    pid = 0
    async for ev in call:
        which = ev.WhichOneof("event")
        if which == "started":
            pid = ev.started
        elif which == "exit":
            assert ev.exit.exit_code == 3
            break
    done.set()
    call.cancel()
    assert pid > 0
    ctl = pb.PtyControlRequest(sandbox_id=sb, pid=pid, input=b"too late\n")
    e = await _refused(stub.PtyControl(ctl, timeout=30))
    assert (e.rpc_code, e.message) == ("INVALID_ARGUMENT", f"terminal {pid} has exited: it takes no input")
    assert e.guest_kind == "exited" and input_refused_as_exited(e)
