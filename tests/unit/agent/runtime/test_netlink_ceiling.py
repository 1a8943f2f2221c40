"""The netlink socket ceiling's rules (runtime/netlink_ceiling.py, enforced by socket_ceiling.py);
the attack is in tests/security/test_attack_session21_netlink.py."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unit.agent.runtime.test_socket_ceiling import AS_INIT, Watch
from warren.agent.runtime import netlink_ceiling, socket_ceiling
from warren.agent.runtime.netlink_ceiling import parse, queue_ceiling, queues, uncharged_ceiling, weigh

MiB = 1 << 20

# /proc/net/protocols of Linux 6.18 (a namespace holding 7 netlink sockets), columns cut short.
PROTOCOLS = b"""\
protocol  size sockets  memory press maxhdr  slab module     cl co di
AF_VSOCK  1240      0      -1   NI       0   yes  kernel      y  n  n
PACKET    1600      2      -1   NI       0   no   kernel      n  n  n
PACKET    1600      1      -1   NI       0   no   kernel      n  n  n
UNIX-STREAM 1152     59      -1   NI       0   yes  kernel      y  n  n
UNIX      1152      6      -1   NI       0   yes  kernel      y  n  n
NETLINK   1096      7      -1   NI       0   no   kernel      n  n  n
TCP       2496   4000    1234   no     320   yes  kernel      y  y  y
"""


def test_the_slab_less_protocols_are_counted() -> None:
    assert parse(PROTOCOLS) == (10, frozenset({"PACKET", "NETLINK"}))


def test_a_table_without_its_columns_counts_nothing() -> None:
    assert parse(b"") == (0, frozenset())
    assert parse(b"protocol size\nNETLINK 1096\n") == (0, frozenset())


def test_the_ceiling_is_one_socket_per_64_kib_at_least_1024() -> None:
    assert uncharged_ceiling(64 * MiB) == 1024
    assert uncharged_ceiling(256 * MiB) == 4096
    assert uncharged_ceiling(1 << 30) == 16384


# /proc/net/netlink of Linux 6.18: a socket with 8 MiB of unread replies, two with none.
NETLINK = b"""\
sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode
00000000d4b1a7f2 0   0          00000000 0        0        0     2        0        11
000000006f3c1e4a 0   -4185      00000001 8388608  0        0     2        17       1203344
00000000b2e0c9d1 0   -4186      00000000 0        0        0     2        0        1203345
"""


def test_the_queued_bytes_are_read_by_inode() -> None:
    assert queues(NETLINK) == {1203344: 8388608}
    assert queues(NETLINK.splitlines()[0]) == {}


def test_the_queue_ceiling_is_a_32nd_of_the_memory_at_least_4_mib() -> None:
    assert queue_ceiling(64 * MiB) == 4 * MiB
    assert queue_ceiling(256 * MiB) == 8 * MiB


def test_this_kernel_counts_unbound_netlink_sockets() -> None:
    """The namespace's count sees every netlink socket, unbound ones too (which
    /proc/net/netlink does not list); the descriptors' weight sees this process's."""
    before, names = netlink_ceiling.count(os.getpid())
    assert "NETLINK" in names and "TCP" not in names and "UNIX" not in names
    base = weigh(os.getpid(), names)
    held = [socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) for _ in range(5)]
    held += [socket.socket(), socket.socket(socket.AF_UNIX)]
    try:
        assert weigh(os.getpid(), names) == base + 5
        assert netlink_ceiling.count(os.getpid())[0] >= 5  # the host's namespace: others' too
    finally:
        for s in held:
            s.close()
    assert before >= 0


# argv[1]: "guest" (run as a pid namespace's init) unshares a network namespace of its own and
# joins cgroup argv[2]; others join the guest's (pid argv[3]) namespace, then cgroup argv[2].
# Holds argv[4] netlink and argv[5] TCP sockets (argv[6] "fill": its netlink ones' queues
# filled); says its host pid on stdout.
HOLDER = r"""
import ctypes, os, socket, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if sys.argv[1] == "guest":
    assert libc.unshare(0x40000000) == 0  # CLONE_NEWNET
else:
    fd = os.open(f"/proc/{sys.argv[3]}/ns/net", os.O_RDONLY)
    assert libc.setns(fd, 0x40000000) == 0
with open(sys.argv[2], "w") as f:
    f.write("0")
n = int(sys.argv[4])
held = [socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) for _ in range(n)]
held += [socket.socket() for _ in range(int(sys.argv[5]))]
if sys.argv[6:] == ["fill"]:  # unread RTM_GETLINK replies of lo, as many as each queue takes
    req = struct.pack("=IHHII", 32, 18, 5, 0, 0) + struct.pack("=BxHiII", 0, 0, 1, 0, 0)
    for s in held:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        for _ in range(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 1024 + 64):
            s.send(req)
print(os.readlink("/proc/self"), flush=True)  # the host's pid (the guest is its namespace's 1)
time.sleep(120)
"""


@pytest.mark.root
def test_the_holder_of_the_most_netlink_sockets_is_killed_past_the_ceiling() -> None:
    """A real memory cgroup of 64 MiB (netlink ceiling 1024) with a network namespace of its
    own: "netlink" holds 1100 netlink sockets, "tcp" 1500 TCP ones (more descriptors), the
    guest 3 netlink ones. Past the ceiling "netlink" goes and nothing else."""
    sid = "sb-unit-netlink-ceiling"
    d = socket_ceiling.CGROUP_ROOT / "memory" / "warren" / sid
    if not (socket_ceiling.CGROUP_ROOT / "memory" / socket_ceiling.LIMIT).exists():
        pytest.skip("no cgroup v1 kmem.tcp accounting here")
    (d / "cmds").mkdir(parents=True, exist_ok=True)
    (d / "memory.limit_in_bytes").write_text(str(64 * MiB))
    for cg in (d, d / "cmds"):
        (cg / socket_ceiling.LIMIT).write_text(str(16 * MiB))
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        guest = "0"
        for name, where, netlink, tcp in (
            ("guest", d, 3, 0), ("netlink", d / "cmds", 1100, 0), ("tcp", d / "cmds", 0, 1500)
        ):  # fmt: skip
            procs = str(Path(where) / "cgroup.procs")
            argv = [sys.executable, "-c", HOLDER, name, procs, guest, str(netlink), str(tcp)]
            child = subprocess.Popen([*AS_INIT, *argv] if name == "guest" else argv, stdout=subprocess.PIPE)
            children[name] = child
            assert child.stdout is not None
            pid = child.stdout.readline().strip().decode()
            guest = pid if name == "guest" else guest
        assert netlink_ceiling.count(int(guest))[0] == 1103
        assert Watch().enforced([sid]) == 1
        assert children["netlink"].wait(10) == -9
        assert children["tcp"].poll() is None and children["guest"].poll() is None
        assert netlink_ceiling.count(int(guest))[0] == 3
        assert Watch().enforced([sid]) == 0  # under: nothing more
        # Unread replies: 12 sockets, each filled up to its SO_RCVBUF (in all past 4 MiB at the
        # kernel's default rmem_max too): their holder is killed, "tcp" is not.
        procs = str(d / "cmds" / "cgroup.procs")
        child = subprocess.Popen(
            [sys.executable, "-c", HOLDER, "queue", procs, guest, "12", "0", "fill"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        children["queue"] = child
        assert child.stdout is not None and child.stdout.readline()
        assert netlink_ceiling.queued(int(guest)) > 4 * MiB
        assert Watch().enforced([sid]) == 1
        assert children["queue"].wait(10) == -9
        assert children["tcp"].poll() is None and children["guest"].poll() is None
        assert netlink_ceiling.queued(int(guest)) == 0
    finally:
        for child in children.values():
            child.kill()
            child.wait()
        for cg in (d / "cmds", d):
            with contextlib.suppress(OSError):
                cg.rmdir()


def test_the_tables_reads_of_a_tick_stop_at_its_budget_and_every_sandbox_gets_its_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read of a namespace's netlink table walks every namespace's sockets, a cost tenants set
    (~10 ms a read at ~100 000 bound sockets on the host): the reads of one tick stop once
    they took QUEUE_BUDGET_S, and those left unread go first in the next ticks."""
    watch = socket_ceiling.SocketCeiling(root=Path("/nonexistent"))
    read: list[int] = []

    def slow(pid: int) -> int:  # as the kernel's walk over a host full of netlink sockets
        time.sleep(0.01)
        read.append(pid)
        return 0

    monkeypatch.setattr(netlink_ceiling, "queued", slow)
    sandboxes = {f"sb-{i}": socket_ceiling._Watched("usage", queue_read=-10, queue_top=1) for i in range(20)}
    for i, (sid, w) in enumerate(sandboxes.items()):
        w.guest = 1000 + i
        watch._watched[sid] = w
    per_tick = []
    for _ in range(12):
        watch._ticks += 1
        watch._queue_spent, watch._queue_reads = 0.0, 0
        before = len(read)
        for sid in sorted(sandboxes, key=watch._queue_age):
            watch._queue_over(sandboxes[sid])
        per_tick.append(len(read) - before)
    # Each read takes 10 ms at least: past 25 ms a tick reads no more (3 at most, 1 at least).
    assert all(1 <= n <= 3 for n in per_tick), per_tick
    # The first 20 reads are the 20 sandboxes, once each: none waits behind one read already.
    assert sorted(read[:20]) == [1000 + i for i in range(20)], read[:20]
