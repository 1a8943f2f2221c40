"""The harness's long-lived children end with the test process that started them, however it
ends: a SIGINT'd xdist run, a CI timeout, a SIGKILLed worker. Left behind (session 29: five
agents, their helpers and a CP after one ^C), they held ports, sandboxes, network slots, mounts
and memory, and confused the next run.

* An agent follows its parent itself: :data:`AGENT_ENV` in its environment
  (``warren/agent/entry.py``: ``WARREN_AGENT_EXIT_WITH_PARENT``, off in production) has it
  destroy every sandbox and stop, the Terminate RPC's path, once this process has ended. A
  SIGTERM would keep its sandboxes (a production restart's rule) and a SIGKILL its sandboxes
  and pooled network slots; its helpers (``ns_maker``, ``oci_spawner``, ``convert_server``) end
  when it does either way.
* Anything else, the CP here, by :func:`popen`: the kernel's parent-death signal, set by a
  small launcher that then execs the command (same pid). Not a ``preexec_fn``: that forks the
  test process itself, and runs its fork handlers (gRPC's; docs/architecture.md §6). The
  signal follows the parent *thread* (prctl(2)), and tests start processes from worker threads
  (``asyncio.to_thread``) that end before the process does: every start runs on one thread of
  this module's, which lives as long as the process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

AGENT_ENV = "WARREN_AGENT_EXIT_WITH_PARENT"


def agent_env() -> dict[str, str]:
    """The environment entry that makes an agent started by this process follow it."""
    return {AGENT_ENV: str(os.getpid())}


# argv: the signal, the parent's pid, then the command. A parent gone before the signal was
# armed (this process already reparented) ends it at once, before its command runs.
_LAUNCH = (
    "import ctypes, os, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(1, int(sys.argv[1]), 0, 0, 0) != 0:\n"
    "    sys.exit('prctl(PR_SET_PDEATHSIG) failed')\n"
    "if os.getppid() != int(sys.argv[2]):\n"
    "    sys.exit('the parent is gone')\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)

# The thread every start runs on: one that never ends before the process (see above).
_starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="harness-tether")


def popen(argv: list[str], *, death_signal: int = signal.SIGKILL, **kw: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **kw)`` whose process gets ``death_signal`` when this process
    ends."""
    launch = [sys.executable, "-I", "-S", "-c", _LAUNCH, str(int(death_signal)), str(os.getpid())]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([*launch, *argv], **kw)

    return _starter.submit(start).result()
