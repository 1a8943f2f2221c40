"""The tar format as layers use it: a streaming reader of untrusted tars and member names.

The reader parses headers itself (ustar, PAX `x` records, GNU long names) instead of using
`tarfile`: it has to be fast (a layer fetch targets ≥ 200 MB/s, so file data is copied with
`copy_file_range` or 1 MiB writes, never through small buffers) and strict (every size, name and
number an attacker writes is checked before it is used). Data exists only for regular files,
as in Go's `archive/tar` and Python's `tarfile` (for every other type the size is ignored), so
the CP's scan and the agent's extraction see the same members as Docker would.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from warren.layers.hashing import CHUNK, LayerError, Readable

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
REG, AREG, CONT = b"0", b"\0", b"7"
LNK, SYM, CHR, BLK, DIR, FIFO = b"1", b"2", b"3", b"4", b"5", b"6"
PAX, GLOBAL_PAX, GNU_LONGNAME, GNU_LONGLINK = b"x", b"g", b"L", b"K"
REGULAR = (REG, AREG, CONT)
META_TYPES = (PAX, GLOBAL_PAX, GNU_LONGNAME, GNU_LONGLINK)
MEMBER_TYPES = (*REGULAR, LNK, SYM, CHR, BLK, DIR, FIFO)

MAX_META = 1 << 20  # one PAX record set or GNU long name
MAX_NAME = 4096  # PATH_MAX: a longer name could not be opened anyway
MAX_COMPONENT = 255  # NAME_MAX
MAX_DEPTH = 256  # directory levels: the extractor holds one fd per level
MAX_ID = 65535  # uids/gids inside a sandbox: the mapped range is 65536 wide
MAX_MEMBERS = 1_000_000  # per tar: what extraction remembers per name must stay bounded
MAX_MTIME_NS = (1 << 33) * 1_000_000_000  # year 2242: clamp, do not fail on odd clocks

WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"


@dataclass(slots=True)
class Member:
    name: bytes  # raw, as in the tar; `normalize` it before use
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int  # data bytes that follow (0 unless a regular file)
    mtime_ns: int
    linkname: bytes

    def label(self) -> str:
        return repr(self.name[:200].decode("utf-8", "replace"))

    def __str__(self) -> str:  # what error messages call it (formatted only on an error)
        return f"member {self.label()}"


def normalize(raw: bytes, what: str = "member") -> tuple[bytes, ...]:
    """A tar name as path components below the layer root: leading `/` and `./` dropped,
    empty and `.` components dropped, `..` anywhere refused (never resolved)."""
    parts = tuple(p for p in raw.split(b"/") if p and p != b".")
    problem = None
    if b"\0" in raw:
        problem = "NUL in name"
    elif len(raw) > MAX_NAME:
        problem = f"name longer than {MAX_NAME} bytes"
    elif b".." in parts:
        problem = "'..' in name"
    elif len(parts) > MAX_DEPTH:
        problem = f"deeper than {MAX_DEPTH} levels"
    elif len(raw) > MAX_COMPONENT and any(len(p) > MAX_COMPONENT for p in parts):
        problem = f"a name component is over {MAX_COMPONENT} bytes"
    elif WHITEOUT in raw and any(p.startswith(WHITEOUT) for p in parts[:-1]):
        problem = "a whiteout name as a directory"
    if problem:
        raise LayerError(f"{what} {raw[:200].decode('utf-8', 'replace')!r}: {problem}")
    return parts


class Source:
    """Sequential reads of a tar stream with a 1 MiB buffer, counting what is consumed against
    `limit`. A path is read through its own fd so file data can go kernel to kernel."""

    def __init__(self, src: Readable | Path | str, limit: int | None) -> None:
        self._fd: int | None = None
        self._f: Readable | None = None
        if isinstance(src, (str, os.PathLike)):
            self._fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        else:
            self._f = src
        self._buf = b""
        self._off = 0
        self.pos = 0  # tar bytes consumed
        self.limit = limit
        self._cfr = True  # copy_file_range works between these two files
        self._copy_buf: memoryview | None = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raw_read(self, n: int) -> bytes:
        if self._fd is not None:
            return os.read(self._fd, n)
        assert self._f is not None
        return self._f.read(n)

    def _raw_readinto(self, view: memoryview) -> int:
        if self._fd is not None:
            return os.readv(self._fd, [view])
        assert self._f is not None
        readinto = getattr(self._f, "readinto", None)
        if readinto is not None:
            return int(readinto(view))
        data = self._f.read(len(view))
        view[: len(data)] = data
        return len(data)

    def _fill(self, n: int) -> bool:
        """At least n bytes buffered, or False at the end of the stream."""
        have = len(self._buf) - self._off
        if have >= n:
            return True
        parts = [self._buf[self._off :]]
        while have < n:
            data = self._raw_read(max(CHUNK, n - have))
            if not data:
                break
            parts.append(data)
            have += len(data)
        self._buf = b"".join(parts)
        self._off = 0
        return have >= n

    def check_room(self, n: int, what: object) -> None:
        if self.limit is not None and self.pos + n > self.limit:
            raise LayerError(f"{what}: the layer is over its limit of {self.limit} bytes")

    def read_block(self) -> bytes | None:
        """The next 512-byte block; None at a clean end of stream."""
        if not self._fill(BLOCK):
            if len(self._buf) - self._off:
                raise LayerError("truncated tar: the stream ends inside a header")
            return None
        self.check_room(BLOCK, "header")
        return self._take(BLOCK)

    def read_exact(self, n: int, what: str) -> bytes:
        self.check_room(n, what)
        if not self._fill(n):
            raise LayerError(f"{what}: truncated tar")
        return self._take(n)

    def _take(self, n: int) -> bytes:
        """The next n bytes, already buffered (``_fill(n)`` said so)."""
        data = self._buf[self._off : self._off + n]
        self._off += n
        self.pos += n
        return data

    def skip(self, n: int, what: object) -> None:
        self.check_room(n, what)
        buffered = len(self._buf) - self._off
        if self._fd is not None and n > buffered:  # a seek: a file past its end fails later
            os.lseek(self._fd, n - buffered, os.SEEK_CUR)
            self._buf, self._off = b"", 0
            self.pos += n
            return
        while n:
            if not self._fill(1):
                raise LayerError(f"{what}: truncated tar")
            k = min(n, len(self._buf) - self._off)
            self._off += k
            self.pos += k
            n -= k

    def copy_to(self, fd: int, n: int, what: object) -> None:
        """Write the next n bytes of the stream to fd."""
        self.check_room(n, what)
        self.pos += n
        buffered = len(self._buf) - self._off
        if buffered:
            k = min(n, buffered)
            _write_all(fd, memoryview(self._buf)[self._off : self._off + k])
            self._off += k
            n -= k
        if n >= CHUNK // 4 and self._fd is not None and self._cfr:
            n = self._copy_range(fd, n, what)
        while n:
            if n < CHUNK:  # small rest: through the buffer, so the next header is read with it
                if not self._fill(n):
                    raise LayerError(f"{what}: truncated tar")
                _write_all(fd, memoryview(self._buf)[self._off : self._off + n])
                self._off += n
                return
            if self._copy_buf is None:
                self._copy_buf = memoryview(bytearray(CHUNK))
            view = self._copy_buf
            k = self._raw_readinto(view)
            if not k:
                raise LayerError(f"{what}: truncated tar")
            _write_all(fd, view[:k])
            n -= k

    def _copy_range(self, fd: int, n: int, what: object) -> int:
        assert self._fd is not None
        copy = os.copy_file_range
        while n:
            try:
                k = copy(self._fd, fd, n)
            except OSError as e:
                if copy is os.copy_file_range and e.errno == errno.EINVAL and _is_pipe(fd):
                    copy = os.splice  # to a pipe (the layer image converter): kernel to kernel
                    continue
                if e.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    self._cfr = False
                    return n
                raise
            if not k:
                raise LayerError(f"{what}: truncated tar")
            n -= k
        return 0


def _is_pipe(fd: int) -> bool:
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        k = os.write(fd, view)
        view = view[k:]


def _field(blk: bytes, start: int, end: int) -> bytes:
    return blk[start:end].split(b"\0", 1)[0]


def _number(field: bytes, what: str, *, negative_is_zero: bool = False) -> int:
    digits = field.partition(b"\0")[0].strip(b" ")
    if digits.isdigit():  # ASCII digits only: no sign, prefix or underscore reaches int()
        try:
            return int(digits, 8)
        except ValueError:
            raise LayerError(f"{what}: bad octal number {digits[:20]!r}") from None
    if not digits:
        return 0
    if field[0] & 0x80:  # GNU base-256; 0xff = negative, never valid here
        if field[0] != 0x80:
            if negative_is_zero and field[0] == 0xFF:
                return 0
            raise LayerError(f"{what}: negative number in header")
        return int.from_bytes(field[1:], "big")
    raise LayerError(f"{what}: bad octal number {digits[:20]!r}")


def _check_sum(blk: bytes) -> None:
    stored = _number(blk[148:156], "header checksum")
    unsigned = sum(blk) - sum(blk[148:156]) + 8 * 0x20
    if stored == unsigned:
        return
    signed = unsigned - 256 * sum(1 for b in blk[:148] + blk[156:] if b > 127)
    if stored != signed:
        raise LayerError(f"bad tar header checksum at {_field(blk, 0, 100)[:100]!r}")


def _parse_pax(data: bytes, meta: dict[bytes, bytes]) -> None:
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # padding some writers leave
            break
        sp = data.find(b" ", pos, pos + 20)
        length_field = data[pos:sp]
        if sp < 0 or not length_field.isdigit():
            raise LayerError("malformed PAX header record")
        end = pos + int(length_field)
        if end <= sp + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise LayerError("malformed PAX header record")
        key, eq, value = data[sp + 1 : end - 1].partition(b"=")
        if not eq:
            raise LayerError("malformed PAX header record")
        if key.startswith(b"GNU.sparse"):
            raise LayerError("sparse files are not supported in layers")
        meta[key] = value
        pos = end


def _pax_int(value: bytes, key: str) -> int:
    if not value.isdigit():
        raise LayerError(f"PAX {key} is not a decimal number: {value[:30]!r}")
    return int(value)


def _pax_time_ns(value: bytes) -> int:
    whole, _, frac = value.partition(b".")
    negative = whole.startswith(b"-")
    whole = whole.lstrip(b"-") or b"0"
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(whole) > 18:
        raise LayerError(f"PAX mtime is not a number: {value[:30]!r}")
    ns = int(whole) * 1_000_000_000 + int((frac[:9] or b"0").ljust(9, b"0"))
    return -ns if negative else ns


# name mode uid gid size mtime chksum type linkname magic+version uname gname major minor prefix
_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s")


def _header(blk: bytes, meta: dict[bytes, bytes], long_name: bytes | None, long_link: bytes | None) -> Member:
    name, mode, uid, gid, size, mtime, _, typ, link, magic, _, _, _, _, prefix = _USTAR.unpack_from(blk)
    name = name.partition(b"\0")[0]
    if magic == b"ustar\x0000":  # POSIX: the prefix field extends the name
        prefix = prefix.partition(b"\0")[0]
        if prefix:
            name = prefix + b"/" + name
    m = Member(
        long_name if long_name is not None else name,
        typ,
        _number(mode, "mode") & 0o7777,
        _number(uid, "uid"),
        _number(gid, "gid"),
        _number(size, "size"),
        _number(mtime, "mtime", negative_is_zero=True) * 1_000_000_000,  # GNU: before 1970
        long_link if long_link is not None else link.partition(b"\0")[0],
    )
    if not meta:
        m.mtime_ns = min(m.mtime_ns, MAX_MTIME_NS)
        return m
    if b"path" in meta:
        m.name = meta[b"path"]
    if b"linkpath" in meta:
        m.linkname = meta[b"linkpath"]
    if b"size" in meta:
        m.size = _pax_int(meta[b"size"], "size")
    if b"uid" in meta:
        m.uid = _pax_int(meta[b"uid"], "uid")
    if b"gid" in meta:
        m.gid = _pax_int(meta[b"gid"], "gid")
    if b"mtime" in meta:
        m.mtime_ns = _pax_time_ns(meta[b"mtime"])
    m.mtime_ns = min(max(m.mtime_ns, 0), MAX_MTIME_NS)
    return m


def _meta_data(src: Source, size: int, what: str) -> bytes:
    if size > MAX_META:
        raise LayerError(f"{what} of {size} bytes (over {MAX_META})")
    data = src.read_exact(size, what)
    src.skip(-size % BLOCK, what)
    return data


def members(
    src: Source,
    check_sum: Callable[[bytes], None] = _check_sum,
    plain_header: Callable[[bytes], Member] | None = None,
) -> Iterator[Member]:
    """The tar's members in order. A regular file's data must be consumed with
    `src.copy_to(fd, m.size, ...)` before the next member is asked for, or it is skipped.
    ``check_sum`` and ``plain_header`` (a header with no PAX record or long name before it) may
    be faster equivalents (``tar_stream.members``): the same members, the same refusals."""
    meta: dict[bytes, bytes] = {}
    long_name: bytes | None = None
    long_link: bytes | None = None
    count = 0
    while True:
        blk = src.read_block()
        if blk is None:
            raise LayerError("truncated tar: no end-of-archive marker")
        if blk == ZERO_BLOCK:
            return
        check_sum(blk)
        typ = blk[156:157]
        if typ in META_TYPES:
            size = _number(blk[124:136], "size")
            data = _meta_data(src, size, f"{typ.decode()} header")
            if typ == PAX:
                _parse_pax(data, meta)
            elif typ == GNU_LONGNAME:
                long_name = data.split(b"\0", 1)[0]
            elif typ == GNU_LONGLINK:
                long_link = data.split(b"\0", 1)[0]
            continue  # global PAX records are ignored: they would apply to the whole stream
        if plain_header is None or meta or long_name is not None or long_link is not None:
            m = _header(blk, meta, long_name, long_link)
            meta, long_name, long_link = {}, None, None
        else:
            m = plain_header(blk)
        count += 1
        if count > MAX_MEMBERS:
            raise LayerError(f"more than {MAX_MEMBERS} members in one tar")
        if typ == AREG and m.name.endswith(b"/"):  # old tars' directories, as tarfile and Go read them
            m.type = typ = DIR
        if typ not in MEMBER_TYPES:
            raise LayerError(f"member {m.label()}: unsupported tar type {typ!r}")
        if typ not in REGULAR:
            m.size = 0
        src.check_room(m.size + (-m.size % BLOCK), m)
        before = src.pos
        yield m
        left = m.size - (src.pos - before)
        if left < 0:
            raise LayerError(f"{m}: read past its data")
        src.skip(left + (-m.size % BLOCK), m)
