"""The one clock. Every time rule reads it, so tests move time instead of sleeping.

``now()`` is an aware UTC datetime; ``monotonic()`` is for durations. A test (or a test-only
process started with ``WARREN_FAKE_CLOCK_FILE``) can shift both by an offset.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

_offset = timedelta(0)
# A process under test may be told to read its offset (in seconds) from a file, so a test can
# move the clock of a real agent or CP process without restarting it.
_offset_file = os.environ.get("WARREN_FAKE_CLOCK_FILE") or None


def _file_offset() -> timedelta:
    if not _offset_file:
        return timedelta(0)
    try:
        with open(_offset_file) as f:
            return timedelta(seconds=float(f.read().strip() or 0))
    except (OSError, ValueError):
        return timedelta(0)


def now() -> datetime:
    return datetime.now(UTC) + _offset + _file_offset()


def time_s() -> float:
    """Seconds since the epoch on the (possibly shifted) clock."""
    return now().timestamp()


def monotonic() -> float:
    return time.monotonic() + (_offset + _file_offset()).total_seconds()


def advance(seconds: float) -> None:
    """Move this process's clock forward (tests only)."""
    global _offset
    _offset += timedelta(seconds=seconds)


def reset() -> None:
    global _offset
    _offset = timedelta(0)


def set_offset_file(path: str | None) -> None:
    global _offset_file
    _offset_file = path
