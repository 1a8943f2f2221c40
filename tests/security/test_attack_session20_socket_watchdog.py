"""Session 20: one sandbox past its socket ceiling holds the agent's socket watchdog (v1).

The watchdog (runtime/socket_ceiling.py) read every runc/crun sandbox's socket counters and
killed past a ceiling in one thread, one sandbox after another: while it was at one sandbox's
kills no other sandbox was read. Each pass of its heaviest-first kills pins every process of
the sandbox's ``cmds`` and reads each one's descriptors (``/proc/<pid>/fd``), so a pass costs
what the tenant makes it. As the attacker runs it (tenant A's key; scripts inside A's sandbox as
``nobody``): 800 ``sleep`` processes inherit ~4000 descriptors each (``/dev/null``, not sockets:
3.2 M links to read a pass), then one holder of 1900 unread loopback TCP pairs takes the
sandbox past its ceiling (session 18's shape). Once the watchdog is at A, tenant B's sandbox
goes past its own ceiling (one holder of 1000 pairs), while a second such sandbox of A's (crun's)
holds the watchdog too.

Before session 20 B's holder was killed only once the watchdog was done with A (the agent's log:
B's kill after A's first line; one pass over A took ~40 s on a loaded host, and B stayed past its
32 MiB ceiling, at 40 MiB, for 43 s with one hostile sandbox and 33 s with two). Now the tick
only reads; a sandbox past a ceiling is enforced by a worker of its own (at most 4 at once, one
per sandbox), and a pass stops at the 5 s an enforcement may take: B is back under within a
second, while A's enforcement is under way (its first line ~9 s after B started), and A is still
contained (all of its ``cmds`` killed once two enforcements in a row were spent).

On the worker's shared platform (``shared_platform``): the module sets nothing and adds or kills
no agent; the sandboxes, cgroups and log lines it reads are its own sandboxes' (the log from
where it stood when the test began: a shared agent's log is long).
"""

from __future__ import annotations

import re
import time

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_session18_socket_ceiling import HOLD, _cmds_comms, _start
from tests.security.test_attack_session18_socket_memory import _memcg, _tcp
from warren.agent.runtime.socket_ceiling import ceiling

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

MiB = 1 << 20
SPREAD = 800  # sleep processes a hostile sandbox holds, ~4000 descriptors each
HOSTILE_MB = 512  # room for them (~270 KiB a process)
A_PAIRS = 1900  # ~120 MiB charged against a 64 MiB ceiling
B_PAIRS = 1000  # ~64 MiB against 32
LOOKED_S = 2.0  # A past its ceiling this long before B starts: the watchdog (a tick 0.5 s) is at A
WAIT_S = 180.0

# argv: processes. Every descriptor up to RLIMIT_NOFILE is /dev/null, inherited by each sleep.
SPREADER = r"""
import os, resource, sys, time
null = os.open("/dev/null", os.O_RDONLY)
for fd in range(null + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0]):
    os.dup2(null, fd, inheritable=True)
for _ in range(int(sys.argv[1])):
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", "3600"])
time.sleep(3600)
"""


class AgentLog:
    """The agent's log from where it stood when made (the shared agent's is long, and the race
    below reads it 20 times a second)."""

    def __init__(self, platform: Platform) -> None:
        self.path = platform.agents[0].log_path
        self.start = self.path.stat().st_size

    def first(self, sid: str, events: str = r"socket_(?:memory|count)_\w+") -> int | None:
        """Where the log first has one of ``events`` for ``sid`` since (A's first: the watchdog
        is done with a pass of A's, or with A)."""
        with self.path.open("rb") as f:
            f.seek(self.start)
            text = f.read().decode(errors="replace")
        m = re.search(rf"event={events} sandbox={sid} ", text)
        return m.start() if m else None


def _until(what: str, ok: object) -> None:
    """A polling loop's bound: ``what`` did not come about within WAIT_S."""
    assert ok, f"never: {what}"


def _hold_the_watchdog(platform: Platform, alice: Tenant, attackers: list[str]) -> None:
    """A's sandboxes: the spread, then the holder; until each is past its ceiling, LOOKED_S more."""
    for sid in attackers:
        _start(alice, sid, SPREADER, [str(SPREAD)], "nobody", "spread")
    began = time.monotonic()
    for sid in attackers:
        d = _memcg(platform, sid)
        while list(_cmds_comms(d).values()).count("sleep") < SPREAD:
            _until(f"{SPREAD} sleeps in {sid}", time.monotonic() - began < WAIT_S)
            time.sleep(0.2)
    for sid in attackers:
        _start(alice, sid, HOLD, ["1", str(A_PAIRS)], "nobody", "hold")
    for sid in attackers:
        d = _memcg(platform, sid)
        while _tcp(d, "usage_in_bytes") <= ceiling(_tcp(d, "limit_in_bytes")):
            _until(f"{sid} past its ceiling", time.monotonic() - began < WAIT_S)
            time.sleep(0.05)
    time.sleep(LOOKED_S)


def _race(
    platform: Platform, log: AgentLog, alice: Tenant, bob: Tenant, attackers: list[str], victim: str
) -> dict[str, float]:
    """Hold the watchdog with A's sandboxes, then take B's past its ceiling; sample until B is
    back under and every A has a line, then until every A is back under. The facts, printed."""
    _hold_the_watchdog(platform, alice, attackers)
    held = [log.first(sid) for sid in attackers]
    assert held == [None] * len(attackers), f"the watchdog was done with A before B began: {held}"
    b = _memcg(platform, victim)
    b_top = ceiling(_tcp(b, "limit_in_bytes"))
    _start(bob, victim, HOLD, ["1", str(B_PAIRS)], "nobody", "hold")
    began = time.monotonic()
    b_max, b_under_while_held, b_back, a_done = 0, False, 0.0, 0.0
    while True:
        usage = _tcp(b, "usage_in_bytes")
        b_max = max(b_max, usage)
        b_killed = log.first(victim, "socket_memory_kill") is not None
        a_lines = [log.first(sid) for sid in attackers]
        now = time.monotonic() - began
        if b_killed and usage <= b_top and not b_back:
            b_back = now
            b_under_while_held = a_lines.count(None) == len(attackers)
        if None not in a_lines and not a_done:
            a_done = now
        if b_back and a_done:
            break
        _until("B back under and a line of every A", now < WAIT_S)
        time.sleep(0.05)
    for sid in attackers:  # A is still contained
        d = _memcg(platform, sid)
        while _tcp(d, "usage_in_bytes") > ceiling(_tcp(d, "limit_in_bytes")):
            _until(f"{sid} back under its ceiling", time.monotonic() - began < WAIT_S)
            time.sleep(0.1)
    b_line = log.first(victim, "socket_memory_kill")
    a_first = [log.first(sid) for sid in attackers]
    got = {
        "b_ceiling": b_top,
        "b_max": b_max,
        "b_killed_first": b_line is not None and all(a is not None and b_line < a for a in a_first),
        "b_under_while_held": b_under_while_held,
        "b_back_s": b_back,
        "a_first_line_s": a_done,
    }
    print(
        f"{len(attackers)} hostile: B max {b_max / MiB:.1f} MiB (ceiling {b_top / MiB:.0f}), back under "
        f"after {b_back:.1f} s, A's first line after {a_done:.1f} s; B's kill line first: "
        f"{got['b_killed_first']}, B under while A held the watchdog: {b_under_while_held}"
    )
    return got


# Two hostile sandboxes, runc's and crun's: a variant with only the runc one (session 20's [1])
# was the same race with one worker less taken, and failed before only where this one does.
def test_a_sandbox_past_its_ceiling_is_brought_under_while_another_holds_the_watchdog(
    platform: Platform, alice: Tenant, bob: Tenant
) -> None:
    log = AgentLog(platform)
    attackers = [alice.create(memory_mb=HOSTILE_MB, runtime=rt) for rt in ("runc", "crun")]
    victim = bob.create(memory_mb=256, runtime="runc")
    try:
        got = _race(platform, log, alice, bob, attackers, victim)
        assert got["b_max"] > got["b_ceiling"], got  # B did go past its ceiling
        assert got["b_killed_first"], got  # before the watchdog was done with any A
        assert got["b_under_while_held"], got
        assert not _cmds_comms(_memcg(platform, victim)), "B's holder lives"
        assert bob.sh(victim, "echo alive").strip() == "alive"  # B's sandbox and guest live on
    finally:
        for sid in [*attackers, victim]:
            (alice if sid in attackers else bob).w("DELETE", f"/v1/sandboxes/{sid}")
