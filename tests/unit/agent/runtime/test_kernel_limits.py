"""runtime/kernel_limits.py: the host-wide limits every sandbox shares are lifted, never lowered."""

from __future__ import annotations

from pathlib import Path

from warren.agent.runtime import kernel_limits


def _files(tmp_path: Path, epoll: int, pipes: int, files: int, pids: int, ptys: int) -> dict[str, str]:
    out = {}
    values = (("epoll", epoll), ("pipes", pipes), ("files", files), ("pids", pids), ("ptys", ptys))
    for name, value in values:
        (tmp_path / name).write_text(f"{value}\n")
        out[name] = str(tmp_path / name)
    return out


def test_low_limits_are_lifted(tmp_path: Path) -> None:
    paths = _files(tmp_path, 5491333, 16384, 2466097, 32768, 4096)
    assert kernel_limits.lift_shared_kernel_limits(paths) == list(paths.values())
    beyond = kernel_limits.host_memory_bytes() // kernel_limits.SMALLEST_OBJECT
    got = {name: int(Path(p).read_text()) for name, p in paths.items()}
    assert got == {"epoll": beyond, "pipes": 0, "files": beyond, "pids": 4194304, "ptys": 1 << 20}


def test_higher_limits_are_kept(tmp_path: Path) -> None:
    paths = _files(tmp_path, 1 << 62, 0, (1 << 63) - 1, 4194304, 1 << 20)
    before = {p: Path(p).read_text() for p in paths.values()}
    assert kernel_limits.lift_shared_kernel_limits(paths) == []
    assert {p: Path(p).read_text() for p in paths.values()} == before


def test_a_missing_or_unreadable_file_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "junk").write_text("not a number")
    paths = {
        "epoll": str(tmp_path / "none"),
        "pipes": str(tmp_path / "junk"),
        "files": "",
        "pids": "",
        "ptys": "",
    }
    assert kernel_limits.lift_shared_kernel_limits(paths) == []
