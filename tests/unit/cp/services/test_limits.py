"""The per-sandbox maxima and quota rules of ``services/limits.py`` (no database)."""

from __future__ import annotations

import pytest

from warren.config import Settings
from warren.cp.services import limits
from warren.errors import InvalidRequest

LIM = limits.PlatformLimits.from_settings(Settings(jwt_secret="x" * 32))


def test_defaults_are_the_built_in_sizes_and_the_longest_timeout() -> None:
    shape = limits.sandbox_shape(LIM, vcpus=0, memory_mb=-1, disk_size_mb=0, timeout_sec=0)
    assert shape == limits.Shape(vcpus=1, memory_mb=512, disk_size_mb=5120, timeout_sec=86400)


def test_a_value_past_a_maximum_is_refused_not_clamped() -> None:
    with pytest.raises(InvalidRequest) as e:
        limits.sandbox_shape(LIM, vcpus=64, memory_mb=262144, disk_size_mb=0, timeout_sec=0)
    assert "vcpus 64 exceeds the platform maximum of 8" in e.value.message
    assert e.value.extra == {"maximum": 8}
    with pytest.raises(InvalidRequest, match="timeout_sec must be >= 0"):
        limits.sandbox_shape(LIM, vcpus=1, memory_mb=1, disk_size_mb=1, timeout_sec=-1)
    at_max = limits.sandbox_shape(LIM, vcpus=8, memory_mb=16384, disk_size_mb=20480, timeout_sec=86400)
    assert at_max == limits.Shape(8, 16384, 20480, 86400)


def test_admin_overrides_win_and_lowered_maxima_lower_the_defaults() -> None:
    lim = LIM.with_overrides(
        ["max_memory_mb", "max_disk_mb", "quota_vcpus", "from_a_newer_cp"], [256, 128, 7, 1]
    )
    assert (lim.max_memory_mb, lim.max_disk_mb, lim.quota_vcpus, lim.max_vcpus) == (256, 128, 7, 8)
    shape = limits.sandbox_shape(lim, vcpus=0, memory_mb=0, disk_size_mb=0, timeout_sec=0)
    assert (shape.memory_mb, shape.disk_size_mb) == (256, 128)
    assert LIM.with_overrides(None, None) is LIM


def test_a_team_quota_overrides_the_default_and_the_429_says_quota_and_usage() -> None:
    row = {"quota_sandboxes": 3, "quota_vcpus": None, "quota_memory_mb": None, "quota_snapshots": 0,
           "quota_snapshot_mb": None, "quota_store_mb": 64}  # fmt: skip
    q = limits.team_quotas(LIM, row)
    assert (q.sandboxes, q.vcpus, q.snapshots, q.snapshot_mb, q.store_mb) == (3, 40, 0, 20480, 64)
    # The store quota's default is its own (twice the snapshot default), not derived from it.
    assert limits.team_quotas(LIM, {**row, "quota_snapshot_mb": 0, "quota_store_mb": None}).store_mb == 40960
    err = limits.quota_exceeded("memory_mb", 1024, 768, 512)
    assert err.code == "quota_exceeded" and err.retry_after is None
    assert "memory quota is 1024 MiB, 768 MiB in use, this needs 512 MiB more" in err.message
    assert err.extra == {"quota": "memory_mb", "limit": 1024, "in_use": 768}
