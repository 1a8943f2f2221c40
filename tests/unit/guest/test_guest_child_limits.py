"""What a command's child (and a file operation's) sets first: RLIMIT_NPROC below pids.max, its score."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from warren.guest.guest_agent.process import OomScore


@pytest.mark.parametrize(("pids", "cap"), [(1024, 960), (4096, 4032), (64, 56), (16, 12), (0, 0)])
def test_the_cap_leaves_a_reserve(pids: int, cap: int) -> None:
    assert OomScore(pids).nproc == cap


def child_limit(score: OomScore) -> tuple[int, int]:
    """RLIMIT_NPROC in a forked child once ``in_child`` ran."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            score.in_child()
            os.write(w, repr(resource.getrlimit(resource.RLIMIT_NPROC)).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        got = os.read(r, 100).decode()
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    soft, hard = got.strip("()").split(",")
    return int(soft), int(hard)


def test_a_command_starts_at_the_cap() -> None:
    assert child_limit(OomScore(1024)) == (960, 960)


def test_no_cap_given_leaves_the_limit() -> None:
    assert child_limit(OomScore()) == resource.getrlimit(resource.RLIMIT_NPROC)


SCORE = """
from warren.guest.guest_agent import users
def score():
    with open("/proc/self/oom_score_adj") as f:
        return {"score": f.read().strip()}, []
print(users.run_as(users.lookup("root"), score))
"""


def test_a_file_operations_child_takes_the_commands_score() -> None:
    # It never execs and may wait a minute: a copy of the guest at the guest's own score. In an
    # interpreter of its own, as the guest is: run_as forks, and a pytest worker may hold gRPC's
    # threads (another module's channel), whose fork handlers broke the child (CI, session 19).
    res = subprocess.run([sys.executable, "-c", SCORE], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "({'score': '1000'}, [])", res
