"""What is particular to the directory store: the layout, the modes, no leftovers."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from warren.config import Settings
from warren.cp.store import DigestMismatch, DirectoryStore, S3Store, make_store


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_layout_and_modes(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    meta = await store.put(one(b"abc"), max_bytes=10)
    path = tmp_path / "store" / "layers" / "sha256" / f"{meta.digest}.tar"
    assert path.read_bytes() == b"abc"
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


async def test_a_refused_put_leaves_no_temp_file(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    with pytest.raises(DigestMismatch):
        await store.put(one(b"abc"), expect=hashlib.sha256(b"abd").hexdigest(), max_bytes=10)
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    assert list((tmp_path / "store" / "layers" / "sha256").iterdir()) == []


async def test_list_ignores_strays(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    meta = await store.put(one(b"abc"), max_bytes=10)
    layers = tmp_path / "store" / "layers" / "sha256"
    (layers / "README").write_text("not a layer")
    (layers / f"{'z' * 64}.tar").write_text("not a digest")
    assert [d async for d in store.list()] == [meta.digest]


def test_make_store(tmp_path: Path) -> None:
    default = make_store(Settings(home=tmp_path, template_store=""))
    assert isinstance(default, DirectoryStore)
    assert default.root == tmp_path / "store"
    there = make_store(Settings(home=tmp_path, template_store=str(tmp_path / "elsewhere")))
    assert isinstance(there, DirectoryStore)
    assert there.root == tmp_path / "elsewhere"
    s3 = make_store(
        Settings(home=tmp_path, template_store="s3://bkt/some/prefix/", s3_endpoint_url="http://127.0.0.1:1")
    )
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix) == ("bkt", "some/prefix")
    for bad in ("s3://", "ftp://host/x"):
        with pytest.raises(ValueError):
            make_store(Settings(home=tmp_path, template_store=bad))
