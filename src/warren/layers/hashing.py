"""Layer digests: the lowercase sha256 hex of a layer tar's bytes, and its size."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1 << 20  # big reads: hashing runs at ~1.5 GB/s, Python's per-call cost must not show


class Readable(Protocol):
    """What a layer is read from besides a path: a binary file, or anything with `read`."""

    def read(self, n: int = -1, /) -> bytes: ...


class LayerError(ValueError):
    """A layer or image is malformed, hostile or over a limit; the message names the member."""


@dataclass(frozen=True)
class LayerMeta:
    digest: str  # lowercase sha256 hex, no "sha256:" prefix
    size: int


class HashingWriter:
    """Wraps a binary file: counts and sha256-hashes every byte written through it."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._sha.update(data)
        self.size += len(data)
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    def meta(self) -> LayerMeta:
        return LayerMeta(self._sha.hexdigest(), self.size)


class HashingReader:
    """Wraps a binary file: counts and sha256-hashes every byte read through it (so the agent
    can hash a layer while `extract_layer` consumes it, in one pass)."""

    def __init__(self, src: Readable) -> None:
        self._src = src
        self._sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._src.read(n)
        self._sha.update(data)
        self.size += len(data)
        return data

    def readinto(self, view: memoryview, /) -> int:
        readinto = getattr(self._src, "readinto", None)
        if readinto is None:
            data = self.read(len(view))
            view[: len(data)] = data
            return len(data)
        n = int(readinto(view))
        self._sha.update(view[:n])
        self.size += n
        return n

    def meta(self) -> LayerMeta:
        return LayerMeta(self._sha.hexdigest(), self.size)


def digest_file(path: str | os.PathLike[str]) -> LayerMeta:
    sha = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(Path(path), "rb", buffering=0) as f:
        while n := f.readinto(buf):
            sha.update(view[:n])
            size += n
    return LayerMeta(sha.hexdigest(), size)


def check_digest(digest: str) -> str:
    """A digest as the store names layers: 64 lowercase hex characters."""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise LayerError(f"not a sha256 hex digest: {digest[:80]!r}")
    return digest
