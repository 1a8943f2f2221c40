"""E2B ``/files`` rules (cp/services/envd_files.py): metadata headers and their bounds, gzip
inflated under a cap (a bomb is refused after one bounded step), gzip on the fly."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator

import pytest

from warren.cp.services import envd_files
from warren.errors import InvalidRequest, PayloadTooLarge


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _all(it: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in it])


def test_metadata_headers() -> None:
    h = [("X-Metadata-Author", "Ada"), ("x-metadata-run.id", "7 b"), ("Content-Type", "x")]
    assert envd_files.metadata_from_headers(h) == {"author": "Ada", "run.id": "7 b"}
    assert envd_files.metadata_from_headers([("x-metadata-k", "")]) == {"k": ""}


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Metadata-", "v")],
        [("X-Metadata-" + "k" * 129, "v")],
        [("X-Metadata-k", "v" * 4097)],
        [("X-Metadata-k", "\u00e9")],
        [("X-Metadata-k", "a\nb")],
        [("X-Metadata-k(", "v")],
        [("X-Metadata-k", "1"), ("x-metadata-K", "2")],
        [(f"X-Metadata-k{i}", "v") for i in range(33)],
        [(f"X-Metadata-k{i}", "v" * 4000) for i in range(5)],
    ],
)
def test_metadata_bounds(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidRequest):
        envd_files.metadata_from_headers(headers)


async def test_gunzip_streams_members_and_caps() -> None:
    data = gzip.compress(b"a" * 100_000) + gzip.compress(b"b" * 10)
    assert await _all(envd_files.gunzip(_chunks(data), cap=100_010)) == b"a" * 100_000 + b"b" * 10
    with pytest.raises(PayloadTooLarge):
        await _all(envd_files.gunzip(_chunks(data), cap=100_009))
    assert await _all(envd_files.gunzip(_chunks(b""), cap=10)) == b""


async def test_gzip_bomb_stops_after_a_bounded_step() -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = bomb.compress(b"\0" * (200 << 20)) + bomb.flush()  # 200 MiB in ~200 KiB
    largest = 0
    with pytest.raises(PayloadTooLarge):
        async for out in envd_files.gunzip(_chunks(body, 1 << 20), cap=1 << 20):
            largest = max(largest, len(out))
    assert largest <= 64 * 1024


# mtime=0 and ids: a parametrized id must be the same on every xdist worker (gzip stamps the time).
@pytest.mark.parametrize(
    "body", [b"not gzip at all", gzip.compress(b"x" * 5000, mtime=0)[:30]], ids=["not-gzip", "truncated"]
)
async def test_gunzip_refuses_bad_bodies(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        await _all(envd_files.gunzip(_chunks(body, 7), cap=1 << 20))


async def test_gzip_round_trip() -> None:
    data = bytes(range(256)) * 1000
    assert gzip.decompress(await _all(envd_files.gzip(_chunks(data, 4096)))) == data
    assert gzip.decompress(await _all(envd_files.gzip(_chunks(b"")))) == b""
