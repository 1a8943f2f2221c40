"""A child left by its parent mid-work: a control plane killed outright, for the children that
read a tenant's input (``warren/parent_death.py``: they must die with it).

The parent stops the child (SIGSTOP) before it exits, so without the death signal the child
stays, stopped, whatever the machine's load: the check cannot pass by the child finishing."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

DEATH_WAIT_S = 20  # the kernel's SIGKILL comes at once; this is slack for a loaded machine


def state(pid: int) -> str:
    """The process's state letter (``/proc/<pid>/stat``), "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


def _parent_script(argv: list[str], started: Path, min_size: int) -> str:
    return (
        "import os, signal, subprocess, sys, time\n"
        f"argv = [a.replace('{{pid}}', str(os.getpid())) for a in {argv!r}]\n"
        "p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        f"while not os.path.exists({str(started)!r}) or os.path.getsize({str(started)!r}) < {min_size}:\n"
        "    time.sleep(0.001)\n"
        "os.kill(p.pid, signal.SIGSTOP)\n"
        "while open(f'/proc/{p.pid}/stat').read().rsplit(')', 1)[1].split()[0] != 'T':\n"
        "    time.sleep(0.001)\n"
        "print(p.pid, flush=True)\n"
        "os._exit(0)\n"
    )


@contextlib.contextmanager
def orphaned(module: str, args: list[str], started: Path, min_size: int = 0) -> Iterator[int]:
    """``python -m module *args`` (``{pid}`` in an argument: its parent's pid) under a parent
    that waits for ``started`` to exist with at least ``min_size`` bytes, stops the child and
    exits: the child's pid, killed afterwards if it is still there."""
    argv = [sys.executable, "-m", module, *args]
    script = _parent_script(argv, started, min_size)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, timeout=60)
    child = int(done.stdout)
    try:
        yield child
    finally:
        if state(child) not in ("", "Z"):
            os.kill(child, signal.SIGKILL)


def ends(pid: int) -> bool:
    """Whether ``pid`` is gone (or a zombie) within :data:`DEATH_WAIT_S`."""
    deadline = time.monotonic() + DEATH_WAIT_S
    while state(pid) not in ("", "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    return state(pid) in ("", "Z")
