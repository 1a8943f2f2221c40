"""extract_layer against hostile tars: nothing outside the destination is ever touched.

Every attack has a canary file outside the destination (what `/etc/shadow` is on a host); after
the attempt it is unchanged, nothing new exists beside it, and a refused layer leaves no
destination behind.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from tests.unit.layers.tarbuild import Entry, d, f, hard, raw_header, sym, tar_bytes, write_tar
from warren.layers import LayerError, extract_layer, scan_layer

pytestmark = pytest.mark.root

BASE = 1_000_000_000


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    host = tmp_path / "host"
    host.mkdir()
    (host / "shadow").write_bytes(b"root:secret\n")
    return host


def _host_untouched(host: Path) -> None:
    assert sorted(p.name for p in host.iterdir()) == ["shadow"]
    assert (host / "shadow").read_bytes() == b"root:secret\n"
    st = os.stat(host / "shadow")
    assert (st.st_uid, st.st_nlink, stat.S_IMODE(st.st_mode)) == (0, 1, 0o644)


def _refused(tmp_path: Path, entries: list[Entry] | bytes, match: str, **kw: object) -> None:
    data = entries if isinstance(entries, bytes) else tar_bytes(entries)
    dest = tmp_path / "dest"
    with pytest.raises(LayerError, match=match):
        extract_layer(io.BytesIO(data), dest, uid_base=BASE, **kw)  # type: ignore[arg-type]
    assert not dest.exists()
    with pytest.raises(LayerError, match=match):  # the CP's scan refuses it too
        scan_layer(io.BytesIO(data), **kw)  # type: ignore[arg-type]


def test_a_symlink_to_a_host_dir_then_a_file_through_it(tmp_path: Path, outside: Path) -> None:
    entries = [sym("a", str(outside)), f("a/shadow", b"pwned"), f("a/new", b"pwned")]
    with pytest.raises(LayerError, match=r"'a/shadow'.*not a directory"):
        extract_layer(io.BytesIO(tar_bytes(entries)), tmp_path / "dest", uid_base=BASE)
    assert not (tmp_path / "dest").exists()
    _host_untouched(outside)


def test_a_symlink_in_a_parent_directory(tmp_path: Path, outside: Path) -> None:
    entries = [d("x/"), d("x/y/"), sym("x/y/z", str(outside)), f("x/y/z/w/new", b"pwned")]
    with pytest.raises(LayerError, match="not a directory"):
        extract_layer(io.BytesIO(tar_bytes(entries)), tmp_path / "dest", uid_base=BASE)
    _host_untouched(outside)


def test_a_relative_symlink_climbing_out(tmp_path: Path, outside: Path) -> None:
    entries = [sym("up", "../host"), f("up/shadow", b"pwned")]
    with pytest.raises(LayerError, match="not a directory"):
        extract_layer(io.BytesIO(tar_bytes(entries)), tmp_path / "dest", uid_base=BASE)
    _host_untouched(outside)


def test_an_opaque_marker_or_whiteout_through_a_symlink(tmp_path: Path, outside: Path) -> None:
    for last in (f("a/.wh..wh..opq"), f("a/.wh.shadow")):
        with pytest.raises(LayerError, match="not a directory"):
            extract_layer(
                io.BytesIO(tar_bytes([sym("a", str(outside)), last])), tmp_path / "d", uid_base=BASE
            )
        _host_untouched(outside)
        assert os.listxattr(outside) == []


def test_a_file_over_an_earlier_symlink_replaces_the_link(tmp_path: Path, outside: Path) -> None:
    entries = [sym("s", str(outside / "shadow")), f("s", b"mine"), sym("t", str(outside)), d("t/")]
    extract_layer(io.BytesIO(tar_bytes(entries)), tmp_path / "dest", uid_base=BASE)
    assert (tmp_path / "dest" / "s").read_bytes() == b"mine"
    assert not (tmp_path / "dest" / "s").is_symlink()
    assert (tmp_path / "dest" / "t").is_dir() and not (tmp_path / "dest" / "t").is_symlink()
    _host_untouched(outside)


def test_a_hard_link_to_a_host_file(tmp_path: Path, outside: Path) -> None:
    _refused(tmp_path, [hard("h", str(outside / "shadow"))], "not an earlier file")
    _host_untouched(outside)


def test_a_hard_link_through_a_symlink(tmp_path: Path, outside: Path) -> None:
    entries = [sym("s", str(outside)), hard("h", "s/shadow")]
    with pytest.raises(LayerError, match="not an earlier file"):
        extract_layer(io.BytesIO(tar_bytes(entries)), tmp_path / "dest", uid_base=BASE)
    _host_untouched(outside)


def test_a_hard_link_to_a_symlink_links_the_symlink_itself(tmp_path: Path, outside: Path) -> None:
    entries = [sym("s", str(outside / "shadow")), hard("h", "s"), f("h", b"pwned")]
    extract_layer(io.BytesIO(tar_bytes(entries)), tmp_path / "dest", uid_base=BASE)
    assert (tmp_path / "dest" / "h").read_bytes() == b"pwned"
    assert os.readlink(tmp_path / "dest" / "s") == str(outside / "shadow")
    _host_untouched(outside)


def test_a_hard_link_to_a_later_member(tmp_path: Path) -> None:
    _refused(tmp_path, [hard("h", "later"), f("later", b"x")], "not an earlier file")


def test_dotdot_names_are_refused(tmp_path: Path, outside: Path) -> None:
    for name in ("../host/shadow", "a/../../host/shadow", "./..", "a/.."):
        _refused(tmp_path, [f(name, b"pwned")], r"'\.\.' in name")
    _refused(tmp_path, [d("a/"), hard("a/h", "../host/shadow")], r"'\.\.' in name")
    _host_untouched(outside)


def test_absolute_names_land_inside_the_destination(tmp_path: Path, outside: Path) -> None:
    entries = [f(str(outside / "shadow"), b"inside"), f("/etc/passwd", b"p"), f("./x", b"x")]
    extract_layer(io.BytesIO(tar_bytes(entries)), tmp_path / "dest", uid_base=BASE)
    dest = tmp_path / "dest"
    assert (dest / str(outside / "shadow").lstrip("/")).read_bytes() == b"inside"
    assert (dest / "etc" / "passwd").read_bytes() == b"p"
    assert (dest / "x").read_bytes() == b"x"
    _host_untouched(outside)


def test_device_nodes_are_skipped(tmp_path: Path) -> None:
    entries = [
        Entry("null", tarfile.CHRTYPE, devmajor=1, devminor=3),
        Entry("sda", tarfile.BLKTYPE, devmajor=8, devminor=0),
        Entry("fake-whiteout", tarfile.CHRTYPE),  # only `.wh.` names make whiteouts
        f("kept", b"x"),
    ]
    stats = extract_layer(io.BytesIO(tar_bytes(entries)), tmp_path / "dest", uid_base=BASE)
    assert sorted(os.listdir(tmp_path / "dest")) == ["kept"]
    assert stats.skipped == 3


def test_a_declared_size_past_max_bytes_is_refused_before_writing(tmp_path: Path) -> None:
    huge = raw_header(b"big", size=10 * 1024**3) + b"x" * 4096
    _refused(tmp_path, huge, "over its limit", max_bytes=1 << 20)
    _refused(tmp_path, [f("a", b"x" * 5000), f("b", b"y" * 5000)], "'b'.*over its limit", max_bytes=8192)


def test_a_truncated_tar_is_refused(tmp_path: Path) -> None:
    data = tar_bytes([f("a", b"x" * 5000)])
    _refused(tmp_path, data[:2048], "truncated")
    _refused(tmp_path, data[: 512 * 11], "no end-of-archive")


def test_owners_outside_the_sandbox_range_are_refused(tmp_path: Path) -> None:
    _refused(tmp_path, [f("a", uid=65536)], "owner 65536:0 outside")
    _refused(tmp_path, [f("a", gid=10**9)], "outside 0..65535")
    _refused(tmp_path, [f("a", pax={"uid": "4294967295"})], "outside")


def test_a_nul_in_a_pax_name_is_refused(tmp_path: Path) -> None:
    pax = b"path=a\0b"
    rec = b"%d %s\n" % (len(pax) + 4, pax)
    data = raw_header(b"PaxHeader", size=len(rec), typ=b"x") + rec.ljust(512, b"\0") + raw_header(b"a")
    _refused(tmp_path, data + bytes(1024), "NUL in name")


def test_a_bad_checksum_is_refused(tmp_path: Path) -> None:
    blk = bytearray(raw_header(b"a"))
    blk[0:1] = b"b"
    _refused(tmp_path, bytes(blk) + bytes(1024), "checksum")


def test_sparse_and_unknown_types_are_refused(tmp_path: Path) -> None:
    _refused(tmp_path, raw_header(b"s", typ=b"S") + bytes(1024), "unsupported tar type")
    _refused(tmp_path, [f("a", pax={"GNU.sparse.map": "0,1"})], "sparse")


def test_whiteouts_of_nothing_are_refused(tmp_path: Path) -> None:
    for name in ("a/.wh.", "a/.wh..", "a/.wh..."):  # the last one whites out `..`
        _refused(tmp_path, [f(name)], "whiteout of nothing")


def test_a_member_replacing_a_directory_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, [d("a/"), f("a/x", b"1"), sym("a", "/etc")], "would replace a directory")
    _refused(tmp_path, [d("a/"), f("a/.wh..")], "whiteout of nothing")


def test_a_non_empty_destination_is_refused_and_kept(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine").write_bytes(b"keep")
    with pytest.raises(LayerError, match="not an empty directory"):
        extract_layer(io.BytesIO(tar_bytes([f("a")])), dest, uid_base=BASE)
    assert (dest / "mine").read_bytes() == b"keep"


def test_symlink_targets_are_data(tmp_path: Path, outside: Path) -> None:
    entries = [sym("etc/shadow", str(outside / "shadow")), sym("dots", "../../../../x" * 10)]
    extract_layer(io.BytesIO(tar_bytes(entries)), tmp_path / "dest", uid_base=BASE)
    link = tmp_path / "dest" / "etc" / "shadow"
    assert os.readlink(link) == str(outside / "shadow")
    assert os.lstat(link).st_uid == BASE
    _host_untouched(outside)


def test_whiteouts_opaque_dirs_and_setuid(tmp_path: Path) -> None:
    entries = [
        d("usr/"),
        f("usr/.wh..wh..opq"),
        f("usr/su", b"x", mode=0o4755, uid=0),
        f("usr/sg", b"x", mode=0o2755, uid=5, gid=7),
        f("etc/.wh.passwd"),
        f("usr/bin/.wh.python3"),
    ]
    stats = extract_layer(io.BytesIO(tar_bytes(entries)), tmp_path / "dest", uid_base=BASE)
    dest = tmp_path / "dest"
    assert os.getxattr(dest / "usr", "trusted.overlay.opaque") == b"y"
    wh = os.lstat(dest / "etc" / "passwd")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    su, sg = os.lstat(dest / "usr" / "su"), os.lstat(dest / "usr" / "sg")
    assert stat.S_IMODE(su.st_mode) == 0o4755 and su.st_uid == BASE
    assert stat.S_IMODE(sg.st_mode) == 0o2755 and (sg.st_uid, sg.st_gid) == (BASE + 5, BASE + 7)
    assert not stats.has_python3 and stats.removes_python3


def test_tar_dialects_ustar_gnu_and_pax_read_alike(tmp_path: Path) -> None:
    long = "d" * 120 + "/" + "n" * 120
    entries = [f(long, b"long"), sym("l" * 150, "t" * 150), f("caf\xe9", b"u", uid=7)]
    for i, fmt in enumerate((tarfile.GNU_FORMAT, tarfile.PAX_FORMAT)):
        dest = tmp_path / f"dest{i}"
        extract_layer(io.BytesIO(tar_bytes(entries, fmt)), dest, uid_base=BASE)
        assert (dest / long).read_bytes() == b"long"
        assert os.readlink(dest / ("l" * 150)) == "t" * 150
        assert os.lstat(dest / "caf\xe9").st_uid == BASE + 7
    ustar = [f("p" * 90 + "/" + "q" * 90, b"prefix")]  # ustar splits it into prefix + name
    extract_layer(io.BytesIO(tar_bytes(ustar, tarfile.USTAR_FORMAT)), tmp_path / "u", uid_base=BASE)
    assert (tmp_path / "u" / ustar[0].name).read_bytes() == b"prefix"


def test_a_path_source_and_a_stream_give_the_same_tree(tmp_path: Path) -> None:
    big = os.urandom(3 << 20)
    tar = write_tar(tmp_path / "l.tar", [f("small", b"s" * 100), f("big", big), f("after", b"a")])
    extract_layer(tar, tmp_path / "p", uid_base=BASE)
    extract_layer(io.BytesIO(tar.read_bytes()), tmp_path / "s", uid_base=BASE)
    for dest in (tmp_path / "p", tmp_path / "s"):
        assert (dest / "big").read_bytes() == big
        assert (dest / "after").read_bytes() == b"a"


def test_python3_detection(tmp_path: Path) -> None:
    cases = [
        ([sym("usr/bin/python3", "python3.11")], (True, True)),
        ([f("usr/bin/python3", b"elf")], (True, True)),
        ([f("usr/bin/python3.11", b"elf"), hard("usr/bin/python3", "usr/bin/python3.11")], (True, True)),
        ([f("usr/.wh.bin")], (False, True)),
        ([f("usr/bin/.wh..wh..opq"), f("usr/bin/ls")], (False, True)),
        ([f("usr/bin/.wh..wh..opq"), sym("usr/bin/python3", "x")], (True, True)),
        ([f("usr/bin/ls")], (False, False)),
    ]
    for i, (entries, (has, removes)) in enumerate(cases):
        stats = scan_layer(io.BytesIO(tar_bytes(entries)))
        assert (stats.has_python3, stats.removes_python3) == (has, removes), entries
        assert extract_layer(io.BytesIO(tar_bytes(entries)), tmp_path / str(i), uid_base=BASE) == stats


def test_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    entries = [f("a", b"x", mode=0o644), f("b", b"x", mode=0o4711), d("c/", mode=0o775), f("c/e", mode=0o777)]
    old = os.umask(0o077)
    try:
        extract_layer(io.BytesIO(tar_bytes(entries)), tmp_path / "dest", uid_base=BASE)
    finally:
        os.umask(old)
    modes = {n: stat.S_IMODE(os.lstat(tmp_path / "dest" / n).st_mode) for n in ("a", "b", "c", "c/e")}
    assert modes == {"a": 0o644, "b": 0o4711, "c": 0o775, "c/e": 0o777}


def test_a_whiteout_name_as_a_directory_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, [f("a/.wh.b/c", b"x")], "a whiteout name as a directory")


def test_old_style_directories_and_pre_1970_times(tmp_path: Path) -> None:
    dir_as_areg = raw_header(b"olddir/", typ=b"\0")
    blk = bytearray(raw_header(b"old", size=1))
    blk[136:148] = b"\xff" * 12  # GNU base-256: a negative mtime
    blk[148:156] = b"        "
    blk[148:156] = b"%06o\0 " % sum(blk)
    data = dir_as_areg + bytes(blk) + b"x".ljust(512, b"\0") + bytes(1024)
    extract_layer(io.BytesIO(data), tmp_path / "dest", uid_base=BASE)
    assert (tmp_path / "dest" / "olddir").is_dir()
    assert os.lstat(tmp_path / "dest" / "old").st_mtime == 0


def test_a_fifo_or_file_on_the_path_is_refused_without_blocking(tmp_path: Path) -> None:
    _refused(tmp_path, [Entry("p", tarfile.FIFOTYPE), f("p/x", b"x")], "not a directory")
    _refused(tmp_path, [f("file", b"x"), f("file/x", b"x")], "not a directory")
