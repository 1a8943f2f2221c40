"""The compiled layer converter (native/layer_convert.c, ``make setup`` builds it) against the
Python one (``warren.layers.image_tar.convert_layer``), tar by tar: for every tar it either
declines (the agent then converts the layer with the Python converter) or writes the very same
bytes with the same stats. It must never accept a tar the Python converter refuses, nor one it
hands to extraction. Plain layers (what builds, imports and snapshots mostly are) must not be
declined, or the fast path would be dead code."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import tarfile
from pathlib import Path

import pytest

from tests.security import hostile_tars
from tests.unit.layers.tarbuild import Entry, d, f, hard, raw_header, sym, tar_bytes
from tests.unit.layers.test_image_tar import HOSTILE
from warren.agent import layer_convert
from warren.agent.layer_convert import native_converter
from warren.layers import LayerError
from warren.layers.convert_server import ConverterDeclined
from warren.layers.image_tar import convert_layer

BASE = 1_000_000_000
LIMIT = 1 << 30


def native(tmp_path: Path, data: bytes, limit: int = LIMIT) -> tuple[dict[str, object], bytes]:
    """The compiled converter on ``data``: (its result, what it wrote)."""
    path = native_converter()
    assert path is not None, "the compiled converter is not built: run `make setup`"
    src, out = tmp_path / "in.tar", tmp_path / "native-out.tar"
    src.write_bytes(data)
    fin = os.open(src, os.O_RDONLY)
    fout = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    r, w = os.pipe()
    for fd in (fin, fout, w):
        os.set_inheritable(fd, True)
    try:
        pid = os.posix_spawn(
            path,
            [path, str(fin), str(fout), str(w), str(BASE), str(limit)],
            os.environ,
            file_actions=[(os.POSIX_SPAWN_CLOSE, r)],
        )
        os.close(w)
        w = -1
        result = b""
        while chunk := os.read(r, 65536):
            result += chunk
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        for fd in (fin, fout, r, w):
            if fd >= 0:
                os.close(fd)
    return json.loads(result), out.read_bytes()


def python(tmp_path: Path, data: bytes, limit: int = LIMIT) -> tuple[dict[str, object], bytes]:
    """The Python converter on ``data``: ({"kind": ok|refused|needs_extraction, ...}, output)."""
    out = tmp_path / "python-out.tar"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        stats = convert_layer(io.BytesIO(data), fd, uid_base=BASE, max_bytes=limit)  # type: ignore[arg-type]
        got: dict[str, object] = {"kind": "ok", "stats": dataclasses.asdict(stats)}
    except LayerError as e:
        got = {"kind": type(e).__name__, "message": str(e)}
    finally:
        os.close(fd)
    return got, out.read_bytes()


def same_or_declined(tmp_path: Path, data: bytes, limit: int = LIMIT) -> str:
    """Asserts the contract above; returns the native converter's kind."""
    got, out = native(tmp_path, data, limit)
    want, want_out = python(tmp_path, data, limit)
    assert got["kind"] in ("ok", "declined"), got
    if got["kind"] == "ok":
        assert want["kind"] == "ok", f"accepted what the Python converter does not: {want}"
        assert got["stats"] == want["stats"]
        assert out == want_out
    return str(got["kind"])


def plain_layers() -> dict[str, bytes]:
    long = "x/" * 60 + "deep-file-name-" * 8
    return {
        "files dirs links": tar_bytes(
            [
                d("etc/"),
                f("etc/passwd", b"root:x:0:0\n", mode=0o600),
                f("usr/bin/python3", b"\x7fELF", mode=0o755, uid=3, gid=4),
                sym("usr/bin/python", "python3"),
                hard("usr/bin/python3.11", "usr/bin/python3"),
                Entry("run/fifo", tarfile.FIFOTYPE),
                f("a/b/c/d/e", b"deep, parents unlisted", mode=0o4755),
                d("a/b/c/d/f/", uid=7, mode=0o700),
                f("./dot/./slash//name", b"n"),
                d("./"),
            ]
        ),
        "long names and links": tar_bytes(
            [f(long, b"long"), sym("l", "/" + "t" * 150), hard("h" * 120, long), d(long + "-dir/")]
        ),
        "ustar prefix": tar_bytes([f("p" * 90 + "/" + "n" * 90, b"prefixed")], fmt=tarfile.USTAR_FORMAT),
        "pax owners and times": tar_bytes(
            [
                f("o", b"o", pax={"uid": "65535", "gid": "12", "mtime": "1700000000.987654321"}),
                f("t", b"t", pax={"mtime": "99999999999"}),
                f("x", b"x", pax={"comment": "kept out"}),
            ]
        ),
        "big and empty files": tar_bytes([f("big", os.urandom(3 << 20)), f("empty"), f("odd", b"z" * 513)]),
        "python3 replaced by a dir": tar_bytes([d("usr/bin/python3/")]),
        "usr/bin a link": tar_bytes([sym("usr/bin", "/opt")]),
        "many small": tar_bytes([f(f"s/d{i % 7}/f{i}", os.urandom(i % 700)) for i in range(300)]),
        "a gnu tar's plain members": tar_bytes([f("g", b"g"), d("gd/")], fmt=tarfile.GNU_FORMAT),
        "whiteouts opaque dirs devices": tar_bytes(
            [
                d("opq/", uid=3),
                f("opq/.wh..wh..opq"),
                f("opq/new", b"n"),
                f("implied/.wh..wh..opq"),
                f("deep/er/file", b"data", uid=7, gid=8, mode=0o4755),
                f("deep/.wh.gone"),
                f("x", b"y", pax={"SCHILY.xattr.security.capability": "evil"}),
                Entry("null", tarfile.CHRTYPE, devmajor=1, devminor=3),
                Entry("opq/disk", tarfile.BLKTYPE, devmajor=8),
                f(".wh..wh.plnk"),
                f("w/" + "l" * 120 + "/.wh." + "g" * 30),
                sym("link", "/etc/passwd"),
                hard("hl", "deep/er/file"),
            ]
        ),
        "python3 whited out": tar_bytes([f("usr/bin/.wh.python3")]),
        "usr opaque": tar_bytes([d("usr/"), f("usr/.wh..wh..opq"), f("usr/bin/python3", b"p")]),
    }


@pytest.mark.parametrize("name", list(plain_layers()))
def test_plain_layers_convert_to_the_same_bytes(tmp_path: Path, name: str) -> None:
    assert same_or_declined(tmp_path, plain_layers()[name]) == "ok"


@pytest.mark.parametrize(("data", "kw"), [(h[1], h[3]) for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_what_the_python_converter_refuses_is_declined(
    tmp_path: Path, data: bytes, kw: dict[str, int]
) -> None:
    assert same_or_declined(tmp_path, data, kw.get("max_bytes", LIMIT)) == "declined"


ODD = {
    "replace": tar_bytes([f("a", b"1"), f("a", b"2")]),
    "dir after contents": tar_bytes([f("d/x"), d("d/")]),
    "own whiteout": tar_bytes([f("x"), f(".wh.x")]),
    "whiteout of a dir": tar_bytes([d("x/"), f(".wh.x")]),
    "whiteout twice": tar_bytes([f(".wh.x"), f(".wh.x")]),
    "late opaque": tar_bytes([d("d/"), f("d/x"), f("d/.wh..wh..opq")]),
    "root opaque": tar_bytes([f(".wh..wh..opq")]),
    "through a whiteout": tar_bytes([f(".wh.x"), f("x/y")]),
    "name after its whiteout": tar_bytes([f(".wh.x"), f("x", b"x")]),
    "gnu long name": tar_bytes([f("L" * 150, b"l")], fmt=tarfile.GNU_FORMAT),
    "base-256 uid": tar_bytes([f("u", b"u", uid=8**7 + 1)], fmt=tarfile.GNU_FORMAT),
    "negative uid": hostile_tars.negative_uid(),
    "bad checksum": hostile_tars.bad_checksum(),
    "ten terabytes": hostile_tars.claims_ten_terabytes(),
    "truncated": hostile_tars.truncated(),
    "too deep": hostile_tars.deep(300),
    "many implied dirs": hostile_tars.deep_distinct_dirs(80, levels=250),
    "no end marker": tar_bytes([f("a", b"a")])[:1024],
    "sparse": raw_header(b"s", typ=b"S"),
    "hard link to a dir": tar_bytes([d("d/"), hard("h", "d")]),
    "hard link forward": tar_bytes([hard("h", "later"), f("later", b"l")]),
    "file on the path": tar_bytes([f("a", b"a"), f("a/b", b"b")]),
    "over the limit": tar_bytes([f("a", b"a" * 4096)]),
}


@pytest.mark.parametrize("name", list(ODD))
def test_odd_and_hostile_tars_are_declined(tmp_path: Path, name: str) -> None:
    limit = 2048 if name == "over the limit" else LIMIT
    assert same_or_declined(tmp_path, ODD[name], limit) == "declined"


def test_a_pax_record_cut_short_or_sparse_is_declined(tmp_path: Path) -> None:
    for records in (b"30 path=short\n", b"20 GNU.sparse.map=0\n", b"x path=a\n", b"9 path\n"):
        data = hostile_tars.pax_then(records, hostile_tars.info("a"))
        assert same_or_declined(tmp_path, data) == "declined"


@pytest.mark.parametrize("name", list(hostile_tars.REFUSED))
def test_the_attack_suites_tars_are_declined(tmp_path: Path, name: str) -> None:
    assert same_or_declined(tmp_path, hostile_tars.REFUSED[name]()) == "declined"


@pytest.mark.root  # the converter's child drops to nobody before it execs the program
def test_through_the_converter_server_as_nobody(tmp_path: Path) -> None:
    """The agent's way: the server's child execs the program on the fds it was given."""
    data = plain_layers()["files dirs links"]
    r, w = os.pipe()
    conv = layer_convert.Conversion(w, uid_base=BASE, max_bytes=LIMIT, cpu_s=60, native=True)
    os.close(w)
    try:
        conv.put(data)
        conv.close()
        out = b""
        while chunk := os.read(r, 1 << 20):
            out += chunk
        stats = conv.result()
    finally:
        conv.discard()
        os.close(r)
    want, want_out = python(tmp_path, data)
    assert stats is not None and dataclasses.asdict(stats) == want["stats"]
    assert out == want_out
    r, w = os.pipe()
    conv = layer_convert.Conversion(w, uid_base=BASE, max_bytes=LIMIT, cpu_s=60, native=True)
    os.close(w)
    try:
        conv.put(ODD["own whiteout"])
        conv.close()
        while os.read(r, 1 << 20):
            pass
        with pytest.raises(ConverterDeclined, match="whiteout of a name already there"):
            conv.result()
    finally:
        conv.discard()
        os.close(r)


def random_layer(seed: int) -> bytes:
    """A layer of a few members drawn from a small vocabulary of names and kinds, so that
    duplicates, whiteouts of earlier names, links to later ones and opaque markers apart from
    their directories all come up, and members that write nothing carry data that is a tar
    (skipped, never parsed: 91 of the 300 caught 4ee3f3d's converter parsing it). A fixed seed
    each: the same tars every run."""
    rnd = random.Random(seed)
    hidden = tar_bytes([f("hidden", b"h")])  # data of members that write none: skipped, never parsed
    names = ["a", "b", "a/b", "a/c", "b/c", "a/b/c", "usr", "usr/bin", "usr/bin/python3", "d"]
    out: list[Entry] = []
    for _ in range(rnd.randint(1, 9)):
        name = rnd.choice(names)
        kind = rnd.choice(["f", "f", "d", "sym", "hard", "wh", "opq", "fifo", "chr", "aufs"])
        head, _, base = name.rpartition("/")
        prefix = head + "/" if head else ""
        if kind == "f":
            out.append(f(name, rnd.randbytes(rnd.choice([0, 1, 600, 70_000])), uid=rnd.choice([0, 5])))
        elif kind == "d":
            out.append(d(name + "/", mode=rnd.choice([0o755, 0o700])))
        elif kind == "sym":
            out.append(sym(name, rnd.choice(names)))
        elif kind == "hard":
            out.append(hard(name, rnd.choice(names)))
        elif kind == "wh":
            out.append(f(prefix + ".wh." + base, rnd.choice([b"", hidden])))
        elif kind == "opq":
            out.append(f(name + "/.wh..wh..opq", rnd.choice([b"", hidden])))
        elif kind == "fifo":
            out.append(Entry(name, tarfile.FIFOTYPE))
        elif kind == "chr":
            out.append(Entry(name, tarfile.CHRTYPE, devmajor=1, devminor=3))
        else:
            out.append(f(prefix + ".wh..wh.plnk", rnd.choice([b"", hidden])))
    return tar_bytes(out)


@pytest.mark.parametrize("batch", range(10))
def test_random_layers_convert_the_same_or_are_declined(tmp_path: Path, batch: int) -> None:
    for seed in range(30 * batch, 30 * batch + 30):  # 300 layers in all
        same_or_declined(tmp_path, random_layer(seed))


def test_random_layers_are_mostly_converted(tmp_path: Path) -> None:
    """The fast path takes many of them (else the test above would prove little)."""
    kinds = [same_or_declined(tmp_path, random_layer(seed)) for seed in range(60)]
    assert kinds.count("ok") >= 15, kinds  # 19 of these 60


@pytest.mark.parametrize("batch", range(2))
def test_mutated_tars_convert_the_same_or_are_declined(tmp_path: Path, batch: int) -> None:
    """Bytes of the tars above overwritten here and there, mostly in headers (a fixed seed: the
    same 60 mutants per batch every run). 3 000 such mutants ran once under ASan and UBSan
    (docs/benchmarks.md, session 12): nothing flagged."""
    rnd = random.Random(batch)
    corpus = [v for k, v in plain_layers().items() if k != "big and empty files"]
    corpus += [*ODD.values(), *(random_layer(seed) for seed in range(40))]
    for _ in range(60):
        data = bytearray(rnd.choice(corpus))
        for _ in range(rnd.randint(1, 6)):
            at = rnd.randrange(min(len(data), 4096)) if rnd.random() < 0.8 else rnd.randrange(len(data))
            data[at] = rnd.randrange(256) if rnd.random() < 0.6 else rnd.choice(b"0123456789 ./\0x")
        same_or_declined(tmp_path, bytes(data), rnd.choice([LIMIT, 4096, 100_000]))
