"""The child process `extract_layer` runs for a tar on disk: `extract_here`, niced and with a CPU
budget of its own (RLIMIT_CPU), so a tenant's layer spends its CPU below the agent's RPCs and
the sandboxes, outside the agent's GIL, and at most so much of it.

    python -m warren.layers.extract_child TAR DEST UID_BASE MAX_BYTES CPU_SECONDS NICE

stdout: `{"stats": {...}}` or `{"refused": "<the LayerError's message>"}` (exit 0); anything
else is a failure of the extraction (exit 1, a traceback on stderr). Killed by SIGXCPU at
CPU_SECONDS. It dies with the thread of the agent that started it (PR_SET_PDEATHSIG), so an
agent killed mid-extraction leaves no writer in the `.tmp-` dir its restart removes.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
from pathlib import Path

from warren.layers.extract import extract_here, stats_json
from warren.layers.hashing import LayerError

PR_SET_PDEATHSIG = 1
HARD_LIMIT_AFTER_S = 5  # SIGXCPU at the soft limit ends it; SIGKILL if it did not


def _bound(cpu_seconds: int, nice: int) -> None:
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # the agent went before the line above
        sys.exit(1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + HARD_LIMIT_AFTER_S))
    os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))  # never up


def main(argv: list[str]) -> int:
    tar, dest, uid_base, max_bytes, cpu_seconds, nice = argv
    _bound(int(cpu_seconds), int(nice))
    try:
        stats = extract_here(Path(tar), Path(dest), uid_base=int(uid_base), max_bytes=int(max_bytes) or None)
    except LayerError as e:
        sys.stdout.buffer.write(json.dumps({"refused": str(e)}).encode())
        return 0
    sys.stdout.buffer.write(stats_json(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
