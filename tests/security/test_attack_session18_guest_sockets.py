"""Session 18: what the guest's client sockets hold for terminal clients that read nothing.

What the guest sends a client and the client has not read sits in the connection's socket
buffers, charged to the sender's memory cgroup: the guest's own. With the kernel's default send
buffer (``wmem_default``, 208 KiB, ~240 KiB charged a connection), the 32 terminal clients a
sandbox may have (the cap for all of its terminals), none reading, held ~7.5 MiB of the guest in
socket buffers alone; with what lag.py lets their output buffers hold (8 MiB together) and the
heap that leaves, the guest's peak was 22-28 MiB against a 24 MiB reserve (session 17: 26-30).
As the attacker runs it: two terminals printing ``yes``, 16 ``pty_connect`` streams to each,
none read. What the guest's sockets hold is read on the host (each of the guest's sockets, taken
with pidfd_getfd: its queued bytes, SIOCOUTQ).

Measured before the fix (runc, 256 MiB): the guest's sockets held up to 6.8 MiB together. Fixed
(guest_agent/server.py ``SNDBUF``): each accepted connection's send buffer is 32 KiB (64 KiB as
the kernel doubles it): 2.1 MiB; the guest's peak 18-22 MiB (what is left is what lag.py lets
lagging clients queue together, and the heap that leaves).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import queue
import stat
import sys
import termios
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from tests.security.test_attack_session17_guest_pty import YES_ON_GO, guest_charge
from warren.agent.runtime import cmds_cgroup
from warren.guest.guest_agent.pty import MAX_CLIENTS, MAX_CLIENTS_ALL
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

SYS_PIDFD_GETFD = 438  # x86_64 and aarch64 alike
HELD = MAX_CLIENTS_ALL * (128 << 10)  # what the guest's sockets may hold together (see above)
_libc = ctypes.CDLL(None, use_errno=True)


def guest_pid(sb: str) -> int:
    """The guest's host pid: the one process of the sandbox's memory cgroup itself (its commands
    and its own children are in ``cmds``)."""
    pids = (cmds_cgroup.sandbox_dir("memory", sb) / "cgroup.procs").read_text().split()
    assert len(pids) == 1, pids
    return int(pids[0])


def sockets_hold(pid: int) -> int:
    """What the guest's sockets have queued and their peers not read (SIOCOUTQ), together."""
    total = 0
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not stat.S_ISSOCK(os.stat(f"/proc/{pid}/fd/{name}").st_mode):
                    continue
            except OSError:
                continue
            fd = _libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                continue
            try:
                total += int.from_bytes(fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4), sys.byteorder)
            except OSError:
                pass  # the listening socket
            finally:
                os.close(fd)
    finally:
        os.close(pidfd)
    return total


# One runtime: what is bounded is the guest's own code (the same under runc and crun).
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, "runc") as a:
        yield a


def test_32_unread_terminal_clients_hold_little_of_the_guest(agent: AgentProcess) -> None:
    sb = agent.create(memory_mb=256).sandbox_id
    queues: list[queue.Queue[pb.PtyRequest | None]] = []
    calls = []  # held: a call let go is cancelled, and its connection closed

    def stream(first: pb.PtyRequest) -> int:
        q: queue.Queue[pb.PtyRequest | None] = queue.Queue()
        q.put(first)
        queues.append(q)
        call = agent.stub.PtyStream(iter(q.get, None))
        calls.append(call)
        return int(next(iter(call)).started)  # then never read

    try:
        size = pb.PtySize(cols=80, rows=24)
        start = pb.PtyStart(sandbox_id=sb, size=size, cmd="/bin/sh", args=["-c", YES_ON_GO])
        pids = [stream(pb.PtyRequest(start=start)) for _ in range(2)]
        for pid in pids:
            for _ in range(MAX_CLIENTS - 1):
                assert stream(pb.PtyRequest(connect=pb.PtyConnect(sandbox_id=sb, pid=pid))) == pid
        assert len(calls) == MAX_CLIENTS_ALL
        pid = guest_pid(sb)
        agent.exec(sb, "touch", "/tmp/go", timeout_sec=60)
        held = peak = 0
        for _ in range(40):  # within the stall limit (10 s), before the clients are cut
            time.sleep(0.2)
            held = max(held, sockets_hold(pid))
            peak = max(peak, guest_charge(sb))
        print(f"the guest's sockets held {held >> 10} KiB, its peak {peak >> 20} MiB")
        assert agent.exec(sb, "sh", "-c", "echo ok", timeout_sec=60).stdout == b"ok\n"
        assert held < HELD, held >> 10
    finally:
        for q in queues:
            q.put(None)
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)
