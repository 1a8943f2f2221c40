"""Layer tars a hostile template author or image importer would write, by hand where `tarfile`
refuses to write them (test_attack_layer_images.py sends them to real agents)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable

from tests.integration.agent.layer_tars import layer_tar

END = bytes(1024)  # the end-of-archive marker


def info(name: str, typ: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type = typ
    for k, v in kw.items():
        setattr(i, k, v)
    return i


def sym(name: str, target: str) -> tarfile.TarInfo:
    return info(name, tarfile.SYMTYPE, linkname=target)


def hard(name: str, target: str) -> tarfile.TarInfo:
    return info(name, tarfile.LNKTYPE, linkname=target)


def entries(*members: tarfile.TarInfo, data: dict[str, bytes] | None = None) -> bytes:
    """A PAX tar of ``members`` in order (regular files get ``data[name]`` or nothing)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            body = (data or {}).get(m.name, b"")
            if m.type == tarfile.REGTYPE:
                m.size = len(body)
            tar.addfile(m, io.BytesIO(body) if m.size else None)
    return buf.getvalue()


def header(m: tarfile.TarInfo, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    return m.tobuf(fmt, tarfile.ENCODING, "surrogateescape")


def with_checksum(blk: bytes) -> bytes:
    blk = blk[:148] + b" " * 8 + blk[156:]
    return blk[:148] + b"%06o\0 " % sum(blk) + blk[156:]


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(b"%d" % n) + len(body) != n:
        n = len(b"%d" % n) + len(body)
    return b"%d" % n + body


def pax_then(records: bytes, m: tarfile.TarInfo) -> bytes:
    """A PAX `x` header carrying ``records`` raw, then ``m``'s own ustar header."""
    x = info("././@PaxHeader", b"x", size=len(records))
    return (
        header(x, tarfile.USTAR_FORMAT)
        + records
        + bytes(-len(records) % 512)
        + header(m, tarfile.USTAR_FORMAT)
    )


def negative_uid() -> bytes:
    blk = bytearray(header(info("neg"), tarfile.USTAR_FORMAT))
    blk[108:116] = b"\xff" * 8  # GNU base-256, negative
    return with_checksum(bytes(blk)) + END


def bad_checksum() -> bytes:
    blk = bytearray(header(info("x"), tarfile.USTAR_FORMAT))
    blk[148:156] = b"0000001\0"
    return bytes(blk) + END


def claims_ten_terabytes() -> bytes:
    return header(info("huge", size=10 << 40)) + b"\0" * 4096 + END


def truncated() -> bytes:
    whole = layer_tar({"f": b"x" * 5000})
    return whole[:1536]  # inside the file's data


def deep(levels: int) -> bytes:
    return entries(info("a/" * levels + "f"))


def many_zero_files(n: int) -> bytes:
    """``n`` empty files as bare ustar headers (no PAX): the cheapest entries a tar can hold.
    The bytes `tarfile` writes for them, made from one header (a name and a checksum each): a
    `TarInfo` apiece was 4 CPU-s for 200,000."""
    blank = bytearray(header(info(""), tarfile.USTAR_FORMAT))
    blank[148:156] = b" " * 8
    base = sum(blank)
    out = bytearray()
    for i in range(n):
        name = b"d%d/f%d" % (i // 1000, i)
        blk = bytearray(blank)
        blk[: len(name)] = name
        blk[148:155] = b"%06o\0" % (base + sum(name))
        out += blk
    return bytes(out + END)


# name → a tar the agent must refuse (INVALID_ARGUMENT), with or without images.
REFUSED: dict[str, Callable[[], bytes]] = {
    "dotdot absolute": lambda: entries(info("/../../../escaped-abs")),
    "dotdot inside": lambda: entries(info("a/../../escaped-rel")),
    "dotdot in a PAX path": lambda: pax_then(pax_record(b"path", b"x/../../escaped-pax"), info("safe")),
    "file through a symlink to /": lambda: entries(sym("etc", "/"), info("etc/escaped-through")),
    "file through a relative symlink": lambda: entries(sym("up", "../../../.."), info("up/escaped-up")),
    "dir through a symlink": lambda: entries(sym("t", "/tmp"), info("t/escaped-sub", tarfile.DIRTYPE)),
    "hard link to a host path": lambda: entries(hard("h", "/etc/shadow")),
    "hard link with dotdot": lambda: entries(hard("h", "../../../../etc/shadow")),
    "hard link through a symlink": lambda: entries(sym("s", "/etc"), hard("h", "s/shadow")),
    "hard link to a later file": lambda: entries(hard("h", "later"), info("later")),
    "hard link cycle": lambda: entries(hard("a", "b"), hard("b", "a")),
    "hard link to itself": lambda: entries(hard("a", "a")),
    "hard link to a directory": lambda: entries(info("d", tarfile.DIRTYPE), hard("h", "d")),
    "whiteout of dotdot": lambda: entries(info("d/.wh..."), info("d/x")),
    "whiteout of dot": lambda: entries(info(".wh..")),
    "whiteout of nothing": lambda: entries(info(".wh.")),
    "whiteout name as a directory": lambda: entries(info(".wh.x/.wh..wh..opq")),
    "opaque marker as a directory": lambda: entries(info(".wh..wh..opq/inside")),
    "a path of 1 MiB": lambda: pax_then(pax_record(b"path", b"p/" * (500 << 10)), info("safe")),
    "a PAX header over 1 MiB": lambda: pax_then(pax_record(b"comment", b"c" * (2 << 20)), info("safe")),
    "a GNU long name of 1 MiB": lambda: (
        header(info("n" * 200 + "/" + "m" * (1 << 20)), tarfile.GNU_FORMAT) + END
    ),
    "a name component of 300 bytes": lambda: entries(info("c" * 300)),
    "10000 levels deep": lambda: deep(10_000),
    "300 levels deep": lambda: deep(300),
    "GNU sparse member": lambda: header(info("sparse", tarfile.GNUTYPE_SPARSE), tarfile.GNU_FORMAT) + END,
    "PAX sparse records": lambda: pax_then(pax_record(b"GNU.sparse.major", b"1"), info("sp")),
    "a file claiming 10 TB": claims_ten_terabytes,
    "truncated inside data": truncated,
    "no end-of-archive marker": lambda: layer_tar({"f": b"x"})[:1024],
    "owner outside the sandbox range": lambda: entries(info("o", uid=70000)),
    "negative owner": negative_uid,
    "bad checksum": bad_checksum,
    "unknown member type": lambda: entries(info("v", b"V")),
    "NUL in a PAX path": lambda: pax_then(pax_record(b"path", b"a\0b"), info("safe")),
}


def deep_distinct_dirs(n: int, levels: int = 250) -> bytes:
    """``n`` files, each ``levels`` deep under a top directory of its own: ~2 KiB of tar each,
    but every level of every path is a new directory to remember."""
    return b"".join(header(info(f"{i}/" + "a/" * levels + "f")) for i in range(n)) + END
