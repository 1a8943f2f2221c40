"""The guest's ``watch`` op (inotify) through GuestClient.watch: events, order, bounds."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from warren.agent.guest_client import GuestClient, GuestError, WatchBatch, WatchEvent
from warren.guest.guest_agent import watch as guest_watch


class Watch:
    """A started watch and everything it has reported so far."""

    def __init__(self, it: AsyncIterator[WatchBatch]) -> None:
        self.it = it
        self.events: list[WatchEvent] = []
        self.overflowed = False

    async def until(
        self, pred: Callable[[list[WatchEvent]], bool], timeout: float = 10.0
    ) -> list[WatchEvent]:
        async with asyncio.timeout(timeout):
            while not pred(self.events):
                batch = await anext(self.it)
                self.events.extend(batch.events)
                self.overflowed |= batch.overflowed
        return self.events

    async def close(self) -> None:
        await self.it.aclose()  # type: ignore[attr-defined]


async def start(client: GuestClient, path: str, recursive: bool = True) -> Watch:
    it = client.watch(path, recursive=recursive)
    first = await anext(it)  # the watches are in place
    assert first.events == []
    return Watch(it)


def has(kind: str, path: str) -> Callable[[list[WatchEvent]], bool]:
    return lambda evs: any(e.type == kind and e.path == path for e in evs)


async def test_recursive_tree_in_order(client: GuestClient, tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    w = await start(client, str(tmp_path))
    try:
        f = tmp_path / "old" / "a.txt"
        f.write_text("hello")
        # A new directory filled at once: what lands before its watch is reported by the scan.
        sub = tmp_path / "new" / "deep"
        sub.mkdir(parents=True)
        (sub / "b.txt").write_text("b")
        # What happens in a directory before its watch is in place is only seen by its scan:
        # wait for that before changing it again.
        await w.until(has("create", str(sub / "b.txt")))
        f.rename(tmp_path / "old" / "c.txt")
        (tmp_path / "old" / "c.txt").chmod(0o600)
        (sub / "b.txt").unlink()
        evs = await w.until(has("remove", str(sub / "b.txt")))
    finally:
        await w.close()
    seen = [(e.type, e.path) for e in evs]

    def at(kind: str, path: Path) -> int:
        return seen.index((kind, str(path)))

    assert at("create", f) < at("write", f) < at("rename", tmp_path / "old" / "c.txt")
    assert at("create", tmp_path / "new") < at("create", sub) < at("create", sub / "b.txt")
    assert at("create", sub / "b.txt") < at("remove", sub / "b.txt")
    assert at("rename", tmp_path / "old" / "c.txt") < at("chmod", tmp_path / "old" / "c.txt")
    rename = evs[at("rename", tmp_path / "old" / "c.txt")]
    assert rename.old_path == str(f)
    assert rename.entry is not None and rename.entry.type == "file" and rename.entry.size == 5
    chmod = evs[at("chmod", tmp_path / "old" / "c.txt")]
    assert chmod.entry is not None and chmod.entry.mode == 0o600
    assert all(e.timestamp_ns > 0 for e in evs)


async def test_renamed_directory_keeps_its_watch(client: GuestClient, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    w = await start(client, str(tmp_path))
    try:
        (tmp_path / "d").rename(tmp_path / "e")
        (tmp_path / "e" / "x").write_text("x")
        evs = await w.until(has("write", str(tmp_path / "e" / "x")))
    finally:
        await w.close()
    assert ("rename", str(tmp_path / "e")) in [(e.type, e.path) for e in evs]


async def test_moves_across_the_tree_edge(client: GuestClient, tmp_path: Path) -> None:
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    (outside / "f").write_text("1")
    (inside / "g").write_text("2")
    w = await start(client, str(inside))
    try:
        (outside / "f").rename(inside / "f")  # unpaired MOVED_TO: a create
        (inside / "g").rename(outside / "g")  # unpaired MOVED_FROM: a remove
        evs = await w.until(has("remove", str(inside / "g")))
        await w.until(has("create", str(inside / "f")))
    finally:
        await w.close()
    assert not any(e.type == "rename" for e in evs)


async def test_burst_of_writes_keeps_the_last(client: GuestClient, tmp_path: Path) -> None:
    w = await start(client, str(tmp_path))
    f = tmp_path / "burst"
    f.write_text("")
    try:
        for i in range(50):
            f.write_text("x" * (i + 1))
        (tmp_path / "after").write_text("done")
        evs = await w.until(has("write", str(tmp_path / "after")))
    finally:
        await w.close()
    writes = [e for e in evs if e.path == str(f) and e.type == "write"]
    assert writes and len(writes) < 100  # IN_MODIFY + IN_CLOSE_WRITE each time: merged
    assert writes[-1].entry is not None and writes[-1].entry.size == 50
    # Order across paths: the burst's last write came before the other file's.
    seen = [(e.type, e.path) for e in evs]
    assert seen.index(("write", str(f)), len(seen) - 3) < seen.index(("write", str(tmp_path / "after")))


async def test_slow_client_gets_overflow(client: GuestClient, tmp_path: Path) -> None:
    w = await start(client, str(tmp_path))
    try:
        # Long names make large events: the socket and the guest's bounded queue fill up
        # while nobody reads.
        for i in range(20000):
            (tmp_path / f"{i:06d}{'n' * 200}").touch()
        # The newest events were dropped, and the client is told so.
        await w.until(lambda evs: w.overflowed, timeout=30)
        # Once the client has caught up, events flow again (a file made while the guest's
        # queue is still full is dropped too: make more until one arrives).
        prefix = str(tmp_path / "after")
        reader = asyncio.create_task(
            w.until(
                lambda evs: any(e.type == "create" and e.path.startswith(prefix) for e in evs), timeout=30
            )
        )
        i = 0
        while not reader.done():
            Path(f"{prefix}{i}").touch()
            i += 1
            await asyncio.wait({reader}, timeout=0.1)
        await reader
    finally:
        await w.close()
    assert w.overflowed


async def test_missing_path_and_not_a_dir(client: GuestClient, tmp_path: Path) -> None:
    with pytest.raises(GuestError) as e:
        await anext(client.watch(str(tmp_path / "nope")))
    assert e.value.kind == "not_found"
    (tmp_path / "f").write_text("")
    with pytest.raises(GuestError) as e:
        await anext(client.watch(str(tmp_path / "f")))
    assert e.value.kind == "not_a_directory"


async def test_too_many_directories_is_refused(client: GuestClient, tmp_path: Path) -> None:
    for i in range(guest_watch.MAX_WATCH_DIRS + 10):
        os.mkdir(tmp_path / str(i))
    with pytest.raises(GuestError) as e:
        await anext(client.watch(str(tmp_path)))
    assert e.value.kind == "too_large"
    assert str(guest_watch.MAX_WATCH_DIRS) in e.value.message
    # Non-recursive: one watch, fine; and the refused one released everything it had added.
    w = await start(client, str(tmp_path), recursive=False)
    await w.close()
    w = await start(client, str(tmp_path / "1"))
    await w.close()


async def test_root_removed_ends_the_stream(client: GuestClient, tmp_path: Path) -> None:
    d = tmp_path / "gone"
    d.mkdir()
    w = await start(client, str(d))
    d.rmdir()
    evs = await w.until(has("remove", str(d)))
    with pytest.raises(StopAsyncIteration):
        async with asyncio.timeout(10):
            while True:
                evs.extend((await anext(w.it)).events)


async def test_one_file_rewritten_while_the_client_is_slow(client: GuestClient, tmp_path: Path) -> None:
    # Many rewrites of one file while this test does not read (its loop blocks the event
    # loop): coalesced in the guest's queue (compacted as it fills with replaced entries), and
    # the last write is the one reported.
    w = await start(client, str(tmp_path))
    f = tmp_path / "loop"
    try:
        for i in range(3 * guest_watch.MAX_PENDING):
            f.write_text(str(i))
        (tmp_path / "end").touch()
        evs = await w.until(has("create", str(tmp_path / "end")))
    finally:
        await w.close()
    writes = [e for e in evs if e.path == str(f) and e.type == "write"]
    assert writes[-1].entry is not None and writes[-1].entry.size == len(str(3 * guest_watch.MAX_PENDING - 1))


async def test_long_paths_overflow_by_bytes(client: GuestClient, tmp_path: Path) -> None:
    # Fewer events than MAX_PENDING, but of ~3.9 KiB paths: what the guest holds for a client
    # that does not read is bounded in bytes (PENDING_BYTES), so most are dropped (session 17:
    # counted in events only, 5 000 of them held 55 MiB of a sandbox's guest).
    n = 3000
    assert n < guest_watch.MAX_PENDING
    assert n * 3900 > 4 * guest_watch.PENDING_BYTES
    deep = tmp_path
    for i in range(15):
        deep = deep / (f"d{i}" + "x" * 240)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in deep.relative_to(tmp_path).parts:  # relative: the whole path is near PATH_MAX
            os.mkdir(part, dir_fd=fd)
            fd, old = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
            os.close(old)
        w = await start(client, str(tmp_path))
        try:
            names = [f"{i:06d}" + "y" * 240 for i in range(n)]
            for name in names:
                os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
            time.sleep(1)  # nobody reads: the guest takes them all from inotify meanwhile
            await w.until(lambda evs: w.overflowed, timeout=30)
            # Events flow again once the client has caught up (see test_slow_client_gets_overflow).
            prefix = str(tmp_path / "after")
            reader = asyncio.create_task(
                w.until(
                    lambda evs: any(e.type == "create" and e.path.startswith(prefix) for e in evs), timeout=30
                )
            )
            i = 0
            while not reader.done():
                (tmp_path / f"after{i}").touch()
                i += 1
                await asyncio.wait({reader}, timeout=0.1)
            await reader
        finally:
            await w.close()
    finally:
        os.close(fd)
    created = {e.path for e in w.events if e.type == "create" and e.path.startswith(str(deep))}
    assert w.overflowed
    assert 0 < len(created) < n // 2
