"""E2B's file metadata and symlink targets in the guest's file operations
(guest_agent/xattrs.py, docs/e2b.md §3.2): a write sets ``user.e2b.*`` on the new file, entries
report them within bounds, a bad map is refused before any byte is written, a symlink reports
what it resolves to."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from warren.agent.guest_client import GuestClient, GuestError


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_write_sets_metadata_and_entries_report_it(client: GuestClient, tmp_path: Path) -> None:
    f = tmp_path / "m.txt"
    await client.write_file(str(f), _one(b"x"), metadata={"author": "ada", "run.id": "7 b"})
    assert os.getxattr(f, "user.e2b.author") == b"ada"
    assert (await client.stat(str(f))).metadata == {"author": "ada", "run.id": "7 b"}
    page = await client.list_dir(str(tmp_path))
    assert [e.metadata for e in page.entries] == [{"author": "ada", "run.id": "7 b"}]
    await client.write_file(str(f), _one(b"y"))  # replaced: the new file has none
    assert (await client.stat(str(f))).metadata == {}


async def test_foreign_and_malformed_attributes_are_left_out(client: GuestClient, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    os.setxattr(f, "user.other", b"not e2b")
    os.setxattr(f, "user.e2b.bin", b"\xff")
    os.setxattr(f, "user.e2b.ok", b"fine")
    for i in range(40):
        os.setxattr(f, f"user.e2b.k{i:02}", b"1")
    md = (await client.stat(str(f))).metadata
    assert md["ok"] == "fine" and "bin" not in md and "other" not in md
    assert len(md) == 32


@pytest.mark.parametrize(
    "metadata",
    [
        {"Upper": "v"},
        {"": "v"},
        {"k" * 129: "v"},
        {"k": "v" * 4097},
        {"k": "\u00e9"},
        {f"k{i}": "v" for i in range(33)},
    ],
)
async def test_bad_metadata_is_refused(client: GuestClient, tmp_path: Path, metadata: dict[str, str]) -> None:
    with pytest.raises(GuestError) as ei:
        await client.write_file(str(tmp_path / "bad"), _one(b"x"), metadata=metadata)
    assert ei.value.kind == "invalid_argument"
    assert os.listdir(tmp_path) == []


async def test_symlinks_report_their_target(client: GuestClient, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    os.chmod(tmp_path / "d" / "f", 0o600)
    os.symlink("d/f", tmp_path / "to-file")
    os.symlink("d", tmp_path / "to-dir")
    os.symlink("nowhere", tmp_path / "dangling")
    to_file = await client.stat(str(tmp_path / "to-file"))
    assert (to_file.type, to_file.target_type, to_file.target_mode) == ("symlink", "file", 0o600)
    assert to_file.resolved_target == str(tmp_path / "d" / "f") and to_file.symlink_target == "d/f"
    to_dir = await client.stat(str(tmp_path / "to-dir"))
    assert (to_dir.target_type, to_dir.resolved_target) == ("dir", str(tmp_path / "d"))
    dangling = await client.stat(str(tmp_path / "dangling"))
    assert (dangling.target_type, dangling.resolved_target) == ("", str(tmp_path / "dangling"))
    plain = await client.stat(str(tmp_path / "d" / "f"))
    assert (plain.target_type, plain.resolved_target) == ("", "")
