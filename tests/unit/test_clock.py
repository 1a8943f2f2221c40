"""The one clock: tests move it instead of sleeping."""

from __future__ import annotations

import time
from datetime import UTC, timedelta
from pathlib import Path
from types import ModuleType

from warren import clock


def test_now_is_aware_utc() -> None:
    n = clock.now()
    assert n.tzinfo is not None and n.utcoffset() == timedelta(0)
    assert abs(n.timestamp() - time.time()) < 5
    assert n.tzinfo == UTC or n.utcoffset() == timedelta(0)


def test_advance_moves_every_reading(fake_clock: ModuleType) -> None:
    before_now, before_mono, before_s = fake_clock.now(), fake_clock.monotonic(), fake_clock.time_s()
    fake_clock.advance(91)
    assert fake_clock.now() - before_now >= timedelta(seconds=91)
    assert fake_clock.now() - before_now < timedelta(seconds=95)
    assert 91 <= fake_clock.monotonic() - before_mono < 95
    assert 91 <= fake_clock.time_s() - before_s < 95
    fake_clock.advance(3600)
    assert fake_clock.now() - before_now >= timedelta(seconds=3691)


def test_fake_clock_starts_clean(fake_clock: ModuleType) -> None:
    # The previous test moved time by more than an hour; the fixture reset it.
    assert abs(fake_clock.now().timestamp() - time.time()) < 5


def test_reset() -> None:
    clock.advance(100)
    clock.reset()
    assert abs(clock.time_s() - time.time()) < 5


def test_offset_file_moves_time_of_a_running_process(tmp_path: Path, fake_clock: ModuleType) -> None:
    f = tmp_path / "offset"
    fake_clock.set_offset_file(str(f))
    try:
        base = time.time()
        assert abs(fake_clock.time_s() - base) < 5  # a missing file means no offset
        f.write_text("7200")
        assert 7195 < fake_clock.time_s() - base < 7205
        f.write_text("garbage")
        assert abs(fake_clock.time_s() - base) < 5  # unreadable offset is ignored, not fatal
    finally:
        fake_clock.set_offset_file(None)
