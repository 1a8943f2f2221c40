"""Session 18: ``attach`` subscribers of a process, bounded like a terminal's clients.

Each ``attach`` stream to a background process held a connection of the guest's (its socket
buffers and up to what lag.py lets it queue: cut at 8 MiB behind, all such clients together at 8
MiB), and nothing bounded how many a tenant opened: before the fix, 40 attach streams to one
process were all accepted. As the attacker runs it: a background command through the API, then
attach streams that read nothing.

Fixed (guest_agent/process.py): at most 16 attach streams to a process and 32 to all of a
sandbox's processes at a time, as for terminals (pty.MAX_CLIENTS, MAX_CLIENTS_ALL); the rest are
refused with the terminals' error (``too_large``: RESOURCE_EXHAUSTED from the agent, 413
``too_large`` in the CP's error frame). A stream that ends frees its place.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.guest.guest_agent.process import MAX_ATTACH, MAX_ATTACH_ALL
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root


# One runtime: what is bounded is the guest's own code (the same under runc and crun).
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, "runc") as a:
        yield a


def background(agent: AgentProcess, sb: str, tag: str) -> None:
    start = pb.ExecStart(sandbox_id=sb, cmd="sleep", args=["600"], background=True, tag=tag)
    events = agent.stub.ExecStream(iter([pb.ExecStreamRequest(start=start)]))
    try:
        assert next(events).WhichOneof("event") == "start"
    finally:
        events.cancel()


def attach(agent: AgentProcess, sb: str, tag: str, held: list[Any]) -> bool:
    """An attach stream to ``tag``, held and never read past its start; False when refused
    (RESOURCE_EXHAUSTED, the terminals' refusal)."""
    sel = pb.ProcessSelector(tag=tag)
    call = agent.stub.AttachProcess(pb.AttachProcessRequest(sandbox_id=sb, process=sel))
    try:
        first = next(call)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e  # type: ignore[attr-defined]
        return False
    assert first.WhichOneof("event") == "start", first
    held.append(call)
    return True


def test_attach_streams_are_bounded_per_process_and_per_sandbox(agent: AgentProcess) -> None:
    sb = agent.create(memory_mb=256).sandbox_id
    held: list[Any] = []
    try:
        for tag in ("a", "b", "c"):
            background(agent, sb, tag)
        assert sum(attach(agent, sb, "a", held) for _ in range(MAX_ATTACH + 4)) == MAX_ATTACH == 16
        assert sum(attach(agent, sb, "b", held) for _ in range(MAX_ATTACH + 4)) == MAX_ATTACH
        assert len(held) == MAX_ATTACH_ALL == 32
        assert not attach(agent, sb, "c", held)  # the 33rd in the sandbox
        held.pop().cancel()  # one of b's ends: its place is c's (once the guest saw it go)
        deadline = time.monotonic() + 60
        while not attach(agent, sb, "c", held):
            assert time.monotonic() < deadline, "a freed place was never given again"
            time.sleep(0.2)
        assert agent.exec(sb, "sh", "-c", "echo ok", timeout_sec=60).stdout == b"ok\n"
    finally:
        for call in held:
            call.cancel()
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)
