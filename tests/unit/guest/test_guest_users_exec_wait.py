"""``users.await_exec``: the guest waits for a child that became a user to exec, but not for
ever (a user's own processes may stop that child before its execve)."""

from __future__ import annotations

import os
import signal

import pytest

from warren.guest.guest_agent import users
from warren.guest.guest_agent.protocol import GuestFail


def _child(stop: bool) -> tuple[int, int]:
    """A child holding the write end of a close-on-exec pipe: stopped (it never execs nor
    reports), or exec'ing ``true``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.close(r)
            if stop:
                os.kill(os.getpid(), signal.SIGSTOP)
            os.execv("/bin/true", ["true"])
        finally:
            os._exit(127)
    os.close(w)
    return pid, r


def test_a_child_that_never_execs_is_killed_at_the_bound() -> None:
    pid, r = _child(stop=True)
    try:
        with pytest.raises(GuestFail) as ei:
            users.await_exec(pid, r, timeout=0.3)
    finally:
        os.close(r)
    assert ei.value.kind == "timeout"
    # Killed and reaped: the pid is no longer ours to wait for.
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_a_child_that_execs_is_not_waited_for_past_its_exec() -> None:
    pid, r = _child(stop=False)
    try:
        assert users.await_exec(pid, r, timeout=30.0) == b""
    finally:
        os.close(r)
        os.waitpid(pid, 0)
