"""The build spool's leftovers (session 26). ``<home>/build-spool`` (:func:`spool_dir`) holds,
each only while the work that made it runs (it removes them when it ends):

- a build's COPY staging layers (``.staging-*``, services/template_build_run.py) and their
  children's requests (``.copy-*``, services/context_child.py): up to a layer's limit each;
- an uploaded build context or image (``.upload-*``, template_context.receive, from
  api/templates.py), kept by the build or the import that follows: up to
  ``WARREN_BUILD_MAX_CONTEXT_MB`` / ``WARREN_IMPORT_MAX_IMAGE_MB``;
- an import's work directory (``.import-*``, services/template_import.py): the image's layers.

A CP killed outright (SIGKILL, the OOM killer, the machine) leaves them there for ever.
:func:`sweep` removes those older than any live work may still be using, by their last write
(a directory: its own or its entries' newest). Each age is a bound on how long a live one goes
unwritten, from the limits that end its work (:func:`rules`), plus :data:`MARGIN_S` for its own
clean-up after the limit and clocks a little apart. So it is safe with replicas that share the
spool (a shared CP home, with the same settings): another replica's live files are younger,
whichever replica sweeps. The build runner's sweep calls it on every replica, at its start and
then with each pass (services/template_builds.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from warren.config import Settings

log = logging.getLogger("warren.builds")

STAGING_PREFIX = ".staging-"  # a COPY step's staging layer (services/template_build_run.py)
COPY_PREFIX = ".copy-"  # its child's request (services/context_child.py)
STAGING_PREFIXES = (STAGING_PREFIX, COPY_PREFIX)
UPLOAD_PREFIX = ".upload-"
IMPORT_PREFIX = ".import-"
MARGIN_S = 600
KiB = 1024
MiB = 1024 * 1024
# The multipart form around an uploaded file (api/templates.py refuses a body past its file's cap
# plus this, 413): a form's text fields (8 names at most, a build's spec of up to 256 KiB), their
# part headers (python-multipart: 10 of 8 KiB a part at most) and boundaries come to under 3 MiB.
FORM_ENVELOPE = 4 * MiB


@dataclass(frozen=True)
class Rule:
    prefixes: tuple[str, ...]
    max_age_s: float
    directory: bool  # the CP makes a directory of that name (else a regular file)


def spool_dir(settings: Settings) -> Path:
    return settings.home / "build-spool"


def max_age_s(settings: Settings) -> float:
    """The age past which no build can still be using a staging or request file: a build runs at
    most ``WARREN_BUILD_TIMEOUT_S`` (``asyncio.timeout`` around its work) and writes them in it."""
    return settings.build_timeout_s + MARGIN_S


def upload_s(settings: Settings) -> float:
    """How long an upload can still be written: the HTTP front's pace (cp/body_cap.py) lets it
    keep the server waiting ``WARREN_BODY_READ_TIMEOUT_S`` plus one second per
    ``WARREN_BODY_MIN_UPLOAD_RATE_KIB_S`` KiB received, and the route takes at most the larger
    cap plus the form's envelope (api/templates.py). With the defaults: 30 s + (8192 MiB + 4 MiB)
    / 16 KiB/s = 524 574 s, 6.1 days (512 MiB of context alone: 9.2 hours)."""
    cap = max(settings.build_max_context_mb, settings.import_max_image_mb) * MiB + FORM_ENVELOPE
    return settings.body_read_timeout_s + cap / (settings.body_min_upload_rate_kib_s * KiB)


def rules(settings: Settings) -> list[Rule]:
    """The spool's names and the age past which none is live. An upload is written while it is
    read, then kept unwritten by its build (``WARREN_BUILD_TIMEOUT_S``) or its import
    (``WARREN_IMPORT_TIMEOUT_S``: its turn, read and store, ``asyncio.timeout`` around them); an
    import's directory is made after its upload, for that work."""
    after_upload = max(settings.build_timeout_s, settings.import_timeout_s)
    return [
        Rule(STAGING_PREFIXES, max_age_s(settings), False),
        Rule((UPLOAD_PREFIX,), upload_s(settings) + after_upload + MARGIN_S, False),
        Rule((IMPORT_PREFIX,), settings.import_timeout_s + MARGIN_S, True),
    ]


def _newest(path: str, st: os.stat_result) -> float:
    """A directory's last write: its own, or its entries' (a layer being written), unfollowed."""
    newest = st.st_mtime
    with os.scandir(path) as entries:
        for entry in entries:
            try:
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def _stale(entry: os.DirEntry[str], rule: Rule, cutoff: float) -> bool:
    st = entry.stat(follow_symlinks=False)  # an lstat: a link of that name is not the CP's
    if rule.directory:
        return stat.S_ISDIR(st.st_mode) and _newest(entry.path, st) < cutoff
    return stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff


def sweep(spool: Path, rules: list[Rule], now: float | None = None) -> int:
    """Remove the spool's entries that ``rules`` name and that were last written longer ago
    than their rule's age before ``now`` (the wall clock: file times are); how many. A
    directory goes whole (``shutil.rmtree``: it follows no link, and refuses a link swapped in)."""
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(spool))
    except FileNotFoundError:
        return 0  # no build or import has run here yet
    for entry in entries:
        rule = next((r for r in rules if entry.name.startswith(r.prefixes)), None)
        if rule is None:
            continue
        try:
            if not _stale(entry, rule, now - rule.max_age_s):
                continue
            if rule.directory:
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:
            continue  # its work (or another replica's sweep) removed it meanwhile
        except OSError as e:  # one entry that cannot go does not keep the others
            log.warning("event=build_spool_sweep_failed entry=%s error=%s", entry.name, e)
    if removed:
        log.warning("event=build_spool_swept removed=%d spool=%s", removed, spool)
    return removed


def sweep_spool(settings: Settings, now: float | None = None) -> int:
    """:func:`sweep` of this CP's spool with its settings' ages."""
    return sweep(spool_dir(settings), rules(settings), now)
