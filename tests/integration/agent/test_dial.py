"""DialPort: bytes to and from a port inside a sandbox's netns, through a real agent."""

from __future__ import annotations

import time
from collections.abc import Iterator

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


# Reads until EOF (the client's half-close), then answers with the byte count and the bytes'
# sum, and closes: proves both directions, the half-close and large transfers.
ECHO_SERVER = r"""
import socket, os
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 9001)); s.listen(8)
if os.fork(): raise SystemExit
while True:
    c, _ = s.accept()
    n = total = 0
    try:
        while b := c.recv(1 << 16):
            n += len(b); total = (total + sum(b)) % 1000003
        c.sendall(f"{n} {total}\n".encode() + b"x" * (3 << 20))
    except OSError:
        pass  # a readiness probe that hung up
    c.close()
"""


@pytest.fixture(scope="module")
def sb(agent: AgentProcess) -> Iterator[str]:
    sid = agent.create(memory_mb=256).sandbox_id
    agent.exec(
        sid, "sh", "-c",
        "mkdir -p /srv && echo hello-from-sandbox > /srv/hello.txt && cd /srv && "
        "(setsid python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &)",
    )  # fmt: skip
    agent.exec(sid, "sh", "-c", "cat > /tmp/echo.py", stdin=ECHO_SERVER.encode())
    agent.exec(sid, "sh", "-c", "(setsid python3 /tmp/echo.py >/dev/null 2>&1 &)")
    _wait_listening(agent, sid, 8000)
    _wait_listening(agent, sid, 9001)
    yield sid
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=60)


def _wait_listening(agent: AgentProcess, sid: str, port: int) -> None:
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1).close()"
    deadline = time.monotonic() + 30
    while agent.py(sid, probe).exit_code != 0:
        assert time.monotonic() < deadline, f"nothing listens on {port} in the sandbox"
        time.sleep(0.1)


def _requests(sid: str, port: int, *chunks: bytes) -> Iterator[pb.DialRequest]:
    yield pb.DialRequest(open=pb.DialOpen(sandbox_id=sid, port=port))
    for c in chunks:
        yield pb.DialRequest(data=c)
    yield pb.DialRequest(close_write=True)


def _dial(agent: AgentProcess, sid: str, port: int, *chunks: bytes) -> tuple[list[str], bytes]:
    kinds: list[str] = []
    data = bytearray()
    for ev in agent.stub.DialPort(_requests(sid, port, *chunks), timeout=60):
        kind = ev.WhichOneof("event")
        if kind == "data":
            assert len(ev.data) <= 1 << 20
            data += ev.data
        elif not kinds or kinds[-1] != kind:
            kinds.append(kind or "")
    return kinds, bytes(data)


def test_http_server_on_the_sandbox_loopback_answers(agent: AgentProcess, sb: str) -> None:
    req = b"GET /hello.txt HTTP/1.0\r\nHost: x\r\n\r\n"
    kinds, data = _dial(agent, sb, 8000, req)
    assert kinds == ["connected", "closed"]
    assert data.startswith(b"HTTP/1.0 200")
    assert data.endswith(b"hello-from-sandbox\n")


def test_half_close_and_large_transfers_both_ways(agent: AgentProcess, sb: str) -> None:
    payload = bytes(range(256)) * (5 << 12)  # 5 MiB
    chunks = [payload[i : i + (1 << 20)] for i in range(0, len(payload), 1 << 20)]
    kinds, data = _dial(agent, sb, 9001, *chunks)
    assert kinds == ["connected", "closed"]
    head, _, rest = data.partition(b"\n")
    assert head.decode() == f"{len(payload)} {sum(payload) % 1000003}"
    assert rest == b"x" * (3 << 20)


def test_closed_port_is_unavailable_port_not_open(agent: AgentProcess, sb: str) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        _dial(agent, sb, 8999, b"hi")
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "port_not_open" in (ei.value.details() or "")


def test_bad_requests(agent: AgentProcess, sb: str) -> None:
    for sid, port, code in (
        (sb, 0, grpc.StatusCode.INVALID_ARGUMENT),
        (sb, 70000, grpc.StatusCode.INVALID_ARGUMENT),
        ("sb-00000000000000000000000000", 8000, grpc.StatusCode.NOT_FOUND),
    ):
        with pytest.raises(grpc.RpcError) as ei:
            _dial(agent, sid, port)
        assert ei.value.code() == code
    with pytest.raises(grpc.RpcError) as ei:
        list(agent.stub.DialPort(iter([pb.DialRequest(data=b"x")]), timeout=10))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_paused_sandbox_is_failed_precondition(agent: AgentProcess, sb: str) -> None:
    agent.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=sb), timeout=60)
    try:
        with pytest.raises(grpc.RpcError) as ei:
            _dial(agent, sb, 8000, b"GET / HTTP/1.0\r\n\r\n")
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        agent.stub.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=sb), timeout=60)
    _, data = _dial(agent, sb, 8000, b"GET /hello.txt HTTP/1.0\r\n\r\n")
    assert data.endswith(b"hello-from-sandbox\n")


def test_the_host_itself_is_not_reached(agent: AgentProcess, sb: str) -> None:
    # The agent's own gRPC port listens on the host; dialled through a sandbox it is closed.
    with pytest.raises(grpc.RpcError) as ei:
        _dial(agent, sb, agent.port, b"x")
    assert "port_not_open" in (ei.value.details() or "")
