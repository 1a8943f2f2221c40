"""The template store as a directory (the default: ``<home>/store``; a shared volume when there
are several CP replicas). A layer is spooled to ``tmp/`` on the same filesystem, hashed, fsynced
and renamed to ``layers/sha256/<digest>.tar``: a reader never sees a partial layer."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from warren.cp.store.base import CHUNK, is_digest, layer_key, layer_missing, spool
from warren.layers import LayerMeta


class DirectoryStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._tmp = self.root / "tmp"
        self._layers = self.root / "layers" / "sha256"
        for d in (self.root, self._tmp, self._layers.parent, self._layers):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)  # layers hold tenants' files

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    def path_of(self, digest: str) -> Path:
        return self.root / layer_key(digest)

    async def put(
        self, chunks: AsyncIterator[bytes], *, expect: str | None = None, max_bytes: int
    ) -> LayerMeta:
        spooled = await spool(chunks, self._tmp, expect=expect, max_bytes=max_bytes)
        try:
            # Same bytes, same name: a layer already there is as good as this one.
            await asyncio.to_thread(os.replace, spooled.path, self.path_of(spooled.meta.digest))
        finally:
            spooled.discard()
        return spooled.meta

    async def open(self, digest: str) -> AsyncIterator[bytes]:
        path = self.path_of(digest)
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise layer_missing(digest) from None
        try:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield chunk
        finally:
            f.close()

    async def exists(self, digest: str) -> bool:
        return await asyncio.to_thread(self.path_of(digest).is_file)

    async def size(self, digest: str) -> int:
        try:
            return (await asyncio.to_thread(self.path_of(digest).stat)).st_size
        except FileNotFoundError:
            raise layer_missing(digest) from None

    async def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self.path_of(digest).unlink)

    async def list(self) -> AsyncIterator[str]:
        names = await asyncio.to_thread(os.listdir, self._layers)
        for name in names:
            digest, dot, ext = name.partition(".")
            if dot and ext == "tar" and is_digest(digest):
                yield digest
