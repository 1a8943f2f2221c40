"""The image tar a layer becomes for tar2sqfs (warren.layers.image_tar): the same refusals as
extraction, overlayfs' whiteouts and opaque dirs, mapped owners, and NeedsExtraction for what
only extraction can apply."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from tests.unit.layers.tarbuild import Entry, d, f, hard, raw_header, sym, tar_bytes
from warren.layers import LayerError, scan_layer, tarfmt
from warren.layers.image_tar import NeedsExtraction, convert_layer

BASE = 1_000_000_000


def convert(tmp_path: Path, data: bytes, **kw: object) -> list[tarfile.TarInfo]:
    out = tmp_path / "image.tar"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        convert_layer(io.BytesIO(data), fd, uid_base=BASE, **kw)  # type: ignore[arg-type]
    finally:
        os.close(fd)
    with tarfile.open(out) as t:
        return t.getmembers()


def by_name(infos: list[tarfile.TarInfo]) -> dict[str, tarfile.TarInfo]:
    return {i.name: i for i in infos}


def test_whiteouts_opaque_dirs_owners_and_parents(tmp_path: Path) -> None:
    entries = [
        d("opq/", uid=3),
        f("opq/.wh..wh..opq"),
        f("opq/new", b"n"),
        f("deep/er/file", b"data", uid=7, gid=8, mode=0o4755),
        f("deep/.wh.gone"),
        f("x", b"y", pax={"SCHILY.xattr.security.capability": "evil"}),
        Entry("null", tarfile.CHRTYPE, devmajor=1, devminor=3),
        f(".wh..wh.plnk"),
        sym("link", "/etc/passwd"),
        hard("hl", "deep/er/file"),
    ]
    got = by_name(convert(tmp_path, tar_bytes(entries)))
    assert list(got) == ["opq", "opq/new", "deep", "deep/er", "deep/er/file", "deep/gone", "x", "link", "hl"]
    assert got["opq"].isdir() and got["opq"].pax_headers["SCHILY.xattr.trusted.overlay.opaque"] == "y"
    assert got["opq"].uid == BASE + 3
    assert (got["deep"].uid, got["deep"].mode) == (BASE, 0o755)  # made, as extraction makes it
    file = got["deep/er/file"]
    assert (file.uid, file.gid, file.mode, file.size) == (BASE + 7, BASE + 8, 0o4755, 4)
    wh = got["deep/gone"]
    assert (wh.ischr(), wh.devmajor, wh.devminor, wh.uid, wh.mode) == (True, 0, 0, 0, 0)
    assert not [k for k in got["x"].pax_headers if "xattr" in k]  # the tar's xattrs are dropped
    assert got["link"].linkname == "/etc/passwd" and got["hl"].linkname == "deep/er/file"


def test_large_files_stream_through(tmp_path: Path) -> None:
    big = os.urandom(3 << 20)
    out = tmp_path / "image.tar"
    src = tmp_path / "layer.tar"
    src.write_bytes(tar_bytes([f("big", big), f("small", b"s")]))
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        stats = convert_layer(src, fd, uid_base=BASE)
    finally:
        os.close(fd)
    assert (stats.files, stats.bytes) == (2, len(big) + 1)
    with tarfile.open(out) as t:
        assert t.extractfile("big").read() == big  # type: ignore[union-attr]
        assert t.extractfile("small").read() == b"s"  # type: ignore[union-attr]


HOSTILE: list[tuple[str, bytes, str, dict[str, int]]] = [
    ("dotdot", tar_bytes([f("a/../../host/shadow", b"x")]), r"'\.\.' in name", {}),
    ("symlink escape", tar_bytes([sym("a", "/etc"), f("a/passwd", b"x")]), "not a directory", {}),
    ("whiteout through link", tar_bytes([sym("a", "/etc"), f("a/.wh.passwd")]), "not a directory", {}),
    ("hard link out", tar_bytes([hard("h", "/etc/shadow")]), "not an earlier file", {}),
    ("owner", tar_bytes([f("a", uid=65536)]), "outside 0..65535", {}),
    (
        "huge size",
        raw_header(b"big", size=10 * 1024**3) + b"x" * 4096,
        "over its limit",
        {"max_bytes": 1 << 20},
    ),
    ("truncated", tar_bytes([f("a", b"x" * 5000)])[:2048], "truncated", {}),
    ("empty symlink", tar_bytes([sym("s", "")]), "empty symlink", {}),
]


@pytest.mark.parametrize(("data", "match", "kw"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_tars_are_refused_as_extraction_refuses_them(
    tmp_path: Path, data: bytes, match: str, kw: dict[str, int]
) -> None:
    with pytest.raises(LayerError, match=match) as ei:
        convert(tmp_path, data, **kw)
    assert not isinstance(ei.value, NeedsExtraction)
    with pytest.raises(LayerError) as scanned:
        scan_layer(io.BytesIO(data), **kw)  # type: ignore[arg-type]
    assert str(ei.value) == str(scanned.value)


def test_an_absolute_name_lands_inside(tmp_path: Path) -> None:
    got = by_name(convert(tmp_path, tar_bytes([f("/etc/passwd", b"p")])))
    assert list(got) == ["etc", "etc/passwd"]


def test_a_tar_bomb_of_entries_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tarfmt, "MAX_MEMBERS", 50)
    with pytest.raises(LayerError, match="more than 50 members"):
        convert(tmp_path, tar_bytes([f(f"f{i}") for i in range(51)]))


@pytest.mark.parametrize(
    "entries",
    [
        [f("a", b"1"), f("a", b"2")],  # a later member replaces an earlier one
        [f("d/x"), d("d/")],  # a directory listed after its contents
        [d("d/"), f("d/x"), f("d/.wh..wh..opq")],  # an opaque marker apart from its directory
        [f("x"), f(".wh.x")],  # a whiteout of this layer's own file
    ],
    ids=["replace", "dir after contents", "late opaque", "own whiteout"],
)
def test_what_only_extraction_can_apply_asks_for_it(tmp_path: Path, entries: list[Entry]) -> None:
    with pytest.raises(NeedsExtraction):
        convert(tmp_path, tar_bytes(entries))
    scan_layer(io.BytesIO(tar_bytes(entries)))  # valid layers all the same


def test_large_files_reach_a_pipe_whole(tmp_path: Path) -> None:
    big = os.urandom(5 << 20)
    src = tmp_path / "layer.tar"
    src.write_bytes(tar_bytes([f("a", b"x"), f("big", big), f("z", b"z")]))
    r, w = os.pipe()
    got = bytearray()

    def drain() -> None:
        while chunk := os.read(r, 1 << 20):
            got.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        convert_layer(src, w, uid_base=BASE)
    finally:
        os.close(w)
        reader.join()
        os.close(r)
    with tarfile.open(fileobj=io.BytesIO(bytes(got))) as t:
        assert t.extractfile("big").read() == big  # type: ignore[union-attr]
        assert t.extractfile("z").read() == b"z"  # type: ignore[union-attr]
