"""The guest's error kind from the agent to the CP as data (``warren/rpc/guest_kind.py``): the
agent's own error handling (``rpc_errors.mapped_errors``, ``relay``, ``abort``) on a real
grpc.aio server, the CP's interceptor (``agent_client.agent_errors``) on the client, unary and
streaming calls. The messages here are worded unlike the guest's, so nothing passes by words."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from tests.harness.agent_stub import served_stub
from warren.agent.guest_wire import GuestError
from warren.agent.rpc_errors import GUEST_CODES, abort, kind_metadata, mapped_errors, relay, status_for
from warren.cp.services.envd_process import input_refused_as_exited
from warren.errors import AgentError, InvalidRequest
from warren.rpc import guest_kind
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc

GONE = "that one is gone now"  # not the guest's "has exited"


class Agent(pb_grpc.HostAgentServicer):
    """Fails as the agent's servicer does, with the errors the guest would give."""

    @mapped_errors
    async def SendStdin(self, request: Any, context: Any) -> Any:
        raise GuestError(guest_kind.EXITED, GONE)

    @mapped_errors
    async def PtyControl(self, request: Any, context: Any) -> Any:
        raise GuestError(guest_kind.EXITED, GONE)

    @mapped_errors
    async def CloseStdin(self, request: Any, context: Any) -> Any:
        raise GuestError("invalid_argument", "no open stdin")

    @mapped_errors
    async def SignalProcess(self, request: Any, context: Any) -> Any:
        raise InvalidRequest("signal must be in 1..64")  # the agent's own: no guest kind

    @mapped_errors
    async def ListProcesses(self, request: Any, context: Any) -> Any:
        raise GuestError("made_up\r\nx-evil: 1", "a hostile guest's kind")  # not sent on

    async def PtyStream(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async def events() -> AsyncGenerator[pb.PtyEvent]:
            yield pb.PtyEvent(output=b"$ ")
            raise GuestError(guest_kind.EXITED, GONE)  # midway: through relay

        async for msg in relay(context, events(), "PtyStream"):
            yield msg

    async def AttachProcess(self, request: Any, context: Any) -> AsyncIterator[Any]:
        await abort(context, GuestError("not_found", "no process 7"), "AttachProcess")  # before any
        yield pb.ExecEvent()


@pytest.fixture
async def stub() -> AsyncIterator[Any]:
    async with served_stub(Agent()) as s:
        yield s


def test_the_agents_map() -> None:
    exited = GuestError(guest_kind.EXITED, GONE)
    # Warren's API answer stays what it was: INVALID_ARGUMENT (400) with the guest's words.
    assert status_for(exited) == (grpc.StatusCode.INVALID_ARGUMENT, GONE)
    assert kind_metadata(exited) == ((guest_kind.METADATA_KEY, "exited"),)
    assert kind_metadata(GuestError("not_running", "x")) == ((guest_kind.METADATA_KEY, "not_running"),)
    assert kind_metadata(GuestError("x\n", "unknown kind")) == ()
    assert kind_metadata(InvalidRequest("not the guest's")) == ()
    assert all(k.isascii() and k.isprintable() for k in GUEST_CODES)  # each can be metadata


async def test_unary_calls_carry_the_kind(stub: Any) -> None:
    for call in (
        stub.SendStdin(pb.SendStdinRequest(sandbox_id="sb", data=b"x"), timeout=10),
        stub.PtyControl(pb.PtyControlRequest(sandbox_id="sb", pid=7, input=b"x"), timeout=10),
    ):
        with pytest.raises(AgentError) as e:
            await call
        assert (e.value.rpc_code, e.value.message, e.value.guest_kind) == ("INVALID_ARGUMENT", GONE, "exited")
        assert input_refused_as_exited(e.value)  # by the kind: the words say nothing of it


async def test_other_errors_are_not_taken_for_exited(stub: Any) -> None:
    with pytest.raises(AgentError) as e:
        await stub.CloseStdin(pb.CloseStdinRequest(sandbox_id="sb"), timeout=10)
    assert (e.value.rpc_code, e.value.guest_kind) == ("INVALID_ARGUMENT", "invalid_argument")
    assert not input_refused_as_exited(e.value)
    with pytest.raises(AgentError) as e:
        await stub.SignalProcess(pb.SignalProcessRequest(sandbox_id="sb", signal=99), timeout=10)
    assert (e.value.rpc_code, e.value.guest_kind) == ("INVALID_ARGUMENT", None)
    assert not input_refused_as_exited(e.value)
    with pytest.raises(AgentError) as e:
        await stub.ListProcesses(pb.ListProcessesRequest(sandbox_id="sb"), timeout=10)
    assert (e.value.rpc_code, e.value.guest_kind) == ("INTERNAL", None)


async def test_streaming_calls_carry_the_kind(stub: Any) -> None:
    call = stub.PtyStream(iter([pb.PtyRequest()]), timeout=10)
    assert (await call.read()).output == b"$ "
    with pytest.raises(AgentError) as e:
        await call.read()
    assert (e.value.rpc_code, e.value.guest_kind) == ("INVALID_ARGUMENT", "exited")
    with pytest.raises(AgentError) as e:
        async for _ in stub.AttachProcess(pb.AttachProcessRequest(sandbox_id="sb"), timeout=10):
            pass
    got = (e.value.rpc_code, e.value.message, e.value.guest_kind)
    assert got == ("NOT_FOUND", "no process 7", "not_found")


def test_the_cp_reads_only_a_kinds_form() -> None:
    """A BYOC host's agent is its tenant's: what it sends under the key is taken only as a short
    lower-case word."""
    key = guest_kind.METADATA_KEY
    assert guest_kind.read(grpc.aio.Metadata((key, "exited"))) == "exited"
    assert guest_kind.read(None) is None and guest_kind.read(()) is None
    assert guest_kind.read((("x-request-id", "exited"),)) is None
    for value in ("Exited", "exited now", "x" * 33, "", b"exited"):
        assert guest_kind.read(((key, value),)) is None, value
