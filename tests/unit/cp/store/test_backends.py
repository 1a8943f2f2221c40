"""The template store's backends against one contract: a directory, and an S3 bucket on a local
``moto_server`` process (tests/harness/s3.py)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import pytest

from tests.harness.s3 import MotoServer, set_credentials
from warren.cp.store import CHUNK, DigestMismatch, DirectoryStore, LayerStore, S3Store
from warren.errors import InvalidRequest, NotFound, PayloadTooLarge

BIG = 3 * CHUNK + 12345  # several chunks and a ragged end


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def read_all(store: LayerStore, digest: str) -> bytes:
    return b"".join([c async for c in store.open(digest)])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    set_credentials()
    with MotoServer(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(params=["dir", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LayerStore:
    if request.param == "dir":
        return DirectoryStore(tmp_path / "store")
    moto: MotoServer = request.getfixturevalue("moto")
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    moto.make_bucket(bucket)
    return S3Store(bucket, "warren/tpl", endpoint_url=moto.url, region="us-east-1", spool_dir=tmp_path / "sp")


async def test_put_then_read_back(store: LayerStore) -> None:
    data = os.urandom(BIG)
    meta = await store.put(chunks_of(data), max_bytes=BIG)
    assert (meta.digest, meta.size) == (sha(data), BIG)
    assert await store.exists(meta.digest)
    assert await store.size(meta.digest) == BIG
    pieces = [c async for c in store.open(meta.digest)]
    assert b"".join(pieces) == data
    assert max(len(p) for p in pieces) == CHUNK


async def test_put_with_the_expected_digest(store: LayerStore) -> None:
    data = b"layer bytes" * 1000
    meta = await store.put(chunks_of(data, 7), expect=sha(data), max_bytes=len(data))
    assert meta.digest == sha(data)
    assert await read_all(store, meta.digest) == data


async def test_a_mismatch_stores_nothing(store: LayerStore) -> None:
    data, claimed = b"real bytes", sha(b"other bytes")
    with pytest.raises(DigestMismatch) as err:
        await store.put(chunks_of(data), expect=claimed, max_bytes=100)
    assert sha(data) in err.value.message
    assert not await store.exists(claimed)
    assert not await store.exists(sha(data))
    assert [d async for d in store.list()] == []


async def test_past_max_bytes_is_refused(store: LayerStore) -> None:
    data = os.urandom(1000)
    with pytest.raises(PayloadTooLarge):
        await store.put(chunks_of(data, 100), max_bytes=999)
    assert not await store.exists(sha(data))
    assert await store.put(chunks_of(data, 100), max_bytes=1000)


async def test_a_failing_stream_stores_nothing(store: LayerStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * 100
        raise ConnectionError("sender went away")

    with pytest.raises(ConnectionError):
        await store.put(broken(), max_bytes=1000)
    assert [d async for d in store.list()] == []


async def test_empty_layer(store: LayerStore) -> None:
    meta = await store.put(chunks_of(b""), max_bytes=0)
    assert (meta.digest, meta.size) == (sha(b""), 0)
    assert await read_all(store, meta.digest) == b""


async def test_put_twice_keeps_one(store: LayerStore) -> None:
    data = b"same"
    first = await store.put(chunks_of(data), max_bytes=10)
    second = await store.put(chunks_of(data), max_bytes=10)
    assert first == second
    assert [d async for d in store.list()] == [first.digest]


async def test_delete_and_list(store: LayerStore) -> None:
    metas = [await store.put(chunks_of(b"layer %d" % i), max_bytes=100) for i in range(3)]
    assert sorted([d async for d in store.list()]) == sorted(m.digest for m in metas)
    await store.delete(metas[1].digest)
    await store.delete(metas[1].digest)  # gone already: fine
    assert not await store.exists(metas[1].digest)
    assert sorted([d async for d in store.list()]) == sorted([metas[0].digest, metas[2].digest])


async def test_missing_layer(store: LayerStore) -> None:
    digest = sha(b"never stored")
    assert not await store.exists(digest)
    with pytest.raises(NotFound) as err:
        await read_all(store, digest)
    assert err.value.code == "layer_not_found"
    with pytest.raises(NotFound):
        await store.size(digest)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "abc", "0" * 63 + "/", ""])
async def test_digests_are_checked(store: LayerStore, bad: str) -> None:
    with pytest.raises(InvalidRequest):
        await store.exists(bad)
    with pytest.raises(InvalidRequest):
        await read_all(store, bad)
    with pytest.raises(InvalidRequest):
        await store.put(chunks_of(b"x"), expect=bad, max_bytes=10)


async def test_big_layer_goes_up_in_parts(moto: MotoServer, tmp_path: Path) -> None:
    """Past the multipart threshold, S3 gets a multipart upload; the object reads back whole."""
    moto.make_bucket("big")
    store = S3Store("big", "", endpoint_url=moto.url, region="us-east-1", spool_dir=tmp_path)
    data = os.urandom(1024) * (65 * 1024 + 3)  # 65 MiB + 3 KiB
    meta = await store.put(chunks_of(data, CHUNK), max_bytes=len(data))
    assert meta.digest == sha(data)
    assert await store.size(meta.digest) == len(data)
    assert sha(await read_all(store, meta.digest)) == meta.digest
    s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
    etag = s3.head_object(Bucket="big", Key=f"layers/sha256/{meta.digest}.tar")["ETag"]
    assert etag.strip('"').endswith("-2")  # a multipart object's ETag counts its parts
