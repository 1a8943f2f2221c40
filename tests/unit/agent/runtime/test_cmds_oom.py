"""The OOM storm watch (agent/runtime/cmds_oom.py) on real v1 memory cgroups of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from warren.agent.runtime import cmds_oom
from warren.agent.runtime.cmds_oom import OomWatch, read_control

pytestmark = pytest.mark.root

MEMORY = Path("/sys/fs/cgroup/memory")
LIMIT = 32 << 20
HOG = "b = bytearray(128 << 20)"  # past the limit: killed


@pytest.fixture
def parent() -> Iterator[str]:
    """A parent of sandbox cgroups of this test's own (not the agents')."""
    name = f"warren-unit-oom-{os.getpid()}"
    yield name
    for d in sorted((MEMORY / name).glob("**/"), key=lambda p: len(p.parts), reverse=True):
        for pid in (d / "cgroup.procs").read_text().split() if (d / "cgroup.procs").exists() else []:
            subprocess.run(["kill", "-9", pid], check=False)
        for _ in range(50):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)
    shutil.rmtree(MEMORY / name, ignore_errors=True)


def make_cmds(parent: str, sid: str) -> Path:
    d = MEMORY / parent / sid / "cmds"
    d.mkdir(parents=True)
    (d / "memory.limit_in_bytes").write_text(str(LIMIT))
    return d


def hog(cmds: Path) -> int:
    """A process in ``cmds`` that allocates past its limit; its exit status (-9: killed)."""
    code = f"open('{cmds}/cgroup.procs', 'w').write(str(__import__('os').getpid())); {HOG}"
    return subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode


@pytest.fixture
def watch(parent: str) -> Iterator[OomWatch]:
    w = OomWatch(parent=parent)
    kills: list[int] = []
    w.start(kills.append)
    yield w
    w.stop()


def wait_for(cond: Callable[[], bool], timeout: float = 30) -> None:
    until = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < until
        time.sleep(0.02)


def test_a_single_oom_is_the_kernels(parent: str, watch: OomWatch) -> None:
    d = make_cmds(parent, "sb-one")
    watch.arm("sb-one")
    assert hog(d) == -9
    assert read_control(d / "memory.oom_control")["oom_kill"] == 1
    assert not watch.in_storm("sb-one")
    assert read_control(d / "memory.oom_control")["oom_kill_disable"] == 0


def test_a_storm_is_taken_over_then_given_back_when_quiet(
    parent: str, watch: OomWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cmds_oom, "QUIET_S", 1.0)
    d = make_cmds(parent, "sb-storm")
    watch.arm("sb-storm")
    results = [hog(d) for _ in range(cmds_oom.STORM_KILLS + 4)]
    assert results == [-9] * len(results)  # every hog killed, by the kernel or the agent
    state = read_control(d / "memory.oom_control")
    # The kernel's; the agent killed the rest (one more may race the agent's switch, under load).
    assert cmds_oom.STORM_KILLS <= state["oom_kill"] <= cmds_oom.STORM_KILLS + 1, state
    assert watch.in_storm("sb-storm") and state["oom_kill_disable"] == 1
    wait_for(lambda: not watch.in_storm("sb-storm"))  # quiet: the kernel's killer is back
    assert read_control(d / "memory.oom_control")["oom_kill_disable"] == 0
    assert hog(d) == -9
    assert read_control(d / "memory.oom_control")["oom_kill"] == state["oom_kill"] + 1


def test_a_storm_left_by_a_crashed_agent_is_taken_over(parent: str, watch: OomWatch) -> None:
    d = make_cmds(parent, "sb-left")
    (d / "memory.oom_control").write_text("1")  # what the crashed agent left
    waiting = subprocess.Popen(
        [sys.executable, "-c", f"open('{d}/cgroup.procs', 'w').write(str(__import__('os').getpid())); {HOG}"]
    )
    wait_for(lambda: read_control(d / "memory.oom_control")["under_oom"] == 1)  # waits, unkilled
    watch.arm("sb-left")
    assert waiting.wait(30) == -9
    assert watch.in_storm("sb-left")
    assert read_control(d / "memory.oom_control")["oom_kill"] == 0  # not the kernel's


def test_a_stop_gives_the_kernel_its_killer_back(parent: str) -> None:
    w = OomWatch(parent=parent)
    w.start()
    d = make_cmds(parent, "sb-stop")
    w.arm("sb-stop")
    for _ in range(cmds_oom.STORM_KILLS + 1):
        hog(d)
    wait_for(lambda: w.in_storm("sb-stop"))
    w.stop()
    assert read_control(d / "memory.oom_control")["oom_kill_disable"] == 0
    assert w.armed() == []


def test_a_removed_cgroup_is_forgotten(parent: str, watch: OomWatch) -> None:
    d = make_cmds(parent, "sb-gone")
    watch.arm("sb-gone")
    os.rmdir(d)  # the kernel signals the removal
    wait_for(lambda: "sb-gone" not in watch.armed())


def test_arming_a_sandbox_without_cmds_does_nothing(parent: str, watch: OomWatch) -> None:
    (MEMORY / parent / "sb-gvisor").mkdir(parents=True)
    watch.arm("sb-gvisor")
    assert watch.armed() == []


def test_an_event_for_a_sandbox_disarmed_since_the_poll_reads_nothing(parent: str) -> None:
    """The poll named a sandbox's eventfd, then its destroy disarmed it (closing the fd) before
    the event was handled; the number may be another file's by then. Before, the watch read
    8 bytes from whatever it was."""
    w = OomWatch(parent=parent)
    r, wr = os.pipe()
    os.set_blocking(r, False)  # before the fix, the read below found nothing (not a hang)
    try:
        os.write(wr, b"12345678")
        w._on_event(r)  # an fd the watch does not hold (any more)
        assert os.read(r, 8) == b"12345678"
    finally:
        os.close(r)
        os.close(wr)
