"""host_counts: the shared per-user counts are raised, never lowered, and a sandbox takes no
POSIX message-queue bytes from a count the agent could not lift."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from warren.agent import host_counts


def test_a_sysctl_is_raised_and_never_lowered(tmp_path: Path) -> None:
    low, high = tmp_path / "low", tmp_path / "high"
    low.write_text("128\n")
    high.write_text(f"{host_counts.UNLIMITED_COUNT}\n")
    host_counts.lift_shared_counts((low, high))
    assert int(low.read_text()) == host_counts.UNLIMITED_COUNT
    assert int(high.read_text()) == host_counts.UNLIMITED_COUNT


def test_an_unwritable_sysctl_is_logged_and_left(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    host_counts.lift_shared_counts((tmp_path / "missing",))
    assert "event=host_count_kept" in caplog.text


def test_message_queues_follow_the_agents_own_limit() -> None:
    lifted = resource.getrlimit(resource.RLIMIT_MSGQUEUE)[1] == resource.RLIM_INFINITY
    assert host_counts.sandbox_msgqueue_bytes("runc") == (None if lifted else 0)
    assert host_counts.sandbox_msgqueue_bytes("crun") == (None if lifted else 0)
    assert host_counts.sandbox_msgqueue_bytes("gvisor") is None  # its queues stay in its kernel
