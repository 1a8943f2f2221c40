"""Uploads and downloads of E2B's envd ``/files`` (docs/e2b.md §3.2): file metadata from
``X-Metadata-<key>`` headers, gzip both ways, and the bounds on each.

- **Metadata** becomes the file's ``user.e2b.<key>`` extended attributes, set by the guest on
  the new file (an upload replaces the file, so its metadata is exactly the upload's). Keys are
  lowercased HTTP tokens; keys, values and their number are bounded here (an upload's headers
  are the client's).
- **gzip uploads** (``Content-Encoding: gzip``) are inflated as they stream, a bounded piece at
  a time, and refused with 413 once the inflated size passes the upload cap: a gzip bomb costs
  the CP one chunk of memory and the sandbox nothing (the partial file is discarded).
- **The upload's total** (every file of it, a gzip body both as sent and inflated) is at most
  the platform's file limit (``UploadTotal``).
- **gzip downloads** (``Accept-Encoding: gzip``) are deflated on the fly, chunk by chunk.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from warren.errors import InvalidRequest, PayloadTooLarge

METADATA_HEADER = "x-metadata-"
MAX_METADATA_KEYS = 32
MAX_METADATA_KEY = 128  # bytes, after the header prefix
MAX_METADATA_VALUE = 4096
MAX_METADATA_TOTAL = 16 * 1024  # keys and values together, well within one inode's xattr space
_KEY = re.compile(r"[a-z0-9!#$%&'*+\-.^_`|~]+")
_VALUE = re.compile(r"[\x20-\x7e]*")
# Inflated bytes produced per step: a chunk of a bomb never turns into more than this at once.
_INFLATE_STEP = 64 * 1024
_GZIP = 16 + zlib.MAX_WBITS  # zlib's wbits for the gzip container only


def metadata_from_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The ``X-Metadata-<key>: <value>`` pairs as a map (key lowercased), or 400 past a bound
    or for a key or value E2B's SDK could not have sent (HTTP token keys, printable ASCII)."""
    out: dict[str, str] = {}
    total = 0
    for name, value in headers:
        lname = name.lower()
        if not lname.startswith(METADATA_HEADER):
            continue
        key = lname[len(METADATA_HEADER) :]
        if not key or len(key) > MAX_METADATA_KEY or not _KEY.fullmatch(key):
            raise InvalidRequest(f"invalid metadata key (an HTTP token of 1..{MAX_METADATA_KEY} characters)")
        if len(value) > MAX_METADATA_VALUE or not _VALUE.fullmatch(value):
            raise InvalidRequest(
                f"invalid metadata value for {key!r} (printable ASCII, at most {MAX_METADATA_VALUE} bytes)"
            )
        if key in out:
            raise InvalidRequest(f"metadata key {key!r} given twice")
        out[key] = value
        total += len(key) + len(value)
        if len(out) > MAX_METADATA_KEYS or total > MAX_METADATA_TOTAL:
            raise InvalidRequest(
                f"too much metadata (at most {MAX_METADATA_KEYS} keys and {MAX_METADATA_TOTAL} bytes)"
            )
    return out


class UploadTotal:
    """The bytes of one upload, all its files together, at most ``cap`` (the platform's file
    limit, ``WARREN_MAX_UPLOAD_BYTES``): 413 past it, and the file being written is discarded.
    Until session 12 an octet-stream upload and the sum of a multipart one's files had no bound
    but the sandbox's disk (100 files of the cap each in one body)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.seen = 0

    async def count(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self.seen += len(chunk)
            if self.seen > self.cap:
                raise PayloadTooLarge(f"the upload is larger than {self.cap} bytes in all")
            yield chunk


async def gunzip(chunks: AsyncIterator[bytes], cap: int) -> AsyncIterator[bytes]:
    """The inflated bytes of a gzip stream (concatenated members too), at most ``cap`` of them
    (413 beyond); a body that is not gzip or ends mid-member is 400."""
    inflater = zlib.decompressobj(_GZIP)
    produced = 0
    started = False
    async for chunk in chunks:
        data = chunk
        while data or started:
            started = True
            try:
                out = inflater.decompress(data, _INFLATE_STEP)
            except zlib.error:
                raise InvalidRequest("the body is not valid gzip (Content-Encoding: gzip)") from None
            produced += len(out)
            if produced > cap:
                raise PayloadTooLarge(f"the inflated upload is larger than {cap} bytes")
            if out:
                yield out
            if inflater.eof:  # the next member, if any, starts in what is left
                data = inflater.unused_data
                inflater = zlib.decompressobj(_GZIP)
                started = False
                continue
            data = inflater.unconsumed_tail
            if not data and len(out) < _INFLATE_STEP:
                break  # this chunk is used up (a full step may have more output pending)
    if started and not inflater.eof:
        raise InvalidRequest("the gzip body ended before its end (truncated upload)")


async def gzip(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` as a gzip stream, deflated as they come (each chunk flushed, so a slow file
    is not held back in the compressor). Level 1: a tenant chooses how many bytes the CP
    deflates, and level 6 cost ~3 times the CPU a byte for a ratio ~10 % better. Each chunk is
    deflated in a thread: zlib lets go of the GIL while it works, so the process's event loop
    serves other requests meanwhile."""
    deflater = zlib.compressobj(1, zlib.DEFLATED, _GZIP)
    async for chunk in chunks:
        out = await asyncio.to_thread(_deflate, deflater, chunk)
        if out:
            yield out
    yield deflater.flush()


def _deflate(deflater: Any, chunk: bytes) -> bytes:
    return bytes(deflater.compress(chunk) + deflater.flush(zlib.Z_SYNC_FLUSH))
