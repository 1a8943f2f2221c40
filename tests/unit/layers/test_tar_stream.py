"""The converter's fast tar reader (warren.layers.tar_stream.members) reads every tar as
``tarfmt.members`` does, member for member and refusal for refusal; its header writer makes
``_ustar``'s bytes; ChunkFeed hands chunks across threads and never blocks a stopped pipeline."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from dataclasses import astuple
from pathlib import Path

import pytest

from tests.unit.layers.tarbuild import Entry, d, f, hard, raw_header, sym, tar_bytes
from tests.unit.layers.test_image_tar import HOSTILE
from warren.layers import LayerError, tarfmt
from warren.layers.image_tar import _Converter, _ustar
from warren.layers.tar_stream import ChunkFeed, members


def _patch(blk: bytes, start: int, field: bytes, *, checksum: bool = True) -> bytes:
    b = bytearray(blk)
    b[start : start + len(field)] = field
    if checksum:
        b[148:156] = b"        "
        b[148:156] = b"%06o\0 " % sum(b[:512])
    return bytes(b)


def _signed_checksum() -> bytes:
    b = bytearray(raw_header("é".encode() * 10))
    b[148:156] = b"        "
    b[148:156] = b"%06o\0 " % (sum(b) - 256 * sum(1 for x in b if x > 127))
    return bytes(b)


END = bytes(1024)
PLAIN = raw_header(b"plain", size=3) + b"abc".ljust(512, b"\0")
CASES: dict[str, bytes] = {
    **{f"hostile {h[0]}": h[1] for h in HOSTILE},
    "ordinary": tar_bytes(
        [
            d("dir/", uid=3, gid=4, mode=0o700),
            f("dir/file", b"data" * 300, uid=5, mode=0o4755),
            f("dir/other", b"x", uid=5, mode=0o4755, mtime=1),
            sym("dir/link", "/etc/passwd"),
            hard("dir/hard", "dir/file"),
            Entry("fifo", tarfile.FIFOTYPE),
            Entry("null", tarfile.CHRTYPE, devmajor=1, devminor=3),
            f("dir/.wh.gone"),
            f("x", b"y", pax={"SCHILY.xattr.security.capability": "evil"}),
        ]
    ),
    "long names (PAX)": tar_bytes([f("a/" + "n" * 200, b"1"), sym("l", "t" * 300)]),
    "long names (GNU)": tar_bytes([f("a/" + "n" * 200, b"1"), sym("l", "t" * 300)], tarfile.GNU_FORMAT),
    "ustar prefix": tar_bytes([f("p" * 80 + "/" + "n" * 90, b"1")], tarfile.USTAR_FORMAT),
    "big owner (GNU base-256)": tar_bytes([f("a", uid=9_000_000)], tarfile.GNU_FORMAT),
    "negative mtime": tar_bytes([f("a", mtime=-5)], tarfile.GNU_FORMAT),
    "huge mtime": tar_bytes([f("a", mtime=8**11 - 1)], tarfile.USTAR_FORMAT),
    "old-style directory": raw_header(b"olddir/", typ=b"\0") + END,
    "signed checksum": _signed_checksum() + END,
    "bad checksum": _patch(PLAIN, 148, b"0000000\0", checksum=False) + END,
    "checksum with 8s": _patch(PLAIN, 148, b"0000008\0", checksum=False) + END,
    "checksum not octal": _patch(PLAIN, 148, b"+000001\0", checksum=False) + END,
    "mode not octal": _patch(PLAIN, 100, b"0_00644\0") + END,
    "uid with a sign": _patch(PLAIN, 108, b"-000001\0") + END,
    "negative uid (base-256)": _patch(PLAIN, 108, b"\xff" * 8) + END,
    "negative mtime (base-256)": _patch(PLAIN, 136, b"\xff" * 12) + END,
    "a field cached, then another": PLAIN + _patch(PLAIN, 108, b"7777777\0") + END,
    "unknown type": raw_header(b"s", typ=b"S") + END,
    "no end marker": PLAIN,
}


def _read(reader: object, data: bytes) -> list[object]:
    """What a reader yields for ``data`` (data consumed as the converter does), or its refusal."""
    got: list[object] = []
    try:
        with tarfmt.Source(io.BytesIO(data), 1 << 30 if len(data) > 1 << 20 else 1 << 20) as src:  # type: ignore[arg-type]
            for m in reader(src):  # type: ignore[operator]
                got.append(astuple(m))
                got.append(src.read_exact(min(m.size, 7), str(m)))
    except LayerError as e:
        got.append(("refused", str(e)))
    return got


@pytest.mark.parametrize("data", list(CASES.values()), ids=list(CASES))
def test_the_fast_reader_reads_as_tarfmt_does(data: bytes) -> None:
    assert _read(members, data) == _read(tarfmt.members, data)


def test_field_caches_stay_bounded() -> None:
    data = b"".join(_patch(PLAIN, 136, b"%011o\0" % i) for i in range(5000)) + END
    assert len(_read(members, data)) == 2 * 5000


@pytest.mark.parametrize(
    "fields",
    [
        ((b"a",), b"0", 0o644, 1_000_000, 1_000_007, 5, 1_700_000_000_000_000_000, b""),
        ((b"d", b"e"), b"5", 0o4755, 3, 4, 0, 0, b""),
        ((b"n" * 100,), b"2", 0o777, 0, 0, 0, 8**12 * 1_000_000_000, b"t" * 100),
        ((b"w",), b"3", 0, 0, 0, 0, 0, b""),
        ((b"big",), b"0", 0o600, 2**40, 2**40, 8**11 - 1, 1, b""),
    ],
)
def test_the_header_writer_makes_ustar_bytes(
    fields: tuple[tuple[bytes, ...], bytes, int, int, int, int, int, bytes],
) -> None:
    parts, typ, mode, uid, gid, size, mtime_ns, link = fields
    conv = _Converter(-1, 0)
    conv._header(parts, typ, mode, uid, gid, size, mtime_ns, link=link)
    conv._header(parts, typ, mode, uid, gid, size, mtime_ns, link=link)  # from its cache
    mtime = min(mtime_ns // 1_000_000_000, 8**11 - 1)
    want = _ustar(b"/".join(parts), typ, mode, uid, gid, size, mtime, link)
    assert bytes(conv.buf) == want * 2
    assert tarfile.TarInfo.frombuf(want, "utf-8", "surrogateescape").chksum == int(want[148:154], 8)


def test_a_feed_hands_chunks_to_a_reader_thread_in_order() -> None:
    chunks = [os.urandom(n) for n in (1, 511, 4096, 1 << 20, 7)]
    feed = ChunkFeed(depth=2)
    got: list[bytes] = []

    def read() -> None:
        while data := feed.read(3000):
            got.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    for c in chunks:
        feed.put(c)
    feed.close()
    reader.join(timeout=60)
    assert not reader.is_alive()
    assert b"".join(got) == b"".join(chunks) and max(map(len, got)) <= 3000


def test_a_stopped_feed_frees_its_writer_and_its_reader() -> None:
    feed = ChunkFeed(depth=1)
    feed.put(b"a")  # full now: the next put would wait for the reader
    writer = threading.Thread(target=lambda: [feed.put(b"b") for _ in range(100)])
    writer.start()
    waiting = ChunkFeed(depth=1)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(waiting.read(10)))
    reader.start()
    feed.stop()
    waiting.stop()
    writer.join(timeout=60)
    reader.join(timeout=60)
    assert not writer.is_alive() and not reader.is_alive()
    assert got == [b""]  # the end of the stream: the converter stops on a truncated tar


def test_a_layer_converts_from_a_feed(tmp_path: Path) -> None:
    from warren.layers.image_tar import convert_layer

    data = tar_bytes([f(f"d/f{i}", os.urandom(3000 + i)) for i in range(300)])
    want = tmp_path / "want.tar"
    fd = os.open(want, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        convert_layer(io.BytesIO(data), fd, uid_base=1000)  # type: ignore[arg-type]
    finally:
        os.close(fd)
    feed = ChunkFeed(depth=2)
    feeder = threading.Thread(
        target=lambda: ([feed.put(data[i : i + 65536]) for i in range(0, len(data), 65536)], feed.close())
    )
    feeder.start()
    r, w = os.pipe()
    out = bytearray()
    drain = threading.Thread(target=lambda: [out.extend(c) for c in iter(lambda: os.read(r, 1 << 20), b"")])
    drain.start()
    try:
        stats = convert_layer(feed, w, uid_base=1000)
    finally:
        os.close(w)
        feeder.join(timeout=60)
        drain.join(timeout=60)
        os.close(r)
    assert stats.files == 300 and bytes(out) == want.read_bytes()
