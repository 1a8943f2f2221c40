"""Terminals through the agent's ``PtyStream`` RPC, in a real sandbox: a login shell on
``/dev/pts/N`` as a named user, resizes, Ctrl-C, a reconnect by pid, exit codes and the errors
of bad requests."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import cast

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root


# The worker's shared agent (tests/harness/shared_agent.py): these tests only create and destroy
# sandboxes of their own.
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


ADD_USER = """
set -e
echo 'user:x:1000:1000::/home/user:/bin/sh' >> /etc/passwd
echo 'user:x:1000:' >> /etc/group
mkdir -p /home/user && chown 1000:1000 /home/user
"""


@pytest.fixture(scope="module")
def sb(agent: AgentProcess) -> Iterator[str]:
    sid = agent.create(memory_mb=128).sandbox_id
    res = agent.exec(sid, "sh", "-c", ADD_USER)
    assert res.exit_code == 0, res.stderr
    yield sid
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=60)


class Term:
    """One PtyStream call: a queue feeds its requests, the events are read as needed."""

    def __init__(self, agent: AgentProcess, first: pb.PtyRequest) -> None:
        self.q: queue.Queue[pb.PtyRequest | None] = queue.Queue()
        self.q.put(first)
        self.call = agent.stub.PtyStream(iter(self.q.get, None), timeout=60)
        self.out = bytearray()

    def next(self) -> pb.PtyEvent:
        return next(cast(Iterator[pb.PtyEvent], self.call))

    def started(self) -> int:
        ev = self.next()
        assert ev.WhichOneof("event") == "started", ev
        return ev.started

    def send(self, data: bytes) -> None:
        self.q.put(pb.PtyRequest(input=data))

    def until(self, needle: bytes) -> None:
        while needle not in self.out:
            ev = self.next()
            assert ev.WhichOneof("event") == "output", ev
            self.out += ev.output

    def exit_code(self) -> int:
        for ev in self.call:
            if ev.WhichOneof("event") == "exit":
                return ev.exit.exit_code
            self.out += ev.output
        raise AssertionError("no exit event")

    def close(self) -> None:
        self.q.put(None)
        self.call.cancel()


def _until_sleeping(agent: AgentProcess, sid: str) -> None:
    """Until the shell's `sleep` runs (so the SIGINT reaches it, not the prompt)."""
    deadline = time.monotonic() + 60
    while agent.exec(sid, "sh", "-c", "grep -qx sleep /proc/[0-9]*/comm").exit_code != 0:
        assert time.monotonic() < deadline, "sleep never started"


def _start(sid: str, **kw: object) -> pb.PtyRequest:
    size = pb.PtySize(cols=int(kw.pop("cols", 80)), rows=int(kw.pop("rows", 24)))  # type: ignore[call-overload]
    return pb.PtyRequest(start=pb.PtyStart(sandbox_id=sid, size=size, **kw))  # type: ignore[arg-type]


def test_login_shell_as_user_resize_ctrl_c_reconnect_exit(agent: AgentProcess, sb: str) -> None:
    t = Term(agent, _start(sb, user="user", cols=90, rows=20))
    pid = t.started()
    t.send(b"tty; id -u; pwd; echo TERM=$TERM; echo owner=$(stat -c %U $(tty)); stty size\n")
    t.until(b"20 90")
    assert b"/dev/pts/" in t.out and b"1000" in t.out and b"/home/user" in t.out
    assert b"owner=user" in t.out  # the user's own terminal, as login makes it
    assert b"TERM=xterm-256color" in t.out
    t.q.put(pb.PtyRequest(resize=pb.PtySize(cols=132, rows=43)))
    t.send(b"stty size\n")
    t.until(b"43 132")
    t.send(b"sleep 100\n")
    _until_sleeping(agent, sb)
    t.q.put(pb.PtyRequest(signal=2))
    t.send(b"echo alive-$((40+2))\n")
    t.until(b"alive-42")
    t.close()
    # The terminal outlived the call; a reconnect sees what it prints from now on.
    r = Term(agent, pb.PtyRequest(connect=pb.PtyConnect(sandbox_id=sb, pid=pid)))
    assert r.started() == pid
    r.send(b"echo later-$((6*7)); exit 5\n")
    assert r.exit_code() == 5
    assert b"later-42" in r.out


def test_errors(agent: AgentProcess, sb: str) -> None:
    def code_of(first: pb.PtyRequest) -> tuple[grpc.StatusCode, str]:
        t = Term(agent, first)
        with pytest.raises(grpc.RpcError) as e:
            t.next()
        t.close()
        call = e.value
        assert isinstance(call, grpc.Call)
        return call.code(), call.details() or ""

    code, msg = code_of(pb.PtyRequest(connect=pb.PtyConnect(sandbox_id=sb, pid=999999)))
    assert code == grpc.StatusCode.NOT_FOUND and "no terminal with pid 999999" in msg
    assert code_of(pb.PtyRequest(input=b"x"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(_start(sb, cols=0))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(_start(sb, rows=100000))[0] == grpc.StatusCode.INVALID_ARGUMENT
    code, msg = code_of(_start(sb, user="mallory"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no such user: mallory" in msg
    assert code_of(_start(sb, cmd="no-such-command"))[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(_start("sb-nonexistent0000"))[0] == grpc.StatusCode.NOT_FOUND
    # A bad resize mid-stream ends the call with a clear error; the sandbox serves on.
    t = Term(agent, _start(sb, cmd="/bin/cat"))
    t.started()
    t.q.put(pb.PtyRequest(resize=pb.PtySize(cols=0, rows=5)))
    with pytest.raises(grpc.RpcError) as e:
        t.exit_code()
    assert isinstance(e.value, grpc.Call) and e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    t.close()
    assert agent.exec(sb, "true").exit_code == 0
