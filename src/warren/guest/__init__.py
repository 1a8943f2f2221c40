"""The in-sandbox guest agent (stdlib only) and what the host needs to run it.

This directory is bind-mounted read-only into every sandbox at ``/.warren/guest`` and started
as ``python3 -I -S /.warren/guest/guest.py --socket /run/warren/guest.sock``; ``guest.py``
puts this directory on ``sys.path`` and imports the ``guest_agent`` package from it. Nothing
in it may import ``warren`` or third-party code: the sandbox has only the template's Python.
This ``__init__`` is host-side only; the guest never imports it.
"""

from __future__ import annotations

import py_compile
from pathlib import Path

GUEST_DIR = Path(__file__).resolve().parent
GUEST_SCRIPT = GUEST_DIR / "guest.py"
GUEST_PACKAGE = GUEST_DIR / "guest_agent"


def guest_modules() -> list[Path]:
    """The source files the guest imports (every module of its package)."""
    return sorted(GUEST_PACKAGE.glob("*.py"))


def precompile() -> bool:
    """Write ``__pycache__/<module>.cpython-3XX.pyc`` next to each guest module.

    The sandbox sees this directory read-only and so cannot cache its own bytecode; without a
    ready .pyc every guest start compiles the agent again, which doubles its startup time. The
    .pyc is keyed by the interpreter version (the template's Python must match the host's minor
    version to use it; otherwise it silently compiles, as before). Returns False when the
    directory is not writable (e.g. an installed package without bytecode); that only costs
    startup time.
    """
    try:
        for module in guest_modules():
            py_compile.compile(str(module), doraise=True)
    except (OSError, py_compile.PyCompileError):
        return False
    return True
