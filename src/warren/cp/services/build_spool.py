"""The build spool's leftovers (session 26): ``<home>/build-spool`` holds a build's COPY staging
layers (``.staging-*``, services/template_build_run.py) and their children's requests
(``.copy-*``, services/context_child.py) while the build runs; the build removes them when it
ends. A CP killed outright (SIGKILL, the OOM killer, the machine) leaves them there for ever:
up to a layer's limit each (``WARREN_BUILD_MAX_LAYER_MB``).

:func:`sweep` removes those older than any build may still be using: a build runs at most
``WARREN_BUILD_TIMEOUT_S`` (``asyncio.timeout`` around its work) and writes its files during it,
so a live build's file was last written less than that ago. :data:`MARGIN_S` more covers the
build's own clean-up after its limit and clocks a little apart. So it is safe with replicas that
share the spool (a shared CP home): another replica's running build's files are younger than
that, whichever replica sweeps. The build runner's sweep calls it on every replica, at its start
and then with each pass (services/template_builds.py).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from warren.config import Settings

log = logging.getLogger("warren.builds")

PREFIXES = (".staging-", ".copy-")
MARGIN_S = 600


def spool_dir(settings: Settings) -> Path:
    return settings.home / "build-spool"


def max_age_s(settings: Settings) -> float:
    """The age past which no build can still be using a file of the spool."""
    return settings.build_timeout_s + MARGIN_S


def sweep(spool: Path, max_age: float, now: float | None = None) -> int:
    """Remove the spool's staging and request files last written more than ``max_age`` seconds
    before ``now`` (the wall clock: file times are); how many."""
    cutoff = (time.time() if now is None else now) - max_age
    removed = 0
    try:
        entries = list(os.scandir(spool))
    except FileNotFoundError:
        return 0  # no build has run here yet
    for entry in entries:
        if not entry.name.startswith(PREFIXES):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if entry.is_file(follow_symlinks=False) and st.st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue  # its build (or another replica's sweep) removed it meanwhile
    if removed:
        log.warning("event=build_spool_swept removed=%d spool=%s", removed, spool)
    return removed
