"""A sandbox whose container the host ended (its init or gVisor's sandbox process killed from
outside, as the host's OOM killer does): every guest call in flight on it ends at once with the
agent's error for a sandbox that is not running (FAILED_PRECONDITION, the CP's 409), not at its
timeout; a new call fails the same way; a neighbour goes on; nothing is left behind.

The bounds below are functional (an exec of timeout 600 s that ends within 60 s did not wait
for its timeout), not figures: those are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.leaks import wait_no_leaks
from tests.harness.shared_agent import shared_agent
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root


# The worker's shared agent (tests/harness/shared_agent.py): the module only creates and
# destroys sandboxes of its own, and kills their containers, not the agent.
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


# The runtime's own binary and state directory under the agent's data dir (agent/main.py).
RUNTIMES = {"runc": ("runc", "runc"), "gvisor": ("runsc", "runsc")}
# Far below the calls' own timeouts (600 s), far above the ~1 s they take on a loaded machine.
ENDED_WITHIN_S = 60.0


def code_of(e: grpc.RpcError) -> grpc.StatusCode:
    return e.code()  # type: ignore[attr-defined, no-any-return]


def init_pid(agent: AgentProcess, runtime: str, sb_id: str) -> int:
    """The container's init (runc) or the gVisor sandbox's process, from the runtime's state."""
    binary, root = RUNTIMES[runtime]
    out = subprocess.run(
        [binary, "--root", str(agent.data_dir / root), "state", sb_id], capture_output=True, check=True
    ).stdout
    pid = int(json.loads(out)["pid"])
    assert pid > 0
    return pid


class Ended:
    """A streaming call read in a thread until it ends: its error (or None) and when."""

    def __init__(self, events: Iterator[Any], started: Callable[[Any], bool]) -> None:
        self.events = events
        self.started = threading.Event()
        self.error: grpc.RpcError | None = None
        self.ended_at = 0.0
        self._started = started
        self._done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for ev in self.events:
                if self._started(ev):
                    self.started.set()
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.ended_at = time.monotonic()
            self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)


def _exec_stream(agent: AgentProcess, sb_id: str) -> Ended:
    start = pb.ExecStreamRequest(
        start=pb.ExecStart(sandbox_id=sb_id, cmd="sleep", args=["1000"], timeout_sec=600, credit=True)
    )
    q: queue.Queue[pb.ExecStreamRequest | None] = queue.Queue()
    q.put(start)
    call = agent.stub.ExecStream(iter(q.get, None), timeout=700)
    return Ended(call, lambda ev: ev.WhichOneof("event") == "start")


def _pty(agent: AgentProcess, sb_id: str) -> Ended:
    q: queue.Queue[pb.PtyRequest | None] = queue.Queue()
    q.put(pb.PtyRequest(start=pb.PtyStart(sandbox_id=sb_id, size=pb.PtySize(cols=80, rows=24))))
    call = agent.stub.PtyStream(iter(q.get, None), timeout=700)
    return Ended(call, lambda ev: ev.WhichOneof("event") == "started")


def _watch(agent: AgentProcess, sb_id: str) -> Ended:
    call = agent.stub.WatchDir(pb.WatchDirRequest(sandbox_id=sb_id, path="/tmp", recursive=True), timeout=700)
    return Ended(call, lambda _ev: True)  # its first message: every watch is in place


def _sleeping(agent: AgentProcess, sb_id: str) -> bool:
    """Whether the unary exec's `sleep` runs (its process listed by the guest)."""
    procs = agent.stub.ListProcesses(pb.ListProcessesRequest(sandbox_id=sb_id), timeout=30).processes
    return any(p.cmd == "sleep" for p in procs)


def _wait(what: str, fn: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _not_running(e: grpc.RpcError | None, sb_id: str) -> None:
    assert e is not None, "the call ended without an error"
    assert code_of(e) == grpc.StatusCode.FAILED_PRECONDITION, (code_of(e), e.details())  # type: ignore[attr-defined]
    assert f"sandbox {sb_id} is not running" in e.details(), e.details()  # type: ignore[attr-defined]


@pytest.mark.parametrize("runtime", ["runc", "gvisor"])
def test_calls_in_flight_end_when_the_container_dies(agent: AgentProcess, runtime: str) -> None:
    victim = agent.create(memory_mb=128, runtime=runtime)
    neighbour = agent.create(memory_mb=128, runtime=runtime)
    sb = victim.sandbox_id
    try:
        unary = agent.stub.Exec.future(
            pb.ExecRequest(sandbox_id=sb, cmd="sleep", args=["1000"], timeout_sec=600), timeout=700
        )
        streams = {"exec_stream": _exec_stream(agent, sb), "pty": _pty(agent, sb), "watch": _watch(agent, sb)}
        for name, s in streams.items():
            assert s.started.wait(60), f"{name} never started"
        _wait("the unary exec's sleep", lambda: _sleeping(agent, sb))

        os.kill(init_pid(agent, runtime, sb), signal.SIGKILL)  # from the host, as its OOM killer
        killed = time.monotonic()

        with pytest.raises(grpc.RpcError) as ei:
            unary.result(timeout=ENDED_WITHIN_S)
        _not_running(ei.value, sb)
        for name, s in streams.items():
            assert s.wait(ENDED_WITHIN_S), f"{name} still open {ENDED_WITHIN_S} s after the death"
            _not_running(s.error, sb)
        took = max(time.monotonic(), *(s.ended_at for s in streams.values())) - killed
        assert took < ENDED_WITHIN_S
        print(f"{runtime}: every call ended {took:.2f} s after the kill")  # seen with -s

        # A new call fails at once the same way, however far the agent's clean-up has come.
        with pytest.raises(grpc.RpcError) as ei:
            agent.stub.Exec(pb.ExecRequest(sandbox_id=sb, cmd="true"), timeout=30)
        _not_running(ei.value, sb)

        # The neighbour goes on; the dead one leaves the agent's list and nothing behind.
        assert agent.exec(neighbour.sandbox_id, "echo", "alive").stdout == b"alive\n"
        listed = lambda: {s.sandbox_id for s in agent.stub.ListSandboxes(pb.ListSandboxesRequest()).sandboxes}  # noqa: E731
        _wait("the dead sandbox to leave the list", lambda: sb not in listed())
        assert neighbour.sandbox_id in listed()
        assert wait_no_leaks(agent, sb, victim.host_ip) == []
    finally:
        for r in (victim, neighbour):
            try:
                agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id), timeout=60)
            except grpc.RpcError as e:
                assert code_of(e) == grpc.StatusCode.NOT_FOUND
