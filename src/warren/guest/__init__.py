"""The in-sandbox guest agent (stdlib only) and what the host needs to run it.

This directory is bind-mounted read-only into every sandbox at ``/.warren/guest`` and started
as ``python3 -I -S /.warren/guest/guest.py --socket /run/warren/guest.sock``. Nothing in it may
import ``warren`` or third-party code: the sandbox has only the template's Python.
This ``__init__`` is host-side only; the guest never imports it.
"""

from __future__ import annotations

import py_compile
from pathlib import Path

GUEST_DIR = Path(__file__).resolve().parent
GUEST_SCRIPT = GUEST_DIR / "guest.py"
GUEST_MODULE = GUEST_DIR / "guest_agent.py"


def precompile() -> bool:
    """Write ``__pycache__/guest_agent.cpython-3XX.pyc`` next to the source.

    The sandbox sees this directory read-only and so cannot cache its own bytecode; without a
    ready .pyc every guest start compiles the agent again, which doubles its startup time. The
    .pyc is keyed by the interpreter version (the template's Python must match the host's minor
    version to use it; otherwise it silently compiles, as before). Returns False when the
    directory is not writable (e.g. an installed package without bytecode); that only costs
    startup time.
    """
    try:
        py_compile.compile(str(GUEST_MODULE), doraise=True)
    except (OSError, py_compile.PyCompileError):
        return False
    return True
