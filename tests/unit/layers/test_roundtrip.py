"""write_layer → extract_layer gives the same tree, and the same tree gives the same digest."""

from __future__ import annotations

import io
import os
import socket
import stat
import tarfile
from pathlib import Path

import pytest

from tests.unit.layers.treecmp import snapshot
from warren.layers import HashingReader, LayerError, digest_file, extract_layer, scan_layer, write_layer

pytestmark = pytest.mark.root

BASE = 1_000_000_000
OTHER_BASE = 2_000_000
MTIME = 1_600_000_000


def _own(p: Path, n: int, base: int = BASE) -> None:
    os.chown(p, base + n, base + n, follow_symlinks=False)


def make_upper(root: Path) -> Path:
    """An upper dir as a sandbox leaves it: mapped owners, whiteouts, an opaque dir, set-uid."""
    root.mkdir(mode=0o755)
    _own(root, 0)
    (root / "etc").mkdir()
    (root / "etc" / "motd").write_bytes(b"hello\n")
    os.mknod(root / "etc" / "shadow", stat.S_IFCHR, os.makedev(0, 0))  # whiteout
    (root / "opt" / "app").mkdir(parents=True)
    os.setxattr(root / "opt" / "app", "trusted.overlay.opaque", b"y")
    (root / "opt" / "app" / "run").write_bytes(b"#!/bin/sh\n" * 1000)
    (root / "opt" / "app" / "shared").write_bytes(b"g" * 3000)
    os.link(root / "opt" / "app" / "run", root / "opt" / "app" / "run-again")
    os.symlink("/etc/passwd", root / "opt" / "abs-link")
    os.symlink("../etc/motd", root / "opt" / "rel-link")
    os.mkfifo(root / "opt" / "fifo", 0o620)
    (root / "home" / "user").mkdir(parents=True, mode=0o700)
    (root / "home" / "user" / ("long-" + "n" * 150)).write_bytes(b"")
    (root / "home" / "user" / "caf\xe9 ünï").write_bytes(b"x" * 70000)
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    for p in sorted(root.rglob("*"), reverse=True):
        if not (p.is_char_device()):
            owner = 1000 if "home" in p.parts else 0
            _own(p, owner)
            os.utime(p, (MTIME, MTIME), follow_symlinks=False)
    os.chmod(root / "opt" / "app" / "run", 0o4755)  # after chown, which clears it
    os.chmod(root / "opt" / "app" / "shared", 0o2750)
    return root


def test_round_trip_gives_the_same_tree_with_owners_shifted(tmp_path: Path) -> None:
    upper = make_upper(tmp_path / "upper")
    with open(tmp_path / "layer.tar", "wb") as out:
        meta = write_layer(upper, out, uid_base=BASE)
    assert digest_file(tmp_path / "layer.tar") == meta
    stats = extract_layer(tmp_path / "layer.tar", tmp_path / "dest", uid_base=OTHER_BASE)

    before, after = snapshot(upper, BASE), snapshot(tmp_path / "dest", OTHER_BASE)
    assert after == before
    assert after["etc/shadow"] == ("whiteout", 0)
    assert after["opt/app"][-1] is True  # opaque
    assert after["opt/app/run"][1] == 0o4755
    assert after["opt/app/run-again"][-1] == "opt/app/run"  # one inode
    assert after["home/user/caf\xe9 ünï"][2] == 1000
    assert stat.S_IMODE(os.stat(tmp_path / "dest").st_mode) == 0o700
    assert stats.bytes == 10000 + 3000 + 70000 + len(b"hello\n")
    assert not stats.has_python3


def test_the_same_tree_gives_the_same_digest(tmp_path: Path) -> None:
    upper = make_upper(tmp_path / "upper")
    first, second = io.BytesIO(), io.BytesIO()
    a = write_layer(upper, first, uid_base=BASE)
    b = write_layer(upper, second, uid_base=BASE)
    assert a == b and first.getvalue() == second.getvalue()
    assert a.size == len(first.getvalue())


def test_the_tar_speaks_oci(tmp_path: Path) -> None:
    upper = make_upper(tmp_path / "upper")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(upper / "run.sock"))
    sock.close()
    buf = io.BytesIO()
    write_layer(upper, buf, uid_base=BASE)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as t:
        members = {m.name: m for m in t.getmembers()}
    names = list(members)
    for i, name in enumerate(names):  # a directory comes before its contents
        parent = name.rpartition("/")[0]
        assert not parent or names.index(parent) < i, name
    assert "etc/.wh.shadow" in members and members["etc/.wh.shadow"].isreg()
    assert "opt/app/.wh..wh..opq" in members
    assert members["opt/app/run-again"].islnk() and members["opt/app/run-again"].linkname == "opt/app/run"
    assert members["opt/abs-link"].issym() and members["opt/abs-link"].linkname == "/etc/passwd"
    assert members["opt/fifo"].isfifo()
    assert members["home/user"].uid == 1000 and members["etc/motd"].uid == 0
    assert members["opt/app/run"].mode == 0o4755
    assert "run.sock" not in members
    assert t.format == tarfile.PAX_FORMAT


def test_owners_outside_the_mapped_range_become_nobody_without_setuid(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "rootfile").write_bytes(b"x")
    os.chown(upper / "rootfile", 0, 0)  # host root: `nobody` inside the sandbox
    os.chmod(upper / "rootfile", 0o6755)
    buf = io.BytesIO()
    write_layer(upper, buf, uid_base=BASE)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as t:
        m = t.getmember("rootfile")
    assert (m.uid, m.gid, m.mode) == (65534, 65534, 0o755)


def test_a_tenant_file_named_like_a_whiteout_is_refused(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    (upper / "d" / ".wh.x").write_bytes(b"")
    with pytest.raises(LayerError, match=r"d/\.wh\.x"):
        write_layer(upper, io.BytesIO(), uid_base=BASE)


def test_the_writer_never_follows_a_symlinked_directory(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_bytes(b"host secret")
    upper = tmp_path / "upper"
    upper.mkdir()
    os.symlink(secret, upper / "link")
    buf = io.BytesIO()
    write_layer(upper, buf, uid_base=BASE)
    assert b"host secret" not in buf.getvalue()


def test_scan_agrees_with_extract(tmp_path: Path) -> None:
    upper = make_upper(tmp_path / "upper")
    (upper / "usr" / "bin").mkdir(parents=True)
    os.symlink("python3.11", upper / "usr" / "bin" / "python3")
    with open(tmp_path / "layer.tar", "wb") as out:
        write_layer(upper, out, uid_base=BASE)
    scanned = scan_layer(tmp_path / "layer.tar")
    extracted = extract_layer(tmp_path / "layer.tar", tmp_path / "dest", uid_base=BASE)
    assert scanned == extracted
    assert scanned.has_python3


def test_extracting_through_a_hashing_reader_gives_the_tar_digest(tmp_path: Path) -> None:
    upper = make_upper(tmp_path / "upper")
    with open(tmp_path / "layer.tar", "wb") as out:
        meta = write_layer(upper, out, uid_base=BASE)
    with open(tmp_path / "layer.tar", "rb") as f:
        reader = HashingReader(f)
        extract_layer(reader, tmp_path / "dest", uid_base=BASE)
        while reader.read(1 << 20):  # the end-of-archive padding counts too
            pass
    assert reader.meta() == meta
    assert snapshot(tmp_path / "dest", BASE) == snapshot(upper, BASE)
