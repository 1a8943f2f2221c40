"""Session 17 (W2-D): terminal clients that read nothing, held in the guest's own memory.

A terminal paused for a congested client and, past its stall limit, detached it with an error
frame queued after what it had not read (pty.py ``_on_stall``): that buffer stayed while the
agent did not read the connection. The number of ``pty_connect`` clients of one terminal was not
bounded. Measured before the fix (256 MiB sandbox, runc): 100 ``PtyStream`` connects to a
terminal running ``yes``, none read: the guest's charge 52-58 MiB (reserve 24, ~0.5 MiB a client).

Fixed (guest_agent/pty.py, lag.py): at most 16 connections to a terminal and 32 to all of a
sandbox's terminals at a time (the rest refused, RESOURCE_EXHAUSTED; with the first bound alone,
32 terminals of 16 unread clients held 64 MiB, half of it socket buffers), and a lagging client
is cut off with its unread output dropped by the rule attach subscribers follow. Left: 32 unread
clients (one per terminal, or 2 x 16) still hold 26-30 MiB of the guest (second test).
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.agent.runtime import cmds_cgroup
from warren.guest.guest_agent.pty import MAX_CLIENTS, MAX_CLIENTS_ALL, STALL_LIMIT
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

# Prints nothing until /tmp/go exists, so every connect below is answered before any output (no
# client is congested, cut off or detached meanwhile, which would free its place).
YES_ON_GO = "while [ ! -e /tmp/go ]; do sleep 0.1; done; exec yes"
# Past the stall limit, when the clients still there are cut (its timer starts with the first
# output that congests, just after /tmp/go); longer proves no more: the guest's peak comes well
# before it (before the fix 47-53 MiB from the first second on, after it 9-11 MiB throughout).
PAST_STALL_S = int(STALL_LIMIT) + 2


# One runtime: what is bounded here is the guest's own (the same code under runc and crun); how
# commands reach cmds under each runtime is test_attack_session17_guest_cgroup's and _cmds_escape's.
@pytest.fixture(scope="module", params=["runc"])
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, request.param) as a:
        yield a


def guest_charge(sb: str) -> int:
    mem = cmds_cgroup.sandbox_dir("memory", sb)
    total = int((mem / "memory.usage_in_bytes").read_text())
    return total - int((mem / "cmds/memory.usage_in_bytes").read_text())


def test_terminal_clients_that_read_nothing_stay_within_the_guests_reserve(agent: AgentProcess) -> None:
    sb = agent.create(memory_mb=256).sandbox_id
    queues: list[queue.Queue[pb.PtyRequest | None]] = []
    calls = []  # held: a call let go is cancelled, and its connection closed
    try:
        q: queue.Queue[pb.PtyRequest | None] = queue.Queue()
        size = pb.PtySize(cols=80, rows=24)
        q.put(
            pb.PtyRequest(start=pb.PtyStart(sandbox_id=sb, size=size, cmd="/bin/sh", args=["-c", YES_ON_GO]))
        )
        queues.append(q)
        calls.append(agent.stub.PtyStream(iter(q.get, None)))
        pid = next(iter(calls[0])).started
        refused = 0
        for _ in range(100):
            cq: queue.Queue[pb.PtyRequest | None] = queue.Queue()
            cq.put(pb.PtyRequest(connect=pb.PtyConnect(sandbox_id=sb, pid=pid)))
            queues.append(cq)
            call = agent.stub.PtyStream(iter(cq.get, None))
            calls.append(call)
            try:
                assert next(iter(call)).started == pid  # then never read
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
                refused += 1
        assert refused == 100 - (MAX_CLIENTS - 1)
        agent.exec(sb, "touch", "/tmp/go", timeout_sec=60)
        peak = 0
        for _ in range(PAST_STALL_S):
            time.sleep(1)
            peak = max(peak, guest_charge(sb))
        assert agent.exec(sb, "sh", "-c", "echo ok", timeout_sec=60).stdout == b"ok\n"
        assert peak < cmds_cgroup.MEMORY_RESERVE, peak >> 20
    finally:
        for q in queues:
            q.put(None)
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)


def test_a_sandboxs_terminals_take_at_most_32_clients_together(agent: AgentProcess) -> None:
    sb = agent.create(memory_mb=256).sandbox_id
    queues: list[queue.Queue[pb.PtyRequest | None]] = []
    calls = []

    def stream(first: pb.PtyRequest) -> int:
        """The terminal's pid, or 0 when refused (RESOURCE_EXHAUSTED); the call held, not read."""
        q: queue.Queue[pb.PtyRequest | None] = queue.Queue()
        q.put(first)
        queues.append(q)
        call = agent.stub.PtyStream(iter(q.get, None))
        calls.append(call)
        try:
            return int(next(iter(call)).started)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
            return 0

    try:
        size = pb.PtySize(cols=80, rows=24)
        start = pb.PtyStart(sandbox_id=sb, size=size, cmd="/bin/sh", args=["-c", YES_ON_GO])
        # 32 terminals of 16 clients held 64 MiB with the per-terminal bound alone: now the first
        # two terminals' 32 clients are all a sandbox's terminals take.
        pids = [stream(pb.PtyRequest(start=start)) for _ in range(2)]
        assert all(pids)
        accepted = 2
        for pid in pids:
            for _ in range(MAX_CLIENTS * 2):
                accepted += stream(pb.PtyRequest(connect=pb.PtyConnect(sandbox_id=sb, pid=pid))) > 0
        assert accepted == MAX_CLIENTS_ALL == 2 * MAX_CLIENTS
        assert stream(pb.PtyRequest(start=start)) == 0  # nor a new terminal, until one goes
        agent.exec(sb, "touch", "/tmp/go", timeout_sec=60)
        time.sleep(PAST_STALL_S)
        # Not yet within the reserve: 32 unread clients still held 26-30 MiB (socket buffers
        # ~120-210 KiB each and what lag.py lets each keep below 64 KiB), against 64 MiB before.
        assert agent.exec(sb, "sh", "-c", "echo ok", timeout_sec=60).stdout == b"ok\n"
    finally:
        for q in queues:
            q.put(None)
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)
