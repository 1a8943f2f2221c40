"""The tar reader of the layer image converter, faster per member, and a feed that lets a
converter run in a thread while a layer arrives (docs/templates.md §2; session 8 in docs/benchmarks.md).

For a layer of many small files Python's cost per member, not bytes, is the limit:

- :func:`members` is ``tarfmt.members`` with two shortcuts that give the same answers: the
  checksum is summed in C (two Adler-32 halves, see ``_fast_check_sum``), and
  the mode/uid/gid/mtime fields, which repeat from member to member, are parsed once per distinct
  field (tests/unit/layers/test_tar_stream.py compares the two on every tar of the tests);
- :class:`ChunkFeed` is a ``Readable`` another thread fills with a layer's chunks as they
  arrive. The agent no longer uses it (since session 9 its converter runs in a process of its
  own, ``convert_server``, fed through a pipe).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from zlib import adler32

from warren.layers import tarfmt
from warren.layers.hashing import LayerError
from warren.layers.tarfmt import (
    MAX_MTIME_NS,
    Member,
    Source,
    _check_sum,
    _number,
    _write_all,
)

SPLICE_MIN = 64 << 10  # file data past this goes pipe to pipe (as image_tar.INLINE_MAX)
_CACHE_MAX = 4096  # distinct fields remembered per layer: bounded whatever the tar holds


class _Fields:
    """The header fields that repeat from member to member, parsed once each (bounded): mode,
    uid and gid together, and mtime. Parsed in tarfmt's order, so the same refusal comes first."""

    def __init__(self) -> None:
        self.ids: dict[bytes, tuple[int, int, int]] = {}
        self.mtimes: dict[bytes, int] = {}

    def ids_of(self, blk: bytes) -> tuple[int, int, int]:
        key = blk[100:124]
        got = self.ids.get(key)
        if got is None:
            mode = _number(blk[100:108], "mode") & 0o7777
            got = (mode, _number(blk[108:116], "uid"), _number(blk[116:124], "gid"))
            if len(self.ids) < _CACHE_MAX:
                self.ids[key] = got
        return got

    def mtime_ns_of(self, blk: bytes) -> int:
        key = blk[136:148]
        got = self.mtimes.get(key)
        if got is None:
            got = min(_number(key, "mtime", negative_is_zero=True) * 1_000_000_000, MAX_MTIME_NS)
            if len(self.mtimes) < _CACHE_MAX:
                self.mtimes[key] = got
        return got

    def header(self, blk: bytes) -> Member:
        """``tarfmt._header`` of a header with no PAX record or GNU long name before it."""
        name = blk[:100].partition(b"\0")[0]
        if blk[257:265] == b"ustar\x0000":  # POSIX: the prefix field extends the name
            prefix = blk[345:500].partition(b"\0")[0]
            if prefix:
                name = prefix + b"/" + name
        mode, uid, gid = self.ids_of(blk)
        size = _number(blk[124:136], "size")
        link = blk[157:257].partition(b"\0")[0]
        return Member(name, blk[156:157], mode, uid, gid, size, self.mtime_ns_of(blk), link)


def _fast_check_sum(blk: bytes) -> None:
    # Adler-32's low half is 1 + the sum of the bytes, modulo 65521, which 256 bytes (at most
    # 65280) never reach: two halves give the exact sum, in C. Anything but a plain octal
    # checksum that matches (a signed one, a malformed field, a mismatch) is tarfmt's to judge.
    unsigned = (adler32(blk[:256]) & 0xFFFF) + (adler32(blk[256:]) & 0xFFFF) - 2
    unsigned += 8 * 0x20 - sum(blk[148:156])
    digits = blk[148:156].partition(b"\0")[0].strip(b" ")
    if not (digits.isdigit() and b"8" not in digits and b"9" not in digits and int(digits, 8) == unsigned):
        _check_sum(blk)


def members(src: Source) -> Iterator[Member]:
    """``tarfmt.members``, with the shortcuts above (the same members, the same refusals)."""
    return tarfmt.members(src, _fast_check_sum, _Fields().header)


class PipeSource(Source):
    """A ``Source`` on a pipe (the converter's child reads the layer from the agent so): a large
    file's data goes on to another pipe (``tar2sqfs``' stdin) with splice(2), moved by the
    kernel, not copied through Python twice; everything else is read as from any stream."""

    def __init__(self, fd: int, limit: int | None) -> None:
        self._pipe = os.fdopen(fd, "rb", buffering=0, closefd=False)
        super().__init__(self._pipe, limit)
        self._in = fd

    def close(self) -> None:
        self._pipe.close()  # not the fd: its owner closes it
        super().close()

    def copy_to(self, fd: int, n: int, what: object) -> None:
        buffered = len(self._buf) - self._off
        if n - buffered < SPLICE_MIN:
            super().copy_to(fd, n, what)
            return
        self.check_room(n, what)
        _write_all(fd, memoryview(self._buf)[self._off :])
        self._buf, self._off = b"", 0
        self.pos += n
        n -= buffered
        while n:
            k = os.splice(self._in, fd, n)
            if not k:
                raise LayerError(f"{what}: truncated tar")
            n -= k


class ChunkFeed:
    """A ``Readable`` of chunks another thread puts in as they arrive, at most ``depth`` ahead
    of the reader (memory stays bounded whatever the layer's size)."""

    def __init__(self, depth: int = 16) -> None:
        self._q: queue.Queue[bytes | None] = queue.Queue(depth)
        self._rest = b""
        self._eof = False
        self._stopped = threading.Event()

    def put(self, chunk: bytes) -> None:
        """Blocks while the reader is ``depth`` chunks behind; dropped once it stopped reading."""
        self._put(chunk)

    def close(self) -> None:
        """The end of the stream."""
        self._put(None)

    def stop(self) -> None:
        """The reader is done (finished, failed or given up on): puts return at once, and a
        read waiting for a chunk gets the end of the stream."""
        self._stopped.set()
        while True:
            try:  # frees a put blocked on a full queue
                while True:
                    self._q.get_nowait()
            except queue.Empty:
                pass
            try:
                self._q.put_nowait(None)  # wakes a reader waiting on an empty one
                return
            except queue.Full:
                continue

    def _put(self, item: bytes | None) -> None:
        while not self._stopped.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def read(self, n: int = -1, /) -> bytes:
        if not self._rest:
            if self._eof:
                return b""
            item = self._q.get()
            if item is None:
                self._eof = True
                return b""
            self._rest = item
        if n < 0 or n >= len(self._rest):
            out, self._rest = self._rest, b""
        else:
            out, self._rest = self._rest[:n], self._rest[n:]
        return out
