"""oom_guard: its readers on fixed files, and the guard itself on a real cgroup v1 memory cgroup
with real processes (the kernel's OOM wait and notification are what it is built on)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from warren.agent.runtime import oom_guard
from warren.agent.runtime.oom_guard import OomGuard

MEMORY = oom_guard.CGROUP_ROOT / "memory"


def test_oom_control_lines() -> None:
    assert oom_guard.oom_control("oom_kill_disable 1\nunder_oom 0\noom_kill 3\n") == {
        "oom_kill_disable": 1, "under_oom": 0, "oom_kill": 3,
    }  # fmt: skip


def proc_entry(proc: Path, pid: int, status: str = "", cgroup: str = "") -> None:
    d = proc / str(pid)
    d.mkdir(parents=True)
    (d / "status").write_text(status)
    (d / "cgroup").write_text(cgroup)


def test_size_is_rss_plus_swap(tmp_path: Path) -> None:
    proc_entry(tmp_path, 7, "Name:\tx\nVmRSS:\t    1024 kB\nVmSwap:\t     512 kB\n")
    proc_entry(tmp_path, 8, "Name:\tzombie\nState:\tZ\n")
    assert oom_guard.size(7, tmp_path) == 1536 * 1024
    assert oom_guard.size(8, tmp_path) == 0
    assert oom_guard.size(9, tmp_path) == 0  # gone


def test_memory_cgroup_line(tmp_path: Path) -> None:
    proc_entry(tmp_path, 7, cgroup="12:pids:/warren/a\n5:memory:/warren/sb-1\n1:name=systemd:/x\n")
    proc_entry(tmp_path, 8, cgroup="0::/user.slice\n")
    assert oom_guard.memory_cgroup(7, tmp_path) == "/warren/sb-1"
    assert oom_guard.memory_cgroup(8, tmp_path) is None


def test_pick_the_largest_but_never_the_init_nor_the_killed(tmp_path: Path) -> None:
    for pid, kb in ((1, 9000), (2, 100), (3, 800), (4, 5000)):
        proc_entry(tmp_path, pid, f"VmRSS:\t{kb} kB\n")
    assert oom_guard.pick([1, 2, 3, 4], init=1, killed={}, proc=tmp_path) == (4, 5000 * 1024)
    assert oom_guard.pick([1, 2, 3, 4], init=1, killed={4: 0.0}, proc=tmp_path) == (3, 800 * 1024)
    assert oom_guard.pick([1], init=1, killed={}, proc=tmp_path) is None


# ------------------------------------------------------------------ on a real memory cgroup

HOG = "b = []\nwhile True:\n    b.append(bytearray(b'x' * (1 << 20)))\n"


@pytest.fixture
def cgroup() -> Iterator[Path]:
    if os.geteuid() != 0 or not (MEMORY / "cgroup.event_control").exists():
        pytest.skip("needs root and the cgroup v1 memory controller")
    cg = MEMORY / f"warren-unit-oom-guard-{os.getpid()}"
    cg.mkdir()
    (cg / "memory.limit_in_bytes").write_text(str(48 << 20))
    try:
        yield cg
    finally:
        for _ in range(100):
            for pid in (cg / "cgroup.procs").read_text().split():
                os.kill(int(pid), 9)
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.05)


def start_in(cg: Path, code: str) -> subprocess.Popen[bytes]:
    """A Python process that joins ``cg`` before it runs ``code``."""
    join = f"open({str(cg / 'cgroup.procs')!r}, 'w').write(str(__import__('os').getpid()))\n"
    p = subprocess.Popen([sys.executable, "-c", join + "import sys; sys.stdin.read(1)\n" + code],
                         stdin=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 30
    while str(p.pid) not in (cg / "cgroup.procs").read_text().split():
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.01)
    return p


def go(p: subprocess.Popen[bytes]) -> None:
    assert p.stdin is not None
    p.stdin.write(b"x")
    p.stdin.close()


@pytest.mark.root
def test_the_largest_other_process_dies_not_the_init(cgroup: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The init itself is the larger (16 MiB held), and the hog grows without end: the kernel at
    # equal scores would end with the init; the guard takes the hog.
    init = start_in(cgroup, "held = bytearray(b'x' * (16 << 20))\nimport time\ntime.sleep(600)\n")
    go(init)
    hog = start_in(cgroup, HOG)
    guard = OomGuard()
    assert guard.arm("unit", init.pid, cgroup)
    assert (cgroup / "memory.oom_control").read_text().startswith("oom_kill_disable 1")
    try:
        go(hog)
        assert hog.wait(60) == -9
        assert init.poll() is None
        assert f"event=oom_kill container_id=unit pid={hog.pid} " in caplog.text
        # No kill by the kernel in the cgroup.
        assert oom_guard.oom_control((cgroup / "memory.oom_control").read_text())["oom_kill"] == 0
    finally:
        guard.disarm("unit")
        init.kill()
        init.wait()


@pytest.mark.root
def test_an_init_alone_at_the_limit_goes_to_the_kernel(
    cgroup: Path, caplog: pytest.LogCaptureFixture
) -> None:
    init = start_in(cgroup, HOG)
    guard = OomGuard()
    assert guard.arm("unit", init.pid, cgroup)
    try:
        go(init)
        assert init.wait(60) == -9  # the kernel's killer, handed the cgroup back
        assert "event=oom_guard_released container_id=unit" in caplog.text
        assert oom_guard.oom_control((cgroup / "memory.oom_control").read_text())["oom_kill"] == 1
    finally:
        guard.disarm("unit")


@pytest.mark.root
def test_an_oom_pending_before_arming_is_handled_at_once(cgroup: Path) -> None:
    # What a restarted agent finds: the kernel's killer off and a task waiting at the limit.
    init = start_in(cgroup, "import time\ntime.sleep(600)\n")
    go(init)
    (cgroup / "memory.oom_control").write_text("1")
    hog = start_in(cgroup, HOG)
    go(hog)
    deadline = time.monotonic() + 30
    while not oom_guard.oom_control((cgroup / "memory.oom_control").read_text())["under_oom"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    guard = OomGuard()
    try:
        assert guard.adopt(init.pid) and guard.armed() == [cgroup.name]
        assert hog.wait(60) == -9
        assert init.poll() is None
    finally:
        guard.disarm(cgroup.name)
        init.kill()
        init.wait()
