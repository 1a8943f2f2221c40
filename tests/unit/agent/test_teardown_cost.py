"""Session 28 (a sandbox's create and destroy CPU): the cheaper slot claim and mount scan keep
what they replaced."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock

from warren.agent.network import NetworkSlots
from warren.agent.proc import mounts_under


def test_a_new_slot_is_claimed_past_other_agents_with_one_file_written(tmp_path: Path) -> None:
    """Slots 0-39 held by another agent: the first free one is claimed whole (owner, holder,
    CIDRs at the first moment anyone can read it), the others' claims are untouched, one
    temporary file was written (not one per slot tried) and none is left."""
    other = NetworkSlots(owner="/data/agent-y", claims_dir=tmp_path)
    for i in range(40):
        assert other._claim(i, f"sb-{i}")
    mine = NetworkSlots(owner="/data/agent-x", claims_dir=tmp_path)
    made: list[str] = []
    seen: list[str] = []
    real_write, real_link = Path.write_text, os.link

    def write(self: Path, text: str, *a: Any, **kw: Any) -> int:
        made.append(self.name)
        return real_write(self, text, *a, **kw)

    def link(src: Any, dst: Any) -> None:
        real_link(src, dst)
        seen.append(Path(dst).read_text())

    with mock.patch.object(Path, "write_text", write), mock.patch("os.link", link):
        assert mine._claim_first(range(100), "sb-a", ["10.0.0.0/8"]) == 40
        assert mine._claim_first(range(41), "sb-b") is None  # all taken: nothing claimed
    assert len(made) == 2  # one per call
    assert seen == ["/data/agent-x\nsb-a\n10.0.0.0/8\n"]
    assert all((tmp_path / str(i)).read_text() == f"/data/agent-y\nsb-{i}\n\n" for i in range(40))
    assert sorted(int(p.name) for p in tmp_path.iterdir()) == list(range(41))  # no temporary left


def test_mounts_under_finds_what_a_scan_of_every_line_finds(tmp_path: Path) -> None:
    """Every prefix of every mount point of this host's table (read once, with mount points
    holding spaces added), and paths beside them: the same mount points as splitting each
    mountinfo line, deepest first."""
    table = Path("/proc/self/mountinfo").read_text() + (
        "901 1 0:99 / /srv/a\\040b rw - tmpfs tmpfs rw\n"
        "902 901 0:98 / /srv/a\\040b/c\\040d rw - tmpfs tmpfs rw\n"
        "903 1 0:97 / /srv/a rw - tmpfs tmpfs rw\n"
    )
    snapshot = tmp_path / "mountinfo"
    snapshot.write_text(table)

    def every_line(prefix: Path) -> list[str]:
        out = []
        for line in table.splitlines():
            mp = line.split()[4].replace("\\040", " ")
            if mp == str(prefix) or mp.startswith(str(prefix) + "/"):
                out.append(mp)
        return sorted(out, key=len, reverse=True)

    points = [line.split()[4].replace("\\040", " ") for line in table.splitlines()]
    prefixes = {"/".join(mp.split("/")[:i]) or "/" for mp in points for i in range(1, mp.count("/") + 2)}
    prefixes |= {p + "x" for p in list(prefixes)} | {"/no such dir", "/srv/a b/c"}
    assert len(prefixes) > 10
    real_open = open
    with mock.patch("warren.agent.proc.open", create=True, new=lambda *a, **kw: real_open(snapshot)):
        assert mounts_under(Path("/srv/a b")) == ["/srv/a b/c d", "/srv/a b"]
        for p in sorted(prefixes):
            assert mounts_under(Path(p)) == every_line(Path(p)), p
