"""OCI layer tar (untrusted) → the tar ``tar2sqfs`` turns into a squashfs layer image, streamed.

An agent may install a layer as a read-only squashfs image, loop-mounted as the overlay
lowerdir, instead of extracting it file by file (docs/templates.md §2): creating thousands of
small files costs ~75 µs each, packing them into an image a few. This module rewrites the layer
tar entry by entry into a tar whose every entry is already what the image must hold, so that
``tar2sqfs`` (run unprivileged) makes no decision of its own:

- every member passes the checks of ``scan_layer`` (the same refusals with the same messages as
  extraction: names, ``..``, owners, links inside the layer, sizes, member counts);
- owners are shifted to ``uid_base + N`` (PAX ``uid``/``gid``), like extraction;
- ``.wh.<name>`` becomes overlayfs' whiteout (a 0/0 character device owned by host root),
  ``.wh..wh..opq`` the PAX xattr ``trusted.overlay.opaque=y`` on its directory; other
  ``.wh..wh.*`` and device nodes are skipped; the tar's own xattrs are dropped;
- parent directories the tar does not list are written first, 0755 and owned by the mapped
  root, as extraction makes them; the root entry is ignored (``tar2sqfs -d`` makes it 0700 root).

An image cannot take back an entry it was given, so a layer whose tar does what only extraction
can do (a member replacing an earlier one of the same name, a directory listed after its
contents, an opaque marker that does not directly follow its directory) raises
:class:`NeedsExtraction`: the layer is valid, and the caller extracts it instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast
from zlib import adler32

from warren.layers.extract import _Namespace, _owner, _whiteout_target
from warren.layers.hashing import LayerError
from warren.layers.stats import LayerStats
from warren.layers.tar_stream import members
from warren.layers.tarfmt import (
    BLK,
    BLOCK,
    CHR,
    DIR,
    FIFO,
    LNK,
    OPAQUE,
    REGULAR,
    SYM,
    WHITEOUT,
    ZERO_BLOCK,
    Member,
    Readable,
    Source,
    normalize,
)

OPAQUE_PAX = b"SCHILY.xattr.trusted.overlay.opaque"
IDS_CACHED = 4096  # (mode, uid, gid) header fields remembered per layer
FLUSH_AT = 1 << 20  # output buffered up to this, then written in one go
INLINE_MAX = 64 << 10  # file data up to this goes through the buffer; more is copied to the fd


class NeedsExtraction(LayerError):
    """A valid layer an image cannot hold as streamed: extract it instead."""


def convert_layer(
    src: Readable | Path | Source, out_fd: int, *, uid_base: int, max_bytes: int | None = None
) -> LayerStats:
    """Write the image tar of layer tar ``src`` to ``out_fd`` (a pipe to ``tar2sqfs``), see above.
    Raises ``LayerError`` (refused, as extraction would) or ``NeedsExtraction``. A ``Source``
    given brings its own limit."""
    conv = _Converter(out_fd, uid_base)
    with src if isinstance(src, Source) else Source(src, max_bytes) as source:
        for m in members(source):
            conv.member(m, source)
        conv.finish()
    return conv.ns.stats()


class _Converter:
    def __init__(self, fd: int, uid_base: int) -> None:
        self.fd = fd
        self.uid_base = uid_base
        self.ns = _Namespace()
        self.buf = bytearray()
        self.emitted: set[tuple[bytes, ...]] = set()
        self.ids: dict[tuple[int, int, int], tuple[bytes, int]] = {}  # fields, their byte sum
        self.last_parents: tuple[bytes, ...] | None = None  # all emitted (emitted only grows)
        # A directory is held back until the next member: an opaque marker right after it
        # becomes its xattr.
        self.pending: tuple[tuple[bytes, ...], Member] | None = None

    def member(self, m: Member, source: Source) -> None:
        parts = normalize(m.name)
        uid, gid = _owner(m, self.uid_base)
        if not parts:
            return
        base = parts[-1]
        known_before = parts in self.ns.kinds
        self.ns.member(parts, m)  # every check extraction makes, same messages
        if base == OPAQUE:
            self._opaque(parts[:-1], m)
            return
        if self.pending is not None:
            self._flush_pending()
        if base.startswith(WHITEOUT):
            if base.startswith(b".wh..wh."):
                return
            target = (*parts[:-1], _whiteout_target(base, m))
            self._parents(target[:-1], m)
            self._claim(target, m)
            self._header(target, CHR, 0, 0, 0, 0, m.mtime_ns)
            return
        if m.type in (CHR, BLK):
            return
        if known_before:
            raise NeedsExtraction(f"member {m.label()} lists a name a second time")
        self._parents(parts[:-1], m)
        if m.type == DIR:
            self.pending = (parts, m)
            return
        self._claim(parts, m)
        if m.type in REGULAR:
            self._header(parts, REGULAR[0], m.mode, uid, gid, m.size, m.mtime_ns)
            self._data(m, source)
        elif m.type == SYM:
            self._header(parts, SYM, m.mode, uid, gid, 0, m.mtime_ns, link=m.linkname)
        elif m.type == LNK:
            link = b"/".join(normalize(m.linkname))
            self._header(parts, LNK, m.mode, uid, gid, 0, m.mtime_ns, link=link)
        elif m.type == FIFO:
            self._header(parts, FIFO, m.mode, uid, gid, 0, m.mtime_ns)

    def finish(self) -> None:
        self._flush_pending()
        self.buf += ZERO_BLOCK * 2
        self._flush()

    # ------------------------------------------------------------------ directories

    def _opaque(self, parts: tuple[bytes, ...], m: Member) -> None:
        if self.pending is not None and self.pending[0] == parts:
            dparts, dm = self.pending
            self.pending = None
            self._claim(dparts, dm)
            uid, gid = _owner(dm, self.uid_base)
            self._header(dparts, DIR, dm.mode, uid, gid, 0, dm.mtime_ns, opaque=True)
            return
        self._flush_pending()
        if not parts or parts in self.emitted:
            raise NeedsExtraction(f"member {m.label()}: an opaque marker apart from its directory")
        self._parents(parts[:-1], m)
        self._claim(parts, m)
        self._header(parts, DIR, 0o755, self.uid_base, self.uid_base, 0, 0, opaque=True)

    def _flush_pending(self) -> None:
        if self.pending is None:
            return
        parts, m = self.pending
        self.pending = None
        self._claim(parts, m)
        uid, gid = _owner(m, self.uid_base)
        self._header(parts, DIR, m.mode, uid, gid, 0, m.mtime_ns)

    def _parents(self, parts: tuple[bytes, ...], m: Member) -> None:
        if parts == self.last_parents:  # siblings follow each other: their parents are out
            return
        for i in range(1, len(parts) + 1):
            p = parts[:i]
            if p not in self.emitted:
                self._claim(p, m)
                self._header(p, DIR, 0o755, self.uid_base, self.uid_base, 0, 0)
        self.last_parents = parts

    def _claim(self, parts: tuple[bytes, ...], m: Member) -> None:
        if parts in self.emitted:
            raise NeedsExtraction(f"member {m.label()} lists a name a second time")
        self.emitted.add(parts)

    # ----------------------------------------------------------------------- output

    def _header(
        self,
        parts: tuple[bytes, ...],
        typ: bytes,
        mode: int,
        uid: int,
        gid: int,
        size: int,
        mtime_ns: int,
        *,
        link: bytes = b"",
        opaque: bool = False,
    ) -> None:
        path = b"/".join(parts)
        mtime = min(max(mtime_ns // 1_000_000_000, 0), 8**11 - 1)
        if len(path) > 100 or len(link) > 100 or opaque or size >= 8**11:
            # What a ustar header cannot hold goes in a PAX record before it.
            records = [_record(b"path", path), _record(b"size", b"%d" % size)]
            if link:
                records.append(_record(b"linkpath", link))
            if opaque:
                records.append(_record(OPAQUE_PAX, b"y"))
            pax = b"".join(records)
            self.buf += _ustar(b"pax", b"x", 0o644, 0, 0, len(pax), 0, b"")
            self.buf += pax + bytes(-len(pax) % BLOCK)
            self.buf += _ustar(path[-100:], typ, mode, uid, gid, size, mtime, link[:100])
            return
        # The common header, without summing 512 bytes: _ustar's bytes (test_image_tar.py).
        ids = self.ids.get((mode, uid, gid))
        if ids is None:
            field = b"%07o\0" % mode + _id(uid) + _id(gid)
            ids = (field, sum(field))
            if len(self.ids) < IDS_CACHED:
                self.ids[(mode, uid, gid)] = ids
        numbers = b"%011o\0%011o\0" % (size, mtime)
        check = _FIXED_SUM + ids[1] + _sum(numbers) + typ[0] + _sum(path) + _sum(link)
        self.buf += b"".join(
            (
                path.ljust(100, b"\0"),
                ids[0],
                numbers,
                b"%06o\0 " % check,
                typ,
                link.ljust(100, b"\0"),
                _HEADER_TAIL,
            )
        )

    def _data(self, m: Member, source: Source) -> None:
        if m.size <= INLINE_MAX:
            # m, not str(m): the message is only formatted on an error
            self.buf += source.read_exact(m.size, cast(str, m))
            self.buf += _ZEROS[: -m.size % BLOCK]
            if len(self.buf) >= FLUSH_AT:
                self._flush()
            return
        self._flush()
        source.copy_to(self.fd, m.size, m)
        self.buf += bytes(-m.size % BLOCK)

    def _flush(self) -> None:
        view = memoryview(self.buf)
        while view:
            view = view[os.write(self.fd, view) :]
        self.buf = bytearray()


def _record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(b"%d" % n) + len(body) != n:
        n = len(b"%d" % n) + len(body)
    return b"%d" % n + body


_HEADER_TAIL = b"ustar\x0000" + bytes(64) + b"0000000\x00" * 2 + bytes(167)  # magic .. end
_FIXED_SUM = sum(_HEADER_TAIL) + 8 * 0x20  # the tail, and the checksum field as 8 spaces


_ZEROS = memoryview(ZERO_BLOCK)


def _sum(b: bytes) -> int:
    """The sum of ``b``'s bytes (at most 100 here: under 65521, Adler-32's modulus): its
    low half is 1 + that sum, computed in C."""
    return (adler32(b) & 0xFFFF) - 1


def _id(n: int) -> bytes:
    """An owner field: octal, or GNU base-256 for the mapped ids (past 7 octal digits)."""
    return b"%07o\0" % n if n < 8**7 else b"\x80" + n.to_bytes(7, "big")


def _ustar(
    name: bytes, typ: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, link: bytes
) -> bytes:
    """A ustar header; a PAX record before it carries what does not fit (names, sizes)."""
    size_field = b"%011o\0" % size if size < 8**11 else b"\0" * 12
    head = b"".join(
        (
            name[:100].ljust(100, b"\0"),
            b"%07o\0" % mode,
            _id(uid),
            _id(gid),
            size_field,
            b"%011o\0" % min(max(mtime, 0), 8**11 - 1),
            b"        ",
            typ,
            link[:100].ljust(100, b"\0"),
        )
    )
    blk = head + _HEADER_TAIL
    return b"".join((head[:148], b"%06o\0 " % sum(blk), head[156:], _HEADER_TAIL))
