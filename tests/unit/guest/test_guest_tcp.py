"""The guest's TCP listener (gVisor, guest_agent/tcp.py): the secret first, then the protocol."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.machine import free_port
from tests.unit.guest.guest_helpers import RunningGuest
from warren.agent import gvisor_ops
from warren.agent.guest_client import GuestClient
from warren.agent.guest_wire import GuestError, TcpGuest

SECRET = "ab" * 32


def _listen_port() -> int:
    """A free port below the kernel's ephemeral range: ``free_port`` hands out an ephemeral one,
    which another process's outgoing connection may take before the guest binds it (CI saw the
    guest exit with EADDRINUSE)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(20000, min(low, 32768)), 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port("127.0.0.1")


@pytest.fixture
def tcp_guest(start_guest: Callable[..., RunningGuest], tmp_path: Path) -> TcpGuest:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    port = _listen_port()
    start_guest(extra=("--tcp", str(port), "--secret-file", str(secret_file)))
    addr = TcpGuest("127.0.0.1", port, SECRET.encode())
    asyncio.run(GuestClient(addr).wait_ready(30))
    return addr


def test_a_connection_with_the_secret_is_served(tcp_guest: TcpGuest) -> None:
    res = asyncio.run(GuestClient(tcp_guest).exec("/bin/echo", ["hi"]))
    assert (res.stdout, res.exit_code) == (b"hi\n", 0)


def test_a_connection_without_it_is_closed_unanswered(tcp_guest: TcpGuest) -> None:
    with socket.create_connection((tcp_guest.host, tcp_guest.port), timeout=10) as c:
        c.sendall(b"0" * 64 + b"\x00\x00\x00\x10\x01" + b'{"op":"health"}')
        assert c.recv(100) == b""
    with socket.create_connection((tcp_guest.host, tcp_guest.port), timeout=10) as c:
        c.sendall(SECRET[:10].encode())  # too short: nothing happens until it is whole
        c.settimeout(0.5)
        with pytest.raises(TimeoutError):
            c.recv(100)


def test_rekey_replaces_the_secret_and_sets_hostname(tcp_guest: TcpGuest) -> None:
    new = "cd" * 32
    asyncio.run(gvisor_ops.rekey(GuestClient(tcp_guest), new, "sb-fork"))
    with pytest.raises(GuestError):
        asyncio.run(GuestClient(tcp_guest, op_timeout=5).health())
    fresh = GuestClient(TcpGuest(tcp_guest.host, tcp_guest.port, new.encode()))
    res = asyncio.run(fresh.exec("/bin/sh", ["-c", "echo $HOSTNAME"]))
    assert res.stdout == b"sb-fork\n"
    with pytest.raises(GuestError, match="rekey"):
        asyncio.run(fresh._call({"op": "rekey", "secret": "short"}))
    asyncio.run(fresh.health())  # the refused rekey changed nothing
