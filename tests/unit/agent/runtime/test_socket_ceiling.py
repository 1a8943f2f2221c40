"""The socket memory watchdog's rules (runtime/socket_ceiling.py); the attack is in
tests/security/test_attack_session18_socket_ceiling.py."""

from __future__ import annotations

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
