"""File operations through the guest: streaming round trips, metadata, errors."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from tests.unit.guest.guest_helpers import RunningGuest
from warren.agent.guest_client import GuestClient, GuestError


async def chunks_of(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def aiter_list(items: Iterable[bytes]) -> AsyncIterator[bytes]:
    for x in items:
        yield x


async def read_all(client: GuestClient, path: str) -> bytes:
    return b"".join([c async for c in client.read_file(path)])


@pytest.mark.parametrize("size", [0, 1, 65536, 65537])
async def test_small_round_trips(client: GuestClient, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = str(tmp_path / f"f{size}.bin")
    assert await client.write_file(path, chunks_of(data)) == size
    assert Path(path).read_bytes() == data
    assert await read_all(client, path) == data


async def test_20_mib_binary_round_trip_streams(guest: RunningGuest, tmp_path: Path) -> None:
    client = guest.client
    data = os.urandom(20 << 20)
    path = str(tmp_path / "big" / "blob.bin")
    base = guest.rss_kib()
    assert await client.write_file(path, chunks_of(data)) == len(data)
    assert hashlib.sha256(Path(path).read_bytes()).digest() == hashlib.sha256(data).digest()
    sizes = []
    h = hashlib.sha256()
    async for chunk in client.read_file(path):
        sizes.append(len(chunk))
        h.update(chunk)
    assert h.digest() == hashlib.sha256(data).digest()
    assert max(sizes) <= 65536 and len(sizes) >= 320  # streamed in 64 KiB chunks
    # The guest never holds the file: its peak RSS grows by far less than the 20 MiB moved.
    assert guest.rss_kib("VmHWM") - base < 8 * 1024


async def test_read_chunk_size_and_odd_input_chunks(client: GuestClient, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    path = str(tmp_path / "odd.bin")
    # Oversized input chunks are split for the wire; empty ones are skipped.
    assert await client.write_file(path, aiter_list([b"", data[:5], data[5:], b""])) == len(data)
    sizes = [len(c) async for c in client.read_file(path, chunk_size=100_000)]
    assert sizes == [100_000, 100_000, 100_000]


async def test_write_creates_parents_and_sets_mode(client: GuestClient, tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c.sh"
    await client.write_file(str(path), aiter_list([b"#!/bin/sh\n"]), mode=0o750)
    assert path.read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o750
    # Overwriting keeps the existing mode unless a new one is given, and leaves no temp files.
    await client.write_file(str(path), aiter_list([b"new"]))
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o750
    assert sorted(os.listdir(path.parent)) == ["c.sh"]


async def test_write_through_symlink_updates_target(client: GuestClient, tmp_path: Path) -> None:
    target = tmp_path / "real.txt"
    target.write_bytes(b"old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    await client.write_file(str(link), aiter_list([b"fresh"]))
    assert link.is_symlink()
    assert target.read_bytes() == b"fresh"


async def test_write_errors_stop_the_upload_early(client: GuestClient, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < (200 << 20):
            sent += 65536
            yield b"\0" * 65536

    with pytest.raises(GuestError) as ei:
        await client.write_file(str(tmp_path / "file" / "child"), endless())
    assert ei.value.kind == "not_a_directory"
    assert sent < (20 << 20), "the client kept uploading after the guest refused"
    with pytest.raises(GuestError) as ei:
        await client.write_file(str(tmp_path), aiter_list([b"x"]))
    assert ei.value.kind == "is_a_directory"
    with pytest.raises(GuestError) as ei:
        await client.write_file("relative/path", aiter_list([b"x"]))
    assert ei.value.kind == "invalid_argument"


async def test_aborted_upload_leaves_old_file_and_no_temp(client: GuestClient, tmp_path: Path) -> None:
    d = tmp_path / "w"
    d.mkdir()
    path = d / "keep.txt"
    path.write_bytes(b"original")

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial data"
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        await client.write_file(str(path), broken())
    deadline = time.monotonic() + 30
    while len(os.listdir(d)) > 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert os.listdir(d) == ["keep.txt"]
    assert path.read_bytes() == b"original"


async def test_read_errors(client: GuestClient, tmp_path: Path) -> None:
    for path, kind in [
        (str(tmp_path / "missing"), "not_found"),
        (str(tmp_path), "is_a_directory"),
        ("not/absolute", "invalid_argument"),
        (str(tmp_path / "missing" / "deeper"), "not_found"),
    ]:
        it = client.read_file(path)
        with pytest.raises(GuestError) as ei:
            await anext(it)
        assert ei.value.kind == kind, path
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(GuestError) as ei:
        await anext(client.read_file(str(tmp_path / "fifo")))
    assert ei.value.kind == "invalid_argument"  # and the guest did not hang opening it
    await client.health()


async def test_stat_entry_info(client: GuestClient, tmp_path: Path) -> None:
    f = tmp_path / "data.txt"
    f.write_bytes(b"12345")
    f.chmod(0o640)
    (tmp_path / "ln").symlink_to("data.txt")
    e = await client.stat(str(f))
    assert (e.name, e.path, e.type, e.size, e.mode) == ("data.txt", str(f), "file", 5, 0o640)
    assert e.permissions == "-rw-r-----"
    assert e.owner == "root" and e.group == "root"
    assert abs(e.modified_time - f.stat().st_mtime) < 1e-3
    assert e.symlink_target is None
    link = await client.stat(str(tmp_path / "ln"))
    assert (link.type, link.symlink_target) == ("symlink", "data.txt")
    d = await client.stat(str(tmp_path) + "/./")
    assert d.type == "dir" and d.path == str(tmp_path)
    with pytest.raises(GuestError) as ei:
        await client.stat(str(tmp_path / "nope"))
    assert ei.value.kind == "not_found"
    with pytest.raises(GuestError) as ei:
        await client.stat("nope")
    assert ei.value.kind == "invalid_argument"


async def test_list_dir_depth(client: GuestClient, tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "deep.txt").write_text("d")
    (tmp_path / "a" / "one.txt").write_text("1")
    (tmp_path / "top.txt").write_text("t")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    names1 = [(e.path, e.type) for e in (await client.list_dir(str(tmp_path))).entries]
    assert names1 == [
        (str(tmp_path / "a"), "dir"),
        (str(tmp_path / "link"), "symlink"),
        (str(tmp_path / "top.txt"), "file"),
    ]
    names3 = {e.path for e in (await client.list_dir(str(tmp_path), depth=3)).entries}
    assert names3 == {
        str(tmp_path / p) for p in ["a", "a/b", "a/b/deep.txt", "a/one.txt", "link", "top.txt"]
    }  # the symlinked directory is not descended into
    with pytest.raises(GuestError) as ei:
        await client.list_dir(str(tmp_path / "top.txt"))
    assert ei.value.kind == "not_a_directory"
    with pytest.raises(GuestError) as ei:
        await client.list_dir(str(tmp_path / "missing"))
    assert ei.value.kind == "not_found"


async def test_make_dir(client: GuestClient, tmp_path: Path) -> None:
    d = tmp_path / "x" / "y" / "z"
    await client.make_dir(str(d))
    assert d.is_dir()
    await client.make_dir(str(d))  # ok if it exists
    (tmp_path / "f").write_text("")
    with pytest.raises(GuestError) as ei:
        await client.make_dir(str(tmp_path / "f"))
    assert ei.value.kind == "exists"
    with pytest.raises(GuestError) as ei:
        await client.make_dir(str(tmp_path / "f" / "sub"))
    assert ei.value.kind == "not_a_directory"


async def test_remove(client: GuestClient, tmp_path: Path) -> None:
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f").write_text("x")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "precious").write_text("p")
    (tmp_path / "tree" / "escape").symlink_to(tmp_path / "keep")
    (tmp_path / "file").write_text("x")
    await client.remove(str(tmp_path / "file"))
    assert not (tmp_path / "file").exists()
    await client.remove(str(tmp_path / "tree"))
    assert not (tmp_path / "tree").exists()
    assert (tmp_path / "keep" / "precious").exists()  # symlinks inside the tree are not followed
    (tmp_path / "dirlink").symlink_to(tmp_path / "keep")
    await client.remove(str(tmp_path / "dirlink"))
    assert (tmp_path / "keep" / "precious").exists()
    with pytest.raises(GuestError) as ei:
        await client.remove(str(tmp_path / "file"))
    assert ei.value.kind == "not_found"
    with pytest.raises(GuestError) as ei:
        await client.remove("/")
    assert ei.value.kind == "invalid_argument"


async def test_move(client: GuestClient, tmp_path: Path) -> None:
    (tmp_path / "src.txt").write_text("content")
    await client.move(str(tmp_path / "src.txt"), str(tmp_path / "new" / "dir" / "dst.txt"))
    assert (tmp_path / "new" / "dir" / "dst.txt").read_text() == "content"
    assert not (tmp_path / "src.txt").exists()
    (tmp_path / "d1" / "inner").mkdir(parents=True)
    await client.move(str(tmp_path / "d1"), str(tmp_path / "d2"))
    assert (tmp_path / "d2" / "inner").is_dir()
    with pytest.raises(GuestError) as ei:
        await client.move(str(tmp_path / "nope"), str(tmp_path / "x"))
    assert ei.value.kind == "not_found"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    with pytest.raises(GuestError) as ei:
        await client.move(str(tmp_path / "d2"), str(tmp_path / "full"))
    assert ei.value.kind == "exists"
    with pytest.raises(GuestError) as ei:
        await client.move(str(tmp_path / "d2"), "rel")
    assert ei.value.kind == "invalid_argument"


async def test_move_across_filesystems(client: GuestClient, tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a different filesystem than the temp dir")
    src = tmp_path / "cross.txt"
    src.write_text("over")
    dst = shm / f"warren-guest-test-{os.getpid()}.txt"
    try:
        await client.move(str(src), str(dst))
        assert dst.read_text() == "over" and not src.exists()
    finally:
        dst.unlink(missing_ok=True)
