"""How the agent reads the kernel's cgroup ``favordynmods`` flag on its timer (favor_watch.favored):
the real kernel's side is tests/integration/agent/test_favordynmods_watch.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from warren.agent.favor_watch import favored

V1 = "30 24 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
# A mount point named like the separator: escaped (\040) in mountinfo, so never matched.
DECOY = r"40 24 0:50 / /mnt/x\040-\040cgroup2\040favordynmods rw - ext4 /dev/sda1 rw" + "\n"


def cgroup2(opts: str, where: str = "/sys/fs/cgroup/unified") -> str:
    return f"41 31 0:38 / {where} rw,relatime - cgroup2 cgroup2 {opts}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (V1 + cgroup2("rw,favordynmods"), True),
        (V1 + cgroup2("rw,nsdelegate,favordynmods,memory_recursiveprot"), True),
        (V1 + cgroup2("rw,nsdelegate"), False),
        (V1 + cgroup2("rw") + cgroup2("rw,favordynmods", "/tmp/scratch"), True),
        (V1 + DECOY, False),
        (V1, False),
        (cgroup2("rw,favordynmods").rstrip("\n"), True),  # the last line, unterminated
        ("", False),
    ],
)
def test_the_flag_is_read_from_the_cgroup2_lines(tmp_path: Path, text: str, expected: bool) -> None:
    p = tmp_path / "mountinfo"
    p.write_text(text)
    assert favored(p) is expected


def test_no_mountinfo_reads_as_not_set(tmp_path: Path) -> None:
    assert favored(tmp_path / "missing") is False


def test_it_agrees_with_the_kernel_here() -> None:
    from warren.agent.runtime import cmds_cgroup

    assert favored() == cmds_cgroup._favored()
