"""What every template store backend shares (docs/templates.md §3): the :class:`LayerStore`
protocol, digest checks, and the spool that hashes a layer while it is written to a local
temporary file, so nothing lands under a layer's name before its bytes are known to match it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from warren.errors import InternalError, InvalidRequest, NotFound, PayloadTooLarge
from warren.layers import HashingWriter, LayerMeta

# Reads hand out, and writes flush, this much at a time: big enough that the per-chunk costs
# (a thread hop, a gRPC message) vanish next to the bytes, small enough to bound memory.
CHUNK = 1024 * 1024

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class DigestMismatch(InternalError):
    """A layer's bytes do not hash to the digest they were sent under (nothing was stored)."""

    code = "digest_mismatch"


def is_digest(value: str) -> bool:
    return bool(_DIGEST.match(value))


def check_digest(digest: str) -> str:
    """``digest`` if it is a lowercase sha256 hex (it becomes part of a path or an object key)."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise InvalidRequest(f"invalid layer digest: {digest[:80]!r}")
    return digest


def layer_key(digest: str) -> str:
    """The object name of a layer, below the store's root or prefix."""
    return f"layers/sha256/{check_digest(digest)}.tar"


def layer_missing(digest: str) -> NotFound:
    return NotFound(f"layer {digest} is not in the template store", code="layer_not_found")


class LayerStore(Protocol):
    """Content-addressed layer tars, shared by every CP replica (docs/templates.md §3)."""

    async def put(
        self, chunks: AsyncIterator[bytes], *, expect: str | None = None, max_bytes: int
    ) -> LayerMeta:
        """Store the bytes of ``chunks`` as a layer, hashing them on the way in. Raises
        :class:`DigestMismatch` when ``expect`` is given and differs, 413 ``layer_too_large``
        past ``max_bytes``; either way nothing is stored. A layer already present is kept."""
        ...

    def open(self, digest: str) -> AsyncIterator[bytes]:
        """The layer's bytes in :data:`CHUNK`-sized pieces; 404 ``layer_not_found`` (raised by
        the first iteration) when it is not stored."""
        ...

    async def exists(self, digest: str) -> bool: ...

    async def size(self, digest: str) -> int:
        """The layer's length in bytes; 404 ``layer_not_found`` when it is not stored."""
        ...

    async def delete(self, digest: str) -> None:
        """Remove the layer (nothing happens when it is not there)."""
        ...

    def list(self) -> AsyncIterator[str]:
        """Every stored layer's digest, in no particular order."""
        ...


@dataclass
class Spooled:
    """A layer written to a local temporary file, its digest and size known."""

    path: Path
    meta: LayerMeta

    def discard(self) -> None:
        _remove(self.path)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _write(w: HashingWriter, data: bytes | bytearray) -> None:
    # sha256 and write both release the GIL on large buffers: one thread hop per MiB.
    w.write(data)


def _finish(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())  # a rename after a crash must never name a torn file
    f.close()


async def spool(
    chunks: AsyncIterator[bytes], spool_dir: Path, *, expect: str | None, max_bytes: int
) -> Spooled:
    """Write ``chunks`` to a new 0600 file in ``spool_dir``, hashing every byte; the file is
    removed again when the stream fails, is too long or does not match ``expect``."""
    if expect is not None:
        check_digest(expect)
    fd, name = tempfile.mkstemp(dir=spool_dir, prefix=".spool-", suffix=".part")
    path = Path(name)
    f = os.fdopen(fd, "wb")
    w = HashingWriter(f)
    size = 0
    buf = bytearray()
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"layer larger than {max_bytes} bytes", code="layer_too_large")
            if not buf and len(chunk) >= CHUNK:
                await asyncio.to_thread(_write, w, chunk)  # a whole chunk: no copy
                continue
            buf += chunk
            if len(buf) >= CHUNK:
                await asyncio.to_thread(_write, w, buf)
                buf = bytearray()
        if buf:
            await asyncio.to_thread(_write, w, buf)
        await asyncio.to_thread(_finish, f)
        meta = w.meta()
        digest = meta.digest
        if expect is not None and digest != expect:
            raise DigestMismatch(f"layer bytes hash to {digest}, not {expect}; nothing was stored")
    except BaseException:
        f.close()
        _remove(path)
        raise
    return Spooled(path, meta)
