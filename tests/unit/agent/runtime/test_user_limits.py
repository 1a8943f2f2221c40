"""runtime/user_limits.py: the per-host-uid limits every sandbox shares are lifted, never lowered."""

from __future__ import annotations

from pathlib import Path

from warren.agent.runtime import user_limits


def _files(tmp_path: Path, epoll: int, pipes: int) -> tuple[Path, Path]:
    e, p = tmp_path / "max_user_watches", tmp_path / "pipe-user-pages-soft"
    e.write_text(f"{epoll}\n")
    p.write_text(f"{pipes}\n")
    return e, p


def test_low_limits_are_lifted(tmp_path: Path) -> None:
    e, p = _files(tmp_path, 5491333, 16384)
    assert user_limits.lift_shared_user_limits(str(e), str(p)) == [str(e), str(p)]
    assert int(e.read_text()) == user_limits.host_memory_bytes() // user_limits.EPOLL_ITEM_BYTES
    assert p.read_text() == "0"


def test_higher_limits_are_kept(tmp_path: Path) -> None:
    e, p = _files(tmp_path, 1 << 62, 0)
    assert user_limits.lift_shared_user_limits(str(e), str(p)) == []
    assert e.read_text() == f"{1 << 62}\n" and p.read_text() == "0\n"


def test_a_missing_or_unreadable_file_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "junk").write_text("not a number")
    assert user_limits.lift_shared_user_limits(str(tmp_path / "none"), str(tmp_path / "junk")) == []
