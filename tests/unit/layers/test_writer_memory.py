"""What the layer writer holds while it walks a tenant's tree is bounded by the platform.

The names of the directories being walked (``MAX_LISTED_BYTES`` together) and the first names
of hard-linked files awaiting their other links (``MAX_LINKED_BYTES``) are what grows with the
tenant's tree; each name is held as bytes only (~len + 42 B), and past either bound the export
is refused (LayerError, a 400 at the agent) before the next name is held. Measured with
tracemalloc (Python's own allocations), so the bounds hold on any machine; the end-to-end
measurement of the agent's VmHWM is tests/security/test_attack_session10_export_memory.py.
"""

from __future__ import annotations

import os
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from warren.layers import LayerError, write_layer
from warren.layers import writer as writer_mod

NAME = 240  # bytes a name (the attack used 248, NAME_MAX is 255)
SLACK = 2 << 20  # the copy buffer (CHUNK) and the walk's own objects


class _Sink:
    """A file that keeps nothing: the tar's own bytes are not what is measured."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, b: bytes | bytearray | memoryview) -> int:
        self.size += len(b)
        return len(b)


def _fill(d: Path, n: int, stem: str = "x") -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        os.close(os.open(d / f"{stem * (NAME - 8)}{i:08d}", os.O_CREAT | os.O_WRONLY, 0o644))


def _peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_directory_costs_its_names_as_bytes_only(tmp_path: Path) -> None:
    files = 4000
    (tmp_path / "empty").mkdir()
    _fill(tmp_path / "upper" / "many", files)
    base = _peak(lambda: write_layer(tmp_path / "empty", _Sink(), uid_base=0))  # type: ignore[arg-type]
    peak = _peak(lambda: write_layer(tmp_path / "upper", _Sink(), uid_base=0))  # type: ignore[arg-type]
    # Measured: ~285 B a 240-byte name; the old walk (a str per name, then an fsencode key per
    # name for the sort) held ~595.
    assert peak - base <= files * (NAME + writer_mod.NAME_COST) + (256 << 10), f"{peak - base} B"


def test_a_directory_past_the_bound_is_refused_before_it_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_mod, "MAX_LISTED_BYTES", 256 << 10)
    _fill(tmp_path / "upper" / "many", 10_000)  # ~2.9 MiB of names

    def refused() -> None:
        with pytest.raises(LayerError, match=r"'many/': too many names in this directory"):
            write_layer(tmp_path / "upper", _Sink(), uid_base=0)  # type: ignore[arg-type]

    assert _peak(refused) <= (256 << 10) + SLACK


def test_the_bound_counts_a_directory_with_its_ancestors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each listing is held while its subdirectories are walked: one under the bound a level
    must not make a tree of them hold the tenant's inodes' worth of names."""
    per_dir = 600  # ~170 KiB of names a level
    monkeypatch.setattr(writer_mod, "MAX_LISTED_BYTES", 256 << 10)
    upper = tmp_path / "upper"
    _fill(upper / "a", per_dir)
    write_layer(upper, _Sink(), uid_base=0)  # type: ignore[arg-type]  # one level: under the bound
    _fill(upper / "a" / ("b" * 10), per_dir)  # walked while all of "a"'s names are held
    with pytest.raises(LayerError, match=r"'a/bbbbbbbbbb/': too many names"):
        write_layer(upper, _Sink(), uid_base=0)  # type: ignore[arg-type]
    _fill(upper / "c", per_dir)  # a sibling's listing is dropped before the next one's
    os.rename(upper / "a" / ("b" * 10), upper / "c2")
    meta = write_layer(upper, _Sink(), uid_base=0)  # type: ignore[arg-type]
    assert meta.size > 0


def test_hard_links_are_held_only_while_their_other_links_are_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_mod, "MAX_LINKED_BYTES", 64 << 10)
    upper = tmp_path / "upper"
    pairs = upper / "pairs"
    pairs.mkdir(parents=True)
    for i in range(2000):  # ~600 KiB of first names if they were all kept: each one's link follows it
        (pairs / f"{i:05d}a").write_bytes(b"x")
        os.link(pairs / f"{i:05d}a", pairs / f"{i:05d}b")
    out = tmp_path / "layer.tar"
    with open(out, "wb") as f:
        write_layer(upper, f, uid_base=0)
    with tarfile.open(out) as t:
        links = [m for m in t.getmembers() if m.islnk()]
    assert len(links) == 2000 and links[0].linkname == "pairs/00000a"

    far = upper / "zz"  # every first name waits for a link in a directory walked last
    far.mkdir()
    for i in range(2000):
        os.link(pairs / f"{i:05d}a", far / f"{i:05d}")
    with pytest.raises(LayerError, match=r"too many hard-linked files"):
        write_layer(upper, _Sink(), uid_base=0)  # type: ignore[arg-type]


def test_names_are_in_byte_order_whatever_their_encoding(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    raw = [b"\xff\xfe-not-utf8", b"Z", b"a", b"caf\xc3\xa9", b"\xe2\x82\xac", b"a\xe9b"]
    for n in raw:
        (upper / os.fsdecode(n)).write_bytes(n)
    os.symlink(os.fsdecode(b"\xfe-target"), upper / "link")
    out = tmp_path / "layer.tar"
    with open(out, "wb") as f:
        write_layer(upper, f, uid_base=0)
    with tarfile.open(out, encoding="utf-8", errors="surrogateescape") as t:
        members = {os.fsencode(m.name): m for m in t.getmembers()}
    assert list(members) == sorted([*raw, b"link"])
    assert os.fsencode(members[b"link"].linkname) == b"\xfe-target"
