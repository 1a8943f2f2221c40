"""E2B's SDK (``e2b``, unchanged, sync and async) against a live platform's envd files and watch
(docs/e2b.md §3.2): write, read (text, bytes, stream), list with depth, exists, get_info
(owner, mode, symlinks), make_dir, rename, remove, gzip both ways, metadata, watch_dir (sync:
polling watchers; async: the ``WatchDir`` stream), signed download and upload URLs. The
features E2B's SDK gates by the envd version the platform reports are checked at that version:
served above their gate, refused by the SDK below it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from e2b import AsyncSandbox, FilesystemEvent, FilesystemEventType, FileType, Sandbox
from e2b.envd.versions import (
    ENVD_FILE_METADATA,
    ENVD_OCTET_STREAM_UPLOAD,
    ENVD_VERSION_FS_EVENT_ENTRY_INFO,
    ENVD_VERSION_RECURSIVE_WATCH,
)
from e2b.exceptions import FileNotFoundException, TemplateException
from packaging.version import Version

from tests.harness.e2b import E2BEnv
from tests.harness.platform import Platform
from warren.cp.e2b.envd import ENVD_VERSION

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

SERVED = Version(ENVD_VERSION)  # what the platform reports, so what the SDK does
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def sbx(e2b_env: E2BEnv) -> Iterator[Sandbox]:
    s = Sandbox.create(template=e2b_env.template)
    try:
        yield s
    finally:
        s.kill()


def sh(platform: Platform, sandbox_id: str, script: str) -> str:
    """A shell command as root through Warren's own SDK (processes are another part's)."""
    from warren.sdk import Sandbox as WarrenSandbox

    res = WarrenSandbox.connect(sandbox_id, **platform.sdk()).commands.run(script, user="root")
    assert res.exit_code == 0, res.stderr
    return res.stdout


def test_write_and_read(sbx: Sandbox) -> None:
    info = sbx.files.write("notes/hello.txt", "héllo\n")
    assert (
        info.path == "/home/user/notes/hello.txt" and info.name == "hello.txt" and info.type == FileType.FILE
    )
    assert sbx.files.read("notes/hello.txt") == "héllo\n"
    data = bytes(range(256)) * 2000
    sbx.files.write("/home/user/notes/blob.bin", data)
    assert sbx.files.read("notes/blob.bin", format="bytes") == bytearray(data)
    with sbx.files.read("~/notes/blob.bin", format="stream") as stream:
        assert b"".join(stream) == data
    written = sbx.files.write_files([{"path": "notes/a", "data": "A"}, {"path": "notes/b", "data": b"B"}])
    assert [w.path for w in written] == ["/home/user/notes/a", "/home/user/notes/b"]
    assert sbx.files.read("notes/b") == "B"
    with pytest.raises(FileNotFoundException):
        sbx.files.read("notes/missing")
    root = sbx.files.write("mine.txt", "r", user="root")
    assert root.path == "/root/mine.txt"
    assert sbx.files.get_info("/root/mine.txt", user="root").owner == "root"


def test_list_exists_and_info(e2b_env: E2BEnv, sbx: Sandbox) -> None:
    sbx.files.write("tree/a/b/c.txt", "c")
    sbx.files.write("tree/top.txt", "t")
    assert {e.name for e in sbx.files.list("tree")} == {"a", "top.txt"}
    deep = {e.path for e in sbx.files.list("tree", depth=3)}
    assert "/home/user/tree/a/b/c.txt" in deep and "/home/user/tree/a/b" in deep
    assert sbx.files.exists("tree/top.txt") and not sbx.files.exists("tree/nope")
    e = sbx.files.get_info("tree/top.txt")
    assert (e.type, e.size, e.owner, e.group, e.mode, e.permissions) == (
        FileType.FILE, 1, "user", "user", 0o644, "-rw-r--r--"
    )  # fmt: skip
    assert e.modified_time.year >= 2026 and e.symlink_target is None
    assert sbx.files.get_info("tree/a").type == FileType.DIR
    sh(
        e2b_env.platform,
        sbx.sandbox_id,
        "ln -s top.txt /home/user/tree/link && chmod 600 /home/user/tree/top.txt",
    )
    link = sbx.files.get_info("tree/link")
    assert link.type == FileType.SYMLINK and link.symlink_target == "/home/user/tree/top.txt"
    assert link.mode == 0o600  # the target's
    assert sbx.files.get_info("tree/top.txt").permissions == "-rw-------"


def test_make_dir_rename_remove(sbx: Sandbox) -> None:
    assert sbx.files.make_dir("made/x/y") is True
    assert sbx.files.make_dir("made/x/y") is False
    assert sbx.files.get_info("made/x/y").owner == "user"
    sbx.files.write("made/f.txt", "f")
    moved = sbx.files.rename("made/f.txt", "made/x/g.txt")
    assert moved.path == "/home/user/made/x/g.txt" and moved.type == FileType.FILE
    assert not sbx.files.exists("made/f.txt") and sbx.files.read("made/x/g.txt") == "f"
    sbx.files.remove("made")
    assert not sbx.files.exists("made")


def test_gzip_both_ways(sbx: Sandbox) -> None:
    data = b"0123456789" * 50_000
    sbx.files.write("gz/data", data, gzip=True)  # below 0.5.7 the SDK sends it plain
    assert sbx.files.read("gz/data", format="bytes", gzip=True) == bytearray(data)
    with sbx.files.read("gz/data", format="stream", gzip=True) as stream:
        assert b"".join(stream) == data
    if SERVED >= ENVD_OCTET_STREAM_UPLOAD:
        with open(__file__, "rb") as f:  # a file-like goes octet-stream, streamed
            sbx.files.write("gz/self.py", f)
        with open(__file__, "rb") as f:
            assert sbx.files.read("gz/self.py", format="bytes") == bytearray(f.read())


def test_metadata(sbx: Sandbox) -> None:
    if SERVED < ENVD_FILE_METADATA:
        with pytest.raises(TemplateException):
            sbx.files.write("md.txt", "x", metadata={"k": "v"})
        return
    info = sbx.files.write("md/one.txt", "x", metadata={"Author": "ada", "run": "7"})
    assert info.metadata == {"author": "ada", "run": "7"}
    assert sbx.files.get_info("md/one.txt").metadata == {"author": "ada", "run": "7"}
    assert [e.metadata for e in sbx.files.list("md")] == [{"author": "ada", "run": "7"}]
    sbx.files.write("md/one.txt", "y")
    assert sbx.files.get_info("md/one.txt").metadata is None


def _events(
    handle: object, want: set[tuple[str, FilesystemEventType]]
) -> set[tuple[str, FilesystemEventType]]:
    seen: set[tuple[str, FilesystemEventType]] = set()
    end = time.monotonic() + DEADLINE_S
    while not want <= seen:
        assert time.monotonic() < end, f"missing {want - seen}, saw {seen}"
        seen |= {(e.name, e.type) for e in handle.get_new_events()}  # type: ignore[attr-defined]
    return seen


def test_watch_dir_polling(sbx: Sandbox) -> None:
    sbx.files.make_dir("watched/sub")
    handle = sbx.files.watch_dir("watched")
    try:
        sbx.files.write("watched/new.txt", "1")
        sbx.files.rename("watched/new.txt", "watched/moved.txt")
        sbx.files.remove("watched/moved.txt")
        _events(handle, {
            ("new.txt", FilesystemEventType.CREATE), ("new.txt", FilesystemEventType.RENAME),
            ("moved.txt", FilesystemEventType.CREATE), ("moved.txt", FilesystemEventType.REMOVE),
        })  # fmt: skip
    finally:
        handle.stop()
    if SERVED < ENVD_VERSION_RECURSIVE_WATCH:
        with pytest.raises(TemplateException):
            sbx.files.watch_dir("watched", recursive=True)
        return
    include = SERVED >= ENVD_VERSION_FS_EVENT_ENTRY_INFO
    deep = sbx.files.watch_dir("watched", recursive=True, include_entry=include)
    try:
        sbx.files.write("watched/sub/deep.txt", "d")
        _events(deep, {("sub/deep.txt", FilesystemEventType.CREATE)})
    finally:
        deep.stop()


def test_signed_urls(e2b_env: E2BEnv, sbx: Sandbox) -> None:
    sbx.files.write("signed/in.txt", "signed content")
    at_sandbox = {"E2b-Sandbox-Id": sbx.sandbox_id}  # what host-name routing supplies
    url = sbx.download_url("signed/in.txt")
    assert "signature=v1_" in url
    assert httpx.get(url, headers=at_sandbox, timeout=30).text == "signed content"
    # With E2B_SANDBOX_URL set the URL names no sandbox: refused, and says why (docs/e2b.md).
    r = httpx.get(url, timeout=30)
    assert r.status_code == 400 and "names no sandbox" in r.json()["message"]
    up = sbx.upload_url("signed/up.txt", use_signature_expiration=60)
    w = httpx.post(up, files={"file": ("ignored", b"uploaded")}, headers=at_sandbox, timeout=30)
    assert w.status_code == 200 and w.json()[0]["path"] == "/home/user/signed/up.txt"
    assert sbx.files.read("signed/up.txt") == "uploaded"
    expired = sbx.download_url("signed/in.txt", use_signature_expiration=-10)
    assert httpx.get(expired, headers=at_sandbox, timeout=30).status_code == 401
    tampered = url.replace("signed%2Fin.txt", "signed%2Fup.txt")
    assert tampered != url and httpx.get(tampered, headers=at_sandbox, timeout=30).status_code == 401
    as_root = sbx.download_url("/root/.profile", user="root")
    assert httpx.get(as_root, headers=at_sandbox, timeout=30).status_code == 200
    other = Sandbox.create(template=e2b_env.template)
    try:
        theirs = {"E2b-Sandbox-Id": other.sandbox_id}
        assert httpx.get(url, headers=theirs, timeout=30).status_code == 401  # another sandbox's URL
    finally:
        other.kill()


# ---------------------------------------------------------------------------------- async SDK


@pytest.fixture(scope="module")
async def asbx(e2b_env: E2BEnv) -> AsyncIterator[AsyncSandbox]:
    s = await AsyncSandbox.create(template=e2b_env.template)
    try:
        yield s
    finally:
        await s.kill()


async def test_async_files(asbx: AsyncSandbox) -> None:
    info = await asbx.files.write("a/b.txt", "async text")
    assert info.path == "/home/user/a/b.txt"
    assert await asbx.files.read("a/b.txt") == "async text"
    data = bytes(range(256)) * 1000
    await asbx.files.write("a/blob", data)
    assert await asbx.files.read("a/blob", format="bytes", gzip=True) == bytearray(data)
    async with await asbx.files.read("a/blob", format="stream") as stream:
        assert b"".join([c async for c in stream]) == data
    assert {e.name for e in await asbx.files.list("a")} == {"b.txt", "blob"}
    assert await asbx.files.exists("a/blob") and not await asbx.files.exists("a/none")
    e = await asbx.files.get_info("a/b.txt")
    assert (e.type, e.owner, e.permissions, e.size) == (FileType.FILE, "user", "-rw-r--r--", 10)
    assert await asbx.files.make_dir("a/d") is True and await asbx.files.make_dir("a/d") is False
    moved = await asbx.files.rename("a/b.txt", "a/d/c.txt")
    assert moved.path == "/home/user/a/d/c.txt"
    await asbx.files.remove("a")
    with pytest.raises(FileNotFoundException):
        await asbx.files.read("a/d/c.txt")


async def test_async_metadata(asbx: AsyncSandbox) -> None:
    if SERVED < ENVD_FILE_METADATA:
        with pytest.raises(TemplateException):
            await asbx.files.write("m.txt", "x", metadata={"k": "v"})
        return
    await asbx.files.write("m.txt", "x", metadata={"k": "v"})
    assert (await asbx.files.get_info("m.txt")).metadata == {"k": "v"}


async def _until(events: list[FilesystemEvent], want: set[tuple[str, FilesystemEventType]]) -> None:
    async with asyncio.timeout(DEADLINE_S):
        while not want <= {(e.name, e.type) for e in events}:
            await asyncio.sleep(0.05)


async def test_async_watch_dir_streams(asbx: AsyncSandbox) -> None:
    await asbx.files.make_dir("w/sub")
    events: list[FilesystemEvent] = []
    ended: list[Exception | None] = []
    handle = await asbx.files.watch_dir("w", on_event=events.append, on_exit=ended.append)
    await asbx.files.write("w/one.txt", "1")
    await asbx.files.rename("w/one.txt", "w/two.txt")
    await _until(events, {
        ("one.txt", FilesystemEventType.CREATE), ("one.txt", FilesystemEventType.RENAME),
        ("two.txt", FilesystemEventType.CREATE),
    })  # fmt: skip
    await handle.stop()
    assert ended == [None]
    with pytest.raises(FileNotFoundException):
        await asbx.files.watch_dir("w/none", on_event=events.append)
    if SERVED < ENVD_VERSION_RECURSIVE_WATCH:
        with pytest.raises(TemplateException):
            await asbx.files.watch_dir("w", on_event=events.append, recursive=True)
        return
    deep: list[FilesystemEvent] = []
    handle = await asbx.files.watch_dir("w", on_event=deep.append, recursive=True)
    await asbx.files.write("w/sub/deep.txt", "d")
    await _until(deep, {("sub/deep.txt", FilesystemEventType.CREATE)})
    await handle.stop()
