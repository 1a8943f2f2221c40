"""A command whose start fails for memory makes room, as the kernel's OOM killer would, and
starts.

A new program's ``execve`` charges the sandbox's ``cmds`` memory cgroup inside the system call
(its argument pages, its new address space). With the kernel's OOM killer such a charge at the
limit kills the largest of the tenant's processes and goes on. A sandbox in an OOM storm has
that killer off (``oom_kill_disable``: the agent kills instead, when something waits at the
limit; agent/runtime/cmds_oom.py), and a charge inside a system call does not wait: it fails,
ENOMEM, or E2BIG where the argument pages were refused. Held at its limit by small processes
that fault nothing (a fork bomb of ``sleep``\\ s), such a sandbox refused every few commands
(session 21: 4 in 100; one was a 502 in the project's CI).

So the guest does what the kernel would have done: it kills the largest process (never itself,
PID 1; every command runs at the same ``oom_score_adj``, so the kernel's choice too), waits for
it to be gone, and tries again (users.ROOM_TRIES times at most).
"""

import errno
import resource
import time

from .memwatch import gone, kill_largest

VICTIM_WAIT = 0.5  # the longest to wait for a victim to be gone before the next try
POLL = 0.005
# The kernel's own E2BIG: a string over MAX_ARG_STRLEN (32 pages), or all of them (with a
# pointer each) over a quarter of the stack limit (2 MiB of the default 8). Within half of these
# bounds, an E2BIG is the memory's.
MAX_ARG_STRLEN = 32 * 4096
ARGS_ROOM = 1 << 20


def for_memory(err: int, argv: "list[str]", env: "dict[str, str]") -> bool:
    """Whether a start that failed with ``err`` was refused memory (not a real E2BIG)."""
    if err == errno.ENOMEM:
        return True
    if err != errno.E2BIG:
        return False
    strings = [*argv, *(f"{k}={v}" for k, v in env.items())]
    sizes = [len(s.encode("utf-8", "surrogatepass")) + 1 + 8 for s in strings]  # any lone surrogate
    return max(sizes, default=0) < MAX_ARG_STRLEN and sum(sizes) < min(ARGS_ROOM, _stack_limit() // 8)


def _stack_limit() -> int:
    """The stack limit a command inherits from the guest (its execve's bound is a quarter)."""
    soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
    return ARGS_ROOM * 8 if soft == resource.RLIM_INFINITY else soft


def make_room(what: str) -> bool:
    """Kill the largest process but the guest and wait (:data:`VICTIM_WAIT` at most) until it
    is gone; False when there is none to kill."""
    pid = kill_largest(f"starting {what}")
    deadline = time.monotonic() + VICTIM_WAIT
    while pid > 0 and not gone(pid) and time.monotonic() < deadline:
        time.sleep(POLL)
    return pid != 0
