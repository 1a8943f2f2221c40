"""The host side of the gVisor memory watch's wake (``agent/runtime/gvisor_memwake.py``): the
thresholds' spacing, the wake pipe, and the drain of the guest's stderr file (a real file: its
lines to the log, bounded, and their pages punched out). Against real sandboxes:
tests/security/test_attack_session16_gvisor.py."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from warren.agent.runtime import gvisor_memwake as mw
from warren.agent.runtime.gvisor import CHILDREN_FILE, GvisorRuntime

MiB = 1 << 20


@pytest.mark.parametrize("limit_mib", [64, 224, 352, 1120, 8288, 65632])
def test_the_thresholds_are_few_and_page_aligned(limit_mib: int) -> None:
    s = mw.step(limit_mib * MiB)
    assert s >= mw.MIN_STEP and s % 4096 == 0
    assert -(-limit_mib * MiB // s) <= mw.MAX_RUNGS


def test_the_wake_pipe_never_ends_and_never_blocks_the_agent() -> None:
    stdin, writer = mw.wake_pipe()
    try:
        assert stat.S_ISFIFO(os.fstat(stdin).st_mode)
        os.write(stdin, b"x")  # read-write: a writer always remains on the guest's side
        assert os.read(stdin, 1) == b"x"
        with pytest.raises(BlockingIOError):
            while True:
                os.write(writer, b"r" * 65536)
    finally:
        os.close(stdin)
        os.close(writer)


def armed(fd: int) -> mw._Armed:
    return mw._Armed("sb-test", writer=-1, event=-1, usage=-1, limit=0, step=0, stderr=fd)


def test_the_guests_stderr_goes_to_the_log_and_out_of_its_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fd = os.open(tmp_path / "stderr", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        a = armed(fd)
        lines = [f"warren-guest[1]: out of memory: killed pid {n} ({'x' * 80})".encode() for n in range(60)]
        os.write(fd, b"\n".join(lines[:3]) + b"\n")
        with caplog.at_level(logging.INFO, logger="warren.agent"):
            mw.drain(a)
        assert [r.getMessage().count("killed pid") for r in caplog.records] == [1, 1, 1]
        assert os.fstat(fd).st_blocks * 512 <= 4096  # punched: at most the last, partial page
        # The guest writes on at its own offset; a burst logs LOG_LINES and counts the rest.
        caplog.clear()
        os.write(fd, b"\n".join(lines[3:]) + b"\n")
        with caplog.at_level(logging.INFO, logger="warren.agent"):
            mw.drain(a)
        logged = [r.getMessage() for r in caplog.records]
        assert len(logged) == mw.LOG_LINES + 1
        assert "pid 3 " in logged[0] and "event=guest_stderr_dropped" in logged[-1]
        assert os.fstat(fd).st_size > 4096 and os.fstat(fd).st_blocks * 512 <= 4096
        caplog.clear()
        mw.drain(a)  # nothing new
        assert caplog.records == []
    finally:
        os.close(fd)


@pytest.mark.parametrize("children", [None, "", "not-a-pid", "999999999"])
def test_a_sandbox_an_agent_cannot_rearm_gets_the_kernels_killer_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, children: str | None
) -> None:
    """An earlier agent held the cgroup's OOM killer back; this one finds no wake pipe to watch
    the sandbox by (its bundle's pid file gone or wrong): the hold goes, or whatever faults at
    the limit would wait with nothing to end the wait."""
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.oom_control").write_text("1")  # what the earlier agent left
    monkeypatch.setattr(mw, "cgroup_dir", lambda controller, sandbox_id: cgroup)
    runtime = GvisorRuntime(tmp_path / "state", tmp_path / "sandboxes")
    if children is not None:
        (tmp_path / "sandboxes" / "sb-test").mkdir(parents=True)
        (tmp_path / "sandboxes" / "sb-test" / CHILDREN_FILE).write_text(children)
    runtime._rearm("sb-test")
    assert (cgroup / "memory.oom_control").read_text() == "0"
    assert runtime.memwake.armed() == []


def test_an_arm_that_fails_leaves_no_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "memory.oom_control").write_text("1")  # no memory.limit_in_bytes: the arm fails
    monkeypatch.setattr(mw, "cgroup_dir", lambda controller, sandbox_id: tmp_path)
    stdin, writer = mw.wake_pipe()
    os.close(stdin)
    assert mw.MemoryWake().arm("sb-test", writer) is False
    assert (tmp_path / "memory.oom_control").read_text() == "0"


def test_a_guest_that_reads_its_records_or_logs_is_seen_to_run(tmp_path: Path) -> None:
    """The wall's look (session 33): the guest ran if it read every record written by the last
    look, or wrote to its stderr since; a stopped gVisor kernel does neither. Real pipe, real
    file: the pipe's unread bytes are the kernel's count (FIONREAD on the write end)."""
    stdin, writer = mw.wake_pipe()
    err = os.open(tmp_path / "stderr", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        a = mw._Armed("sb-test", writer=writer, event=-1, usage=-1, limit=0, step=0, stderr=err)
        a.written += os.write(writer, b"r" * mw.RECORD.size)  # the record when the wait began
        mark = mw._mark(a)
        assert not mw.guest_ran(mark, mw._progress(a))  # unread, nothing logged: stopped
        os.read(stdin, 10)
        assert not mw.guest_ran(mark, mw._progress(a))  # part of it: no proof
        os.read(stdin, mw.RECORD.size)
        assert mw.guest_ran(mark, mw._progress(a))  # all of it: it ran
        a.written += os.write(writer, b"r" * mw.RECORD.size)  # the next look's record
        mark = mw._mark(a)
        assert not mw.guest_ran(mark, mw._progress(a))
        os.write(err, b"warren-guest[1]: out of memory: killed pid 7\n")  # busy killing, unread
        assert mw.guest_ran(mark, mw._progress(a))
    finally:
        for fd in (stdin, writer, err):
            os.close(fd)


def test_bytes_an_agent_before_left_unread_are_no_proof() -> None:
    """A restarted agent's count starts at 0 while an earlier agent's records still wait: the
    guest must read those too before a wait is lengthened."""
    stdin, writer = mw.wake_pipe()
    try:
        os.write(writer, b"o" * 4 * mw.RECORD.size)  # the earlier agent's
        a = mw._Armed("sb-test", writer=writer, event=-1, usage=-1, limit=0, step=0, stderr=-1)
        a.written += os.write(writer, b"r" * mw.RECORD.size)
        mark = mw._mark(a)
        os.read(stdin, mw.RECORD.size)  # the oldest record only
        assert not mw.guest_ran(mark, mw._progress(a))
        os.read(stdin, 4 * mw.RECORD.size)
        assert mw.guest_ran(mark, mw._progress(a))
    finally:
        os.close(stdin)
        os.close(writer)


def test_nothing_written_proves_nothing() -> None:
    assert not mw.guest_ran((0, 0), (0, 0))
