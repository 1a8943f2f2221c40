"""Tars for the layer tests, written with `tarfile` (the attacks write raw headers too)."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Entry:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000
    link: str = ""
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = field(default_factory=dict)


def f(name: str, data: bytes = b"", **kw: object) -> Entry:
    return Entry(name, tarfile.REGTYPE, data, **kw)  # type: ignore[arg-type]


def d(name: str, **kw: object) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=kw.pop("mode", 0o755), **kw)  # type: ignore[arg-type]


def sym(name: str, target: str, **kw: object) -> Entry:
    return Entry(name, tarfile.SYMTYPE, link=target, mode=0o777, **kw)  # type: ignore[arg-type]


def hard(name: str, target: str) -> Entry:
    return Entry(name, tarfile.LNKTYPE, link=target)


def tar_bytes(entries: list[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = e.type, e.mode, e.uid, e.gid, e.mtime
            ti.linkname, ti.devmajor, ti.devminor = e.link, e.devmajor, e.devminor
            ti.pax_headers = dict(e.pax)
            ti.size = len(e.data) if e.type == tarfile.REGTYPE else 0
            t.addfile(ti, io.BytesIO(e.data) if ti.size else None)
    return buf.getvalue()


def write_tar(path: Path, entries: list[Entry], fmt: int = tarfile.PAX_FORMAT) -> Path:
    path.write_bytes(tar_bytes(entries, fmt))
    return path


def raw_header(name: bytes, *, size: int = 0, typ: bytes = b"0", uid: int = 0, link: bytes = b"") -> bytes:
    """A ustar header block with a correct checksum, whatever the fields say."""
    blk = bytearray(512)
    blk[0 : len(name)] = name
    blk[100:108] = b"0000644\0"
    blk[108:116] = b"%07o\0" % uid
    blk[116:124] = b"0000000\0"
    blk[124:136] = b"%011o\0" % size
    blk[136:148] = b"00000000000\0"
    blk[156:157] = typ
    blk[157 : 157 + len(link)] = link
    blk[257:265] = b"ustar\x0000"
    blk[148:156] = b"        "
    blk[148:156] = b"%06o\0 " % sum(blk)
    return bytes(blk)
