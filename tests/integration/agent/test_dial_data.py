"""The dial data port (agent/dial_data.py), through a real agent: a ticket from OpenDialTicket
redeemed on the data port relays both ways; and, written as an attacker, everything else the
port is shown (forged, reused, expired or mismatched tickets, garbage, oversized preambles and
frames, silence, floods) is closed without a byte, within bounded time and counts."""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.integration.agent.test_dial import ECHO_SERVER, _wait_listening
from warren.agent import dial_data
from warren.agent.dial import MAX_DIALS_PER_SANDBOX
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

# The production default: every other test here must redeem its ticket within this, and a loaded
# machine can stall the agent for seconds (a 2 s TTL made those fail by chance).
TTL_S = dial_data.TICKET_TTL_S
HTTP_SERVER = "(setsid python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &)"


@pytest.fixture(scope="module")
def agent(agent_root: Path) -> Iterator[AgentProcess]:
    env = {"WARREN_AGENT_DIAL_TICKET_TTL_S": str(TTL_S)}
    a = AgentProcess.standalone(agent_root / "agent", env=env).start()
    try:
        yield a
    finally:
        a.finish()


@pytest.fixture(scope="module")
def sbs(agent: AgentProcess) -> list[str]:
    """Two sandboxes: an http.server on 8000 in both, the half-close echo server on 9001 in the first."""
    out = []
    for i in range(2):
        sid = agent.create(memory_mb=256).sandbox_id
        agent.exec(sid, "sh", "-c", "mkdir -p /srv && echo hi > /srv/hello.txt && cd /srv && " + HTTP_SERVER)
        if i == 0:
            agent.exec(sid, "sh", "-c", "cat > /tmp/echo.py", stdin=ECHO_SERVER.encode())
            agent.exec(sid, "sh", "-c", "(setsid python3 /tmp/echo.py >/dev/null 2>&1 &)")
            _wait_listening(agent, sid, 9001)
        _wait_listening(agent, sid, 8000)
        out.append(sid)
    return out


@pytest.fixture(scope="module", autouse=True)
def early_ticket(agent: AgentProcess, sbs: list[str]) -> tuple[pb.DialTicket, float]:
    """A ticket opened before the module's first test, never redeemed, and the time by which
    the agent had issued it: test_expired_ticket_is_refused (the last) sees it expired."""
    t = _ticket(agent, sbs[0], 8000)
    return t, time.monotonic()


def _ticket(agent: AgentProcess, sid: str, port: int) -> pb.DialTicket:
    return agent.stub.OpenDialTicket(pb.DialOpen(sandbox_id=sid, port=port), timeout=30)


def _connect(t: pb.DialTicket) -> socket.socket:
    assert not t.tls  # a standalone agent: plain TCP on loopback
    s = socket.create_connection(("127.0.0.1", t.data_port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _preamble(ticket: bytes, sid: str, port: int) -> bytes:
    return b"WDIAL1 %s %s %d\n" % (ticket.hex().encode(), sid.encode(), port)


def _frame(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        b = s.recv(n - len(out))
        if not b:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += b
    return bytes(out)


def _frames_until_eof(s: socket.socket) -> bytes:
    """The payload of every frame up to the empty one (the sandbox side's end)."""
    data = bytearray()
    while True:
        (n,) = struct.unpack("!I", _recv_exact(s, 4))
        assert n <= dial_data.MAX_FRAME
        if n == 0:
            return bytes(data)
        data += _recv_exact(s, n)


def _open(agent: AgentProcess, sid: str, port: int, *frames: bytes) -> socket.socket:
    t = _ticket(agent, sid, port)
    s = _connect(t)
    s.sendall(_preamble(t.ticket, sid, port) + b"".join(_frame(f) for f in frames))
    assert _recv_exact(s, 1) == dial_data.ACCEPTED
    return s


def _refused(s: socket.socket) -> bool:
    """The agent closed the connection without a byte (the socket is closed here too)."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    finally:
        s.close()


# -- the data path works ---------------------------------------------------------------------


def test_http_over_the_data_port(agent: AgentProcess, sbs: list[str]) -> None:
    s = _open(agent, sbs[0], 8000, b"GET /hello.txt HTTP/1.0\r\n\r\n")
    with s:
        body = _frames_until_eof(s)
    assert body.startswith(b"HTTP/1.0 200") and body.endswith(b"hi\n")


def test_half_close_and_large_transfers_both_ways(agent: AgentProcess, sbs: list[str]) -> None:
    up = bytes(range(256)) * (5 * 4096)  # 5 MiB, sent as frames of 1 MiB
    chunks = [up[i : i + dial_data.MAX_FRAME] for i in range(0, len(up), dial_data.MAX_FRAME)]
    s = _open(agent, sbs[0], 9001, *chunks, b"")  # the empty frame: close_write
    with s:
        got = _frames_until_eof(s)
        assert s.recv(1) == b""  # both directions done: the agent ends the connection
    head, _, rest = got.partition(b"\n")
    assert head == f"{len(up)} {sum(up) % 1000003}".encode()
    assert rest == b"x" * (3 << 20)


def test_ticket_errors_are_dialport_errors(agent: AgentProcess, sbs: list[str]) -> None:
    with pytest.raises(grpc.RpcError) as e:
        _ticket(agent, sbs[0], 8999)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "port_not_open" in (e.value.details() or "")
    with pytest.raises(grpc.RpcError) as e:
        _ticket(agent, "sb-doesnotexist", 8000)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        _ticket(agent, sbs[0], 0)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- as an attacker ----------------------------------------------------------------------------


def test_forged_ticket_is_refused(agent: AgentProcess, sbs: list[str]) -> None:
    t = _ticket(agent, sbs[0], 8000)  # a real one exists; a guess is still nothing
    s = _connect(t)
    s.sendall(_preamble(secrets.token_bytes(32), sbs[0], 8000) + _frame(b"GET / HTTP/1.0\r\n\r\n"))
    assert _refused(s)


def test_reused_ticket_is_refused(agent: AgentProcess, sbs: list[str]) -> None:
    t = _ticket(agent, sbs[0], 8000)
    first = _connect(t)
    first.sendall(_preamble(t.ticket, sbs[0], 8000))
    assert _recv_exact(first, 1) == dial_data.ACCEPTED
    again = _connect(t)
    again.sendall(_preamble(t.ticket, sbs[0], 8000))
    assert _refused(again)
    first.close()


@pytest.mark.parametrize("other", ["sandbox", "port"])
def test_ticket_for_another_sandbox_or_port_is_refused_and_burnt(
    agent: AgentProcess, sbs: list[str], other: str
) -> None:
    t = _ticket(agent, sbs[0], 8000)
    s = _connect(t)
    s.sendall(_preamble(t.ticket, sbs[1], 8000) if other == "sandbox" else _preamble(t.ticket, sbs[0], 9001))
    assert _refused(s)
    s = _connect(t)  # shown once for the wrong target, it is gone for the right one too
    s.sendall(_preamble(t.ticket, sbs[0], 8000))
    assert _refused(s)


@pytest.mark.parametrize(
    "preamble",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64 + b"\n",  # a TLS hello
        b"WDIAL1 zz sb-x 80\n",
        b"WDIAL1 " + b"0" * 64 + b" sb-x 80 extra\n",
        b"WDIAL1 " + b"a" * 5000,  # no end of line within the bound
        b"\n",
    ],
)
def test_garbage_and_oversized_preambles_are_refused(
    agent: AgentProcess, sbs: list[str], preamble: bytes
) -> None:
    t = _ticket(agent, sbs[0], 8000)
    s = _connect(t)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        s.sendall(preamble)  # may be closed while we are still sending: refused all the same
    assert _refused(s)


def test_oversized_frame_ends_the_connection(agent: AgentProcess, sbs: list[str]) -> None:
    s = _open(agent, sbs[0], 8000)
    s.sendall(struct.pack("!I", dial_data.MAX_FRAME + 1) + b"x" * 1024)
    with s, pytest.raises((ConnectionError, struct.error, AssertionError)):
        _frames_until_eof(s)  # closed with no end frame: cut, not a clean end


def test_silent_client_is_closed_in_bounded_time(agent: AgentProcess, sbs: list[str]) -> None:
    t = _ticket(agent, sbs[0], 8000)
    s = _connect(t)
    s.settimeout(dial_data.PREAMBLE_TIMEOUT_S + 10)
    assert _refused(s)  # recv returns at the agent's preamble deadline, not at ours


def test_connections_without_a_ticket_are_bounded(agent: AgentProcess, sbs: list[str]) -> None:
    t = _ticket(agent, sbs[0], 8000)
    idle = [_connect(t) for _ in range(dial_data.MAX_PENDING_CONNS)]
    try:
        # Once the agent has counted them all, one more closes the oldest (session 12: it
        # was the newest, so silent connections held every place and shut the proxy out).
        deadline = time.monotonic() + 30
        while True:
            idle.append(_connect(t))
            oldest = idle.pop(0)
            oldest.settimeout(1.0)
            try:
                if _refused(oldest):
                    break
            except TimeoutError:
                pass
            assert time.monotonic() < deadline
    finally:
        for s in idle:
            s.close()
    # The idle ones closed, a real ticket is served again (once the agent saw them go).
    deadline = time.monotonic() + 30
    while True:
        s = _connect(t)
        s.sendall(_preamble(t.ticket, sbs[0], 8000))
        ok = s.recv(1) == dial_data.ACCEPTED
        s.close()
        if ok:
            break
        assert time.monotonic() < deadline
        t = _ticket(agent, sbs[0], 8000)


def test_dials_per_sandbox_are_bounded_across_tickets_and_dialport(
    agent: AgentProcess, sbs: list[str]
) -> None:
    # Redeemed connections (they count until closed, whatever the tickets' life), then a
    # held ticket: the limit is reached.
    conns = [_open(agent, sbs[1], 8000) for _ in range(MAX_DIALS_PER_SANDBOX - 1)]
    try:
        _ticket(agent, sbs[1], 8000)
        with pytest.raises(grpc.RpcError) as e:
            _ticket(agent, sbs[1], 8000)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        req = pb.DialRequest(open=pb.DialOpen(sandbox_id=sbs[1], port=8000))
        with pytest.raises(grpc.RpcError) as e:
            list(agent.stub.DialPort(iter([req]), timeout=30))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _ticket(agent, sbs[0], 8000).ticket  # another sandbox's count is its own
    finally:
        for c in conns:
            c.close()
    # Closed connections and the expired ticket give their counts back.
    deadline = time.monotonic() + TTL_S + 30
    while True:
        try:
            _ticket(agent, sbs[1], 8000)
            break
        except grpc.RpcError as e2:
            assert e2.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
            time.sleep(0.2)


def test_expired_ticket_is_refused(
    agent: AgentProcess, sbs: list[str], early_ticket: tuple[pb.DialTicket, float]
) -> None:
    """Last in the module: its ticket was opened as the module began (``early_ticket``), so its
    TTL has run, or most of it, while the other tests ran."""
    t, issued_by = early_ticket
    assert t.expires_in_ms == int(TTL_S * 1000)
    # The expiry itself is what is tested: nothing to poll for.
    time.sleep(max(0.0, issued_by + TTL_S + 0.5 - time.monotonic()))
    s = _connect(t)
    s.sendall(_preamble(t.ticket, sbs[0], 8000))
    assert _refused(s)
