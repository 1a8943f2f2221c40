"""The socket memory watchdog's rules (runtime/socket_ceiling.py); the attack is in
tests/security/test_attack_session18_socket_ceiling.py."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from warren.agent.runtime import cmds_procs, socket_ceiling
from warren.agent.runtime.socket_ceiling import SocketCeiling, ceiling, choose

MiB = 1 << 20


class Watch(SocketCeiling):
    """The watchdog, its kills counted; :meth:`enforced` runs one tick to its enforcements' end."""

    def __init__(
        self, root: Path = socket_ceiling.CGROUP_ROOT, workers: int = socket_ceiling.WORKERS
    ) -> None:
        self.kills: list[int] = []
        super().__init__(root, self.kills.append, workers)

    def enforced(self, sandbox_ids: list[str]) -> int:
        """The kills of one tick's enforcements."""
        before = sum(self.kills)
        self.tick(sandbox_ids)
        assert self.workers.join(60)
        return sum(self.kills) - before


def test_the_process_with_the_most_sockets_goes_first() -> None:
    assert choose([(10, 3), (11, 40), (12, 7)]) == 11


def test_a_tie_takes_the_newest_pid() -> None:
    assert choose([(10, 5), (30, 5), (20, 5)]) == 30


def test_no_socket_no_victim() -> None:
    assert choose([(10, 0), (11, 0)]) is None
    assert choose([]) is None


def test_the_ceiling_is_the_bound_twice_over() -> None:
    assert ceiling(16 * MiB) == 32 * MiB
    assert ceiling(256 * MiB) == 512 * MiB


@pytest.mark.parametrize(
    ("line", "inside"),
    [
        ("5:memory:/warren/sb-1/cmds", True),
        ("5:memory,hugetlb:/warren/sb-1/cmds", True),
        ("5:memory:/warren/sb-1", False),  # the guest
        ("5:memory:/warren/sb-1/cmds/x", False),
        ("4:pids:/warren/sb-1/cmds", False),
        ("5:memory:/warren/sb-10/cmds", False),
    ],
)
def test_only_a_process_of_the_sandboxes_cmds_is_a_candidate(line: str, inside: bool) -> None:
    assert cmds_procs.in_cgroup(line, "/warren/sb-1/cmds") is inside


def _fake(tmp_path: Path, sid: str, limit: int, usage: int, procs: list[int]) -> Path:
    d = tmp_path / "memory" / "warren" / sid
    (d / "cmds").mkdir(parents=True)
    (d / "memory.kmem.tcp.limit_in_bytes").write_text(f"{limit}\n")
    (d / "memory.kmem.tcp.usage_in_bytes").write_text(f"{usage}\n")
    (d / "cmds" / "cgroup.procs").write_text("".join(f"{p}\n" for p in procs))
    return d


def test_a_listed_pid_that_is_not_in_cmds_is_never_killed(tmp_path: Path) -> None:
    """cgroup.procs names a process (pid reuse, a stale list) that /proc puts elsewhere: it
    holds sockets and the usage is past the ceiling, yet it lives."""
    code = (
        "import socket, time; s = [socket.socket() for _ in range(8)]; print(1, flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline()
        _fake(tmp_path, "sb-1", 16 * MiB, 64 * MiB, [child.pid])
        assert Watch(tmp_path).enforced(["sb-1"]) == 0
        assert child.poll() is None
        assert socket_ceiling._sockets(child.pid) >= 8
    finally:
        child.kill()
        child.wait()


def test_an_unbounded_cgroup_is_skipped(tmp_path: Path) -> None:
    """gVisor's cgroup, or one re-adopted from before the bound: the kernel's default limit."""
    _fake(tmp_path, "sb-2", socket_ceiling.UNBOUNDED, 1 << 40, [])
    watch = SocketCeiling(tmp_path)
    assert watch.tick(["sb-2"]) == 0
    assert watch._watched["sb-2"].limit == 0


def test_own_socket_count() -> None:
    with socket.socket() as a, socket.socket() as b:
        assert a.fileno() != b.fileno()
        assert socket_ceiling._sockets(os.getpid()) >= 2


def test_the_kill_counter_is_exported() -> None:
    from prometheus_client import REGISTRY

    from warren.agent import metrics

    metrics.SOCKET_MEMORY_KILLS.inc(0)
    assert REGISTRY.get_sample_value("warren_agent_socket_memory_kills_total") is not None


# Joins the cgroup whose cgroup.procs is argv[1], then holds argv[2] loopback pairs, one 64 KiB
# send each never read; says so on stdout.
HOLDER = r"""
import socket, sys, time
with open(sys.argv[1], "w") as f:
    f.write("0")
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(1024)
held = [ls]
for _ in range(int(sys.argv[2])):
    c = socket.create_connection(ls.getsockname())
    s, _ = ls.accept()
    c.setblocking(False)
    try:
        c.send(b"x" * 65536)
    except BlockingIOError:
        pass
    held += [c, s]
print(1, flush=True)
time.sleep(120)
"""


@pytest.mark.root
def test_the_holder_of_the_most_sockets_in_cmds_is_killed_and_no_other() -> None:
    """A real memory cgroup (a 1 MiB bound): past 2 MiB the process of ``cmds`` with the most
    sockets is killed; once the usage is under the bound the smaller one and the "guest" (in the
    sandbox's cgroup, not in cmds) live on."""
    sid = "sb-unit-socket-ceiling"
    d = socket_ceiling.CGROUP_ROOT / "memory" / "warren" / sid
    if not (socket_ceiling.CGROUP_ROOT / "memory" / socket_ceiling.LIMIT).exists():
        pytest.skip("no cgroup v1 kmem.tcp accounting here")
    (d / "cmds").mkdir(parents=True, exist_ok=True)
    for cg in (d, d / "cmds"):
        (cg / socket_ceiling.LIMIT).write_text(str(1 * MiB))
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, where, pairs in (("guest", d, 3), ("big", d / "cmds", 100), ("small", d / "cmds", 5)):
            child = subprocess.Popen(
                [sys.executable, "-c", HOLDER, str(where / "cgroup.procs"), str(pairs)],
                stdout=subprocess.PIPE,
            )
            children[name] = child
            assert child.stdout is not None and child.stdout.readline()
        usage = int((d / socket_ceiling.USAGE).read_text())
        assert usage > ceiling(1 * MiB), usage
        assert Watch().enforced([sid]) == 1
        assert children["big"].wait(10) == -9
        assert children["small"].poll() is None and children["guest"].poll() is None
        assert int((d / socket_ceiling.USAGE).read_text()) <= 1 * MiB
    finally:
        for child in children.values():
            child.kill()
            child.wait()
        for cg in (d / "cmds", d):
            with contextlib.suppress(OSError):
                cg.rmdir()


# -- the socket count (accept queues) -------------------------------------------------------------

TCP = b"""\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A1B2 00000000:0000 0A 00000000:00001000 00:00000000 00000000 65534        0 4711 1 0000000000000000 100 0 0 10 0
   1: 0100007F:C3D4 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4712 1 0000000000000000 100 0 0 10 0
   2: 0100007F:A1B2 0100007F:9C40 08 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 0 10 -1
   3: 0100007F:A1B2 0100007F:9C41 03 00000000:00000000 01:00000066 00000000     0        0 0 1 0000000000000000
12345: 0100007F:E0E0 0100007F:0A0A 01 00000000:0000000A 00:00000000 00000000  1000        0 4713 1 0000000000000000 20 4 0 10 -1
"""  # noqa: E501
TCP6 = b"""\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:CA99 00000000000000000000000000000000:0000 0A 00000000:00000064 00:00000000 00000000     0        0 25256033 1 00000000b45aac20 100 0 0 10 0
"""  # noqa: E501


def test_a_listener_weighs_its_accept_queue() -> None:
    """State 0A rows give inode -> rx_queue (the queue); a connection's rx_queue (bytes
    unread) and the queued children's rows (inode 0) are not listeners; sl past 9999 shifts
    nothing."""
    assert socket_ceiling.backlogs([TCP, TCP6]) == {4711: 4096, 4712: 0, 25256033: 100}


def test_the_count_ceiling_scales_with_memory() -> None:
    assert socket_ceiling.count_ceiling(256 * MiB) == 16384
    assert socket_ceiling.count_ceiling(1024 * MiB) == 65536
    assert socket_ceiling.count_ceiling(32 * MiB) == 4096  # the floor
    assert socket_ceiling._field(b"TCP6: inuse 202\nUDP6: inuse 0\n", b"TCP6: inuse ") == 202


def _queue(n: int, family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    """A listener with ``n`` connections in its queue, their clients closed."""
    ls = socket.socket(family)
    ls.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    ls.listen(4096)
    for _ in range(n):
        with socket.socket(family) as c:
            c.connect(ls.getsockname()[:2])
    return ls


def test_own_listeners_weigh_their_queues() -> None:
    """Read from this process's namespace: the tables name our listeners' queues and the
    count sees the queued children, IPv6 ones too."""
    with _queue(300) as four, _queue(200, socket.AF_INET6) as six:
        queued = socket_ceiling._tables(os.getpid())
        assert queued[os.fstat(four.fileno()).st_ino] == 300
        assert queued[os.fstat(six.fileno()).st_ino] == 200
        assert socket_ceiling._sockets(os.getpid(), queued) >= 2 + 500
        assert socket_ceiling._sockets(os.getpid()) < 500
        assert socket_ceiling._inuse(os.getpid()) >= 500


# Joins the cgroup whose cgroup.procs is argv[1]; holds listeners with argv[2] queued
# connections in all (2048 a listener), or argv[3] bare sockets; says its pid (the host's) on
# stdout.
QUEUER = r"""
import os, socket, sys, time
with open(sys.argv[1], "w") as f:
    f.write("0")
held = []
left = int(sys.argv[2])
while left > 0:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4096)
    for _ in range(min(left, 2048)):
        with socket.socket() as c:
            c.connect(ls.getsockname())
    left -= 2048
    held.append(ls)
held += [socket.socket() for _ in range(int(sys.argv[3]))]
print(os.readlink("/proc/self"), flush=True)
time.sleep(120)
"""

# Runs a command as the init of a pid namespace of its own, as a container's guest is (killed
# with unshare).
AS_INIT = ("unshare", "--pid", "--fork", "--kill-child")


def _queuer(where: Path, queued: int, bare: int, init: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    """A :data:`QUEUER` in ``where`` (``init``: a pid namespace's init), and its host pid."""
    argv = [sys.executable, "-c", QUEUER, str(where / "cgroup.procs"), str(queued), str(bare)]
    child = subprocess.Popen([*AS_INIT, *argv] if init else argv, stdout=subprocess.PIPE)
    assert child.stdout is not None
    return child, int(child.stdout.readline())


@pytest.mark.root
def test_the_holder_of_the_longest_queues_is_killed_past_the_count() -> None:
    """A real memory cgroup of 32 MiB (count ceiling 4096) in this namespace: "queues" holds 2
    listeners with 4200 queued connections, "bare" 200 sockets (more descriptors). Past the
    count "queues" goes and nothing else; the count is back under the ceiling.

    The guest is found as the sandbox's init, though a lower pid is listed in its cgroup first
    (a command the guest forked, after the host's pids wrapped) and has entered ``cmds`` since,
    elsewhere (before: that pid taken for the guest, its reads refused as not the sandbox's, no
    kill until the guest was looked for again 30 s later)."""
    sid = "sb-unit-socket-count"
    d = socket_ceiling.CGROUP_ROOT / "memory" / "warren" / sid
    if not (socket_ceiling.CGROUP_ROOT / "memory" / socket_ceiling.LIMIT).exists():
        pytest.skip("no cgroup v1 kmem.tcp accounting here")
    (d / "cmds").mkdir(parents=True, exist_ok=True)
    (d / "memory.limit_in_bytes").write_text(str(32 * MiB))
    for cg in (d, d / "cmds"):
        (cg / socket_ceiling.LIMIT).write_text(str(16 * MiB))
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        children["forked"], forked = _queuer(d, 0, 0)
        children["guest"], guest = _queuer(d, 0, 3, init=True)
        listed = cmds_procs.pids(d / "cgroup.procs")
        assert listed == sorted([forked, guest]) and listed[0] == forked  # the pids did not wrap
        watch = Watch()
        assert watch.enforced([sid]) == 0  # the guest looked for
        (d / "cmds" / "cgroup.procs").write_text(str(forked))  # the command enters cmds
        children["queues"] = _queuer(d / "cmds", 4200, 0)[0]
        children["bare"] = _queuer(d / "cmds", 0, 200)[0]
        assert socket_ceiling._inuse(os.getpid()) > 4096
        assert watch.enforced([sid]) == 1
        assert children["queues"].wait(10) == -9
        assert all(children[c].poll() is None for c in ("bare", "guest", "forked"))
        assert socket_ceiling._inuse(os.getpid()) <= 4096
    finally:
        for child in children.values():
            child.kill()
            child.wait()
        for cg in (d / "cmds", d):
            with contextlib.suppress(OSError):
                cg.rmdir()


# -- sockets in flight (session 19): every process of cmds when the heaviest-first kills run out ----

# Joins the cgroup whose cgroup.procs is argv[1]; puts argv[2] loopback pairs (one 64 KiB send
# each, never read) in flight in a unix socket and closes them; argv[3] "hidden": the unix
# socket is kept by a thread whose leader then exits alone (a zombie: /proc/<pid>/fd empty,
# /proc/<pid>/cgroup "/"), else by the process (weight 1); argv[4] socketpairs more (a
# decoy's weight). Says so on stdout.
INFLIGHT = r"""
import array, ctypes, socket, sys, threading, time
with open(sys.argv[1], "w") as f:
    f.write("0")
def build():
    keep, send = socket.socketpair()
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1024)
    for _ in range(int(sys.argv[2])):
        c = socket.create_connection(ls.getsockname())
        s, _ = ls.accept()
        c.setblocking(False)
        try:
            c.send(b"x" * 65536)
        except BlockingIOError:
            pass
        fds = array.array("i", [c.fileno(), s.fileno()])
        send.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        c.close()
        s.close()
    ls.close()
    send.close()
    return keep
if sys.argv[3] == "hidden":
    done = threading.Event()
    def hide():
        held = build()
        done.set()
        print(1, flush=True)
        time.sleep(120)
    threading.Thread(target=hide).start()
    done.wait()
    ctypes.CDLL(None).syscall(60, 0)  # SYS_exit: the main thread alone
elif int(sys.argv[2]):
    held = build()
decoy = [socket.socketpair() for _ in range(int(sys.argv[4]))]
print(1, flush=True)
time.sleep(120)
"""


def _cgroups(sid: str) -> Path:
    d = socket_ceiling.CGROUP_ROOT / "memory" / "warren" / sid
    if not (socket_ceiling.CGROUP_ROOT / "memory" / socket_ceiling.LIMIT).exists():
        pytest.skip("no cgroup v1 kmem.tcp accounting here")
    (d / "cmds").mkdir(parents=True, exist_ok=True)
    for cg in (d, d / "cmds"):
        (cg / socket_ceiling.LIMIT).write_text(str(1 * MiB))
    return d


def _spawn(where: Path, pairs: int, mode: str, pairs_more: int) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(
        [sys.executable, "-c", INFLIGHT, str(where / "cgroup.procs"), str(pairs), mode, str(pairs_more)],
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdout.readline()
    return child


def _end(d: Path, children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        child.kill()
        child.wait()
    for cg in (d / "cmds", d):
        with contextlib.suppress(OSError):
            cg.rmdir()


@pytest.mark.root
def test_sockets_in_flight_held_by_no_descriptor_kill_all_of_cmds(caplog: pytest.LogCaptureFixture) -> None:
    """A real memory cgroup (1 MiB bound): 100 pairs in flight in a unix socket a thread keeps
    behind its zombie leader, a bystander in cmds without sockets, a "guest" in the sandbox's
    cgroup. No process of cmds shows a socket descriptor: both are killed, the memory goes, the
    guest lives."""
    sid = "sb-unit-socket-inflight"
    d = _cgroups(sid)
    children: list[subprocess.Popen[bytes]] = []
    try:
        guest = _spawn(d, 0, "shown", 1)
        children += [guest, _spawn(d / "cmds", 100, "hidden", 0), _spawn(d / "cmds", 0, "shown", 0)]
        hidden = children[1].pid
        while "Z" not in Path(f"/proc/{hidden}/stat").read_text().split(")")[1][:3]:
            time.sleep(0.01)  # the leader has exited alone
        assert socket_ceiling._sockets(hidden) == 0
        assert int((d / socket_ceiling.USAGE).read_text()) > ceiling(1 * MiB)
        assert Watch().enforced([sid]) == 2
        assert [c.wait(10) for c in children[1:]] == [-9, -9]
        assert guest.poll() is None
        assert int((d / socket_ceiling.USAGE).read_text()) <= 1 * MiB
        assert f"event=socket_memory_kill_all sandbox={sid} killed=2" in caplog.text
    finally:
        _end(d, children)


@pytest.mark.root
def test_kills_spent_on_heavier_decoys_two_ticks_in_a_row_kill_all_of_cmds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The holder of 100 pairs in flight weighs 1, three decoys 4 each; one kill a tick
    (MAX_KILLS 1): the first tick kills a decoy only, the second a decoy and then all of cmds."""
    monkeypatch.setattr(socket_ceiling, "MAX_KILLS", 1)
    sid = "sb-unit-socket-decoys"
    d = _cgroups(sid)
    children: list[subprocess.Popen[bytes]] = []
    try:
        children.append(_spawn(d / "cmds", 100, "shown", 0))
        children += [_spawn(d / "cmds", 0, "shown", 2) for _ in range(3)]
        watch = Watch()
        assert watch.enforced([sid]) == 1
        assert children[0].poll() is None
        assert sum(c.poll() is None for c in children) == 3
        assert watch.enforced([sid]) == 1 + 2  # a decoy, then the holder and the last decoy
        assert [c.wait(10) for c in children] == [-9] * 4
        assert int((d / socket_ceiling.USAGE).read_text()) <= 1 * MiB
    finally:
        _end(d, children)


# -- enforcement off the tick (session 20): the attack is test_attack_session20_socket_watchdog.py --


def _until(ok: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not ok():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_sandbox_under_enforcement_is_skipped_and_more_wait_for_a_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One worker, held by sb-1's enforcement: the tick leaves sb-1 alone (not even read: no
    state), hands sb-2 over (past its ceiling: it waits, logged), and drops it once it is no
    longer listed (paused, gone)."""
    for sid in ("sb-1", "sb-2"):
        _fake(tmp_path, sid, 16 * MiB, 64 * MiB, [])
    watch = Watch(tmp_path, workers=1)
    release = threading.Event()

    def held() -> None:  # sb-1's enforcement, as long as the test says
        release.wait(30)

    watch.workers.submit("sb-1", held)
    try:
        assert watch.tick(["sb-1", "sb-2"]) == 1
        assert "sb-1" not in watch._watched and "sb-2" in watch.workers
        assert "event=socket_watchdog_queued sandbox=sb-2 waiting=1 workers=1" in caplog.text
        assert watch.tick(["sb-1", "sb-2"]) == 0  # both under enforcement (one waiting)
        assert watch.tick(["sb-1"]) == 0
        assert "sb-2" not in watch.workers  # dropped before it ran
    finally:
        release.set()
    assert watch.workers.join(30)
    assert watch.tick(["sb-1", "sb-2"]) == 2  # both read again, both still past the ceiling
    assert watch.workers.join(30)
    assert watch.kills == []  # nothing in their cmds


# Joins the cgroup whose cgroup.procs is argv[1]; argv[2] sleeps inherit every descriptor up to
# RLIMIT_NOFILE (/dev/null: no socket), then argv[3] socketpairs are held. Says so on stdout.
SPREAD = r"""
import os, resource, socket, sys, time
with open(sys.argv[1], "w") as f:
    f.write("0")
null = os.open("/dev/null", os.O_RDONLY)
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
top = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
for fd in range(null + 1, top - 2 * int(sys.argv[3]) - 16):
    os.dup2(null, fd, inheritable=True)
for _ in range(int(sys.argv[2])):
    if os.fork() == 0:
        os.dup2(null, 1)  # not our stdout: the reader waits for its end
        os.execv("/bin/sleep", ["sleep", "120"])
held = [socket.socketpair() for _ in range(int(sys.argv[3]))]
print(1, flush=True)
time.sleep(120)
"""


def _members(d: Path) -> list[int]:
    return [int(p) for p in (d / "cmds" / "cgroup.procs").read_text().split()]


@pytest.mark.root
def test_a_pass_stops_at_the_enforcements_time_and_the_next_kills_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """50 sleeps of ~4000 descriptors each (200 000 links to read a pass), their parent holding
    300 socketpairs, a holder of 100 pairs in flight: with 0.1 s an enforcement the pass stops
    before a victim (none killed, "spent"); the next enforcement, in a row, stops too and kills
    all of cmds."""
    monkeypatch.setattr(socket_ceiling, "ENFORCE_S", 0.1)
    sid = "sb-unit-socket-spread"
    d = _cgroups(sid)
    procs = d / "cmds" / "cgroup.procs"
    children = [
        subprocess.Popen([sys.executable, "-c", SPREAD, str(procs), "50", "300"], stdout=subprocess.PIPE)
    ]
    try:
        assert children[0].stdout is not None and children[0].stdout.readline()
        children.append(_spawn(d / "cmds", 100, "shown", 0))
        _until(lambda: len(_members(d)) == 52)
        assert int((d / socket_ceiling.USAGE).read_text()) > ceiling(1 * MiB)
        watch = Watch()
        assert watch.enforced([sid]) == 0
        assert len(_members(d)) == 52
        assert watch.enforced([sid]) == 52
        assert [c.wait(10) for c in children] == [-9, -9]
    finally:
        for pid in _members(d):  # the sleeps, if it failed before they were killed
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        _end(d, children)


@pytest.mark.root
def test_spent_enforcements_count_in_a_row_only_without_a_look_in_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real decoys in a real cmds, the counter a file of ours (past the ceiling or not as we
    write it); one kill an enforcement. Spent, then a tick that finds it under, then spent
    again: not in a row, a decoy each. Spent once more at the next tick: in a row, all of cmds."""
    monkeypatch.setattr(socket_ceiling, "MAX_KILLS", 1)
    sid = "sb-unit-socket-row"
    d = _cgroups(sid)
    fake = _fake(tmp_path, sid, 1 * MiB, 64 * MiB, [])
    (fake / "cmds" / "cgroup.procs").unlink()
    (fake / "cmds").rmdir()
    (fake / "cmds").symlink_to(d / "cmds")  # its processes are the real cgroup's
    children = [_spawn(d / "cmds", 0, "shown", 2) for _ in range(4)]
    try:
        watch = Watch(tmp_path)
        assert watch.enforced([sid]) == 1
        (fake / socket_ceiling.USAGE).write_text(f"{1 * MiB}\n")
        assert watch.enforced([sid]) == 0  # under: not handed over
        (fake / socket_ceiling.USAGE).write_text(f"{64 * MiB}\n")
        assert watch.enforced([sid]) == 1  # not in a row: one decoy
        assert sum(c.poll() is None for c in children) == 2
        assert watch.enforced([sid]) == 1 + 1  # in a row: a decoy, then the last one
        assert [c.wait(10) for c in children] == [-9] * 4
    finally:
        _end(d, children)
