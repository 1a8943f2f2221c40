"""A child process of the control plane that dies with it (session 26): the CP's children that
read a tenant's input (layers/image_child.py, cp/services/context_child.py) call
:func:`die_with_parent` first.

Without it, a CP killed outright (SIGKILL, the OOM killer) left its children running for
nobody: an image read or a COPY step's staging writing to the CP's spool up to its limits (the
threads' work they replaced died with the process). ``PR_SET_PDEATHSIG`` has the kernel
SIGKILL the child when its parent dies; a parent that died before the call (the child was
reparented already) is caught by comparing ``getppid()`` with the CP's pid, which the CP passes
in the child's arguments.

Standard library only: each child imports this before its work, and it must stay cheap there.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None) -> None:
    """SIGKILL this process when its parent dies; at once if the parent is not ``parent`` any
    more (it died before this call). ``None``: no such check (a child run by hand)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)
