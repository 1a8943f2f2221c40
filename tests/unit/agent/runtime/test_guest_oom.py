"""guest_oom.able: CAP_SYS_RESOURCE read from a status file's effective set."""

from __future__ import annotations

from pathlib import Path

from warren.agent.runtime import guest_oom


def status(tmp_path: Path, cap_eff: str) -> Path:
    p = tmp_path / "status"
    p.write_text(f"Name:\tx\nCapPrm:\t000001ffffffffff\nCapEff:\t{cap_eff}\nCapBnd:\t000001ffffffffff\n")
    return p


def test_full_root_is_able(tmp_path: Path) -> None:
    assert guest_oom.able(status(tmp_path, "000001ffffffffff"))


def test_root_without_cap_sys_resource_is_not(tmp_path: Path) -> None:
    # What the reference test machines' root holds: every capability but 24.
    assert not guest_oom.able(status(tmp_path, "000001fffeffffff"))


def test_no_capability_line_is_not(tmp_path: Path) -> None:
    p = tmp_path / "status"
    p.write_text("Name:\tx\n")
    assert not guest_oom.able(p)
