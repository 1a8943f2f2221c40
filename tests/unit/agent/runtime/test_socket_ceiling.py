"""The socket memory watchdog's rules (runtime/socket_ceiling.py); the attack is in
tests/security/test_attack_session18_socket_ceiling.py."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from warren.agent.runtime import socket_ceiling
from warren.agent.runtime.socket_ceiling import SocketCeiling, ceiling, choose

MiB = 1 << 20


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
    assert socket_ceiling._in(line, "/warren/sb-1/cmds") is inside


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
        assert SocketCeiling(tmp_path).tick(["sb-1"]) == 0
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
        assert SocketCeiling().tick([sid]) == 1
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
