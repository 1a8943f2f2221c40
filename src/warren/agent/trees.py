"""Removing and sizing directory trees a tenant may have made, whatever their depth.

Python 3.11's ``shutil.rmtree`` and ``os.walk`` recurse once per directory level, so a tree
deeper than the interpreter's recursion limit (about 1000 levels: a loop of ``mkdir d; cd d``
inside a sandbox, kept by a host-local snapshot) ends them with ``RecursionError``, half done
(session 12: a snapshot failed after its copy was in place, and deleted snapshots and
sandbox directories stayed on the host's disk for good). The common tree takes the in-process
walk; past that depth GNU ``rm`` and ``du`` (fts: no depth limit, never following a link, not
leaving the tree's filesystem) finish the job. Both block: callers run them in a thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path


def remove_tree(path: Path, *, ignore_errors: bool = False) -> None:
    """``shutil.rmtree(path)`` for any depth (links are removed, never followed)."""
    try:
        shutil.rmtree(path, ignore_errors=ignore_errors)
        return
    except RecursionError:
        pass
    done = subprocess.run(
        ["rm", "-rf", "--one-file-system", "--", str(path)], capture_output=True, check=False
    )
    if done.returncode != 0 and not ignore_errors:
        raise OSError(f"cannot remove {path}: {done.stderr.decode(errors='replace').strip()[:400]}")


def tree_size(path: Path) -> int:
    """Bytes of disk the files under ``path`` take (``st_blocks``; links not followed)."""
    total = 0
    try:
        for dirpath, _dirs, files in os.walk(path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
        return total
    except RecursionError:
        pass
    done = subprocess.run(
        ["du", "-s", "-B1", "--one-file-system", "--", str(path)], capture_output=True, check=False
    )
    with contextlib.suppress(ValueError, IndexError):
        return int(done.stdout.split()[0])
    return total
