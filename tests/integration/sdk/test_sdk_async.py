"""The asyncio SDK (the same ops as the blocking one, on httpx.AsyncClient + websockets.asyncio):
every method, and errors."""

from __future__ import annotations

import asyncio
import io

import pytest

from tests.harness.platform import Platform
from warren import AsyncSandbox
from warren.sdk import (
    AsyncCommandHandle,
    AuthenticationError,
    CommandExitError,
    InvalidStateError,
    NotFoundError,
    SnapshotInfo,
    WarrenTimeoutError,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(600), pytest.mark.shared_platform]


async def test_lifecycle(platform: Platform) -> None:
    async with await AsyncSandbox.create(timeout=60, envs={"K": "v"}, **platform.sdk()) as sbx:
        assert sbx.info.status == "running" and sbx.id.startswith("sb-")
        assert sbx.id in [s.id for s in await AsyncSandbox.list(**platform.sdk())]
        other = await AsyncSandbox.connect(sbx.id, **platform.sdk())
        assert (await other.commands.run("echo $K")).stdout == "v\n"
        await other.close()
        assert (await sbx.pause()).status == "paused"
        with pytest.raises(InvalidStateError):
            await sbx.commands.run("true")
        assert (await sbx.resume()).status == "running"
        await sbx.ping()
        assert (await sbx.get_info()).status == "running"
        assert isinstance(await sbx.metrics("5m"), list)
        sid = sbx.id
    assert sid not in [s.id for s in await AsyncSandbox.list(**platform.sdk())]
    with pytest.raises(NotFoundError):
        await AsyncSandbox.connect(sid[:-1] + ("0" if sid[-1] != "0" else "1"), **platform.sdk())
    with pytest.raises(AuthenticationError):
        await AsyncSandbox.create(url=platform.url, api_key="wrn_" + "1" * 32)


async def test_commands(platform: Platform) -> None:
    async with await AsyncSandbox.create(**platform.sdk()) as sbx:
        r = await sbx.commands.run("echo a; echo b >&2; exit 2")
        assert (r.stdout, r.stderr, r.exit_code) == ("a\n", "b\n", 2)
        assert (await sbx.commands.run(["printf", "%s", "x y"])).stdout == "x y"
        assert (await sbx.commands.run("cat", stdin="in")).stdout == "in"
        with pytest.raises(CommandExitError):
            await sbx.commands.run("exit 1", check=True)
        with pytest.raises(WarrenTimeoutError):
            await sbx.commands.run("sleep 20", timeout=1)

        got: list[str] = []

        async def on_out(s: str) -> None:  # async callbacks are awaited
            got.append(s)

        r = await sbx.commands.run(
            r"printf 'a\377'; echo; echo z >&2", on_stdout=on_out, on_stderr=got.append
        )
        assert r.stdout_bytes == b"a\xff\n" and r.stderr == "z\n" and got

        h = await sbx.commands.run("cat", background=True, stdin=True, tag="cat")
        assert isinstance(h, AsyncCommandHandle)
        await h.send_stdin("echo me\n")
        await h.close_stdin()
        assert (await h.wait()).stdout == "echo me\n"

        bg = await sbx.commands.run("echo hi; sleep 60", background=True, tag="bg")
        assert bg.pid in [p.pid for p in await sbx.commands.list()]
        await bg.disconnect()
        att = await sbx.commands.connect(bg.pid)
        assert await sbx.commands.send_signal("bg", 15) is True
        assert "hi" in (await att.wait()).stdout
        assert await sbx.commands.kill(bg.pid) is False

        bg2 = await sbx.commands.run("cat", background=True, stdin=True)
        await sbx.commands.send_stdin(bg2.pid, "x\n")
        await bg2.close_stdin()
        assert (await bg2.wait()).stdout == "x\n"
        bg3 = await sbx.commands.run("sleep 60", background=True)
        assert await bg3.kill() is True
        assert (await bg3.wait()).exit_code != 0


async def test_files_and_snapshot(platform: Platform) -> None:
    async with await AsyncSandbox.create(**platform.sdk()) as sbx:
        await sbx.files.write("/root/a/b.txt", "text")
        assert await sbx.files.read("/root/a/b.txt") == "text"
        assert await sbx.files.read("/root/a/b.txt", format="bytes") == b"text"
        assert await sbx.files.exists("/root/a/b.txt")
        assert (await sbx.files.get_info("/root/a/b.txt")).size == 4
        assert [e.name for e in await sbx.files.list("/root/a")] == ["b.txt"]
        assert await sbx.files.make_dir("/root/c") is True
        assert (await sbx.files.rename("/root/a/b.txt", "/root/c/b.txt")).path == "/root/c/b.txt"
        await sbx.files.remove("/root/a")
        assert not await sbx.files.exists("/root/a")

        blob = b"0123456789abcdef" * 200_000

        async def agen():  # type: ignore[no-untyped-def]
            for i in range(0, len(blob), 300_000):
                yield blob[i : i + 300_000]
                await asyncio.sleep(0)

        await sbx.files.write_stream("/root/s1", agen())
        await sbx.files.write_stream("/root/s2", io.BytesIO(blob))
        for name in ("s1", "s2"):
            got = bytearray()
            async for chunk in await sbx.files.read_stream(f"/root/{name}"):
                got += chunk
            assert bytes(got) == blob
        with pytest.raises(NotFoundError):
            await sbx.files.read_stream("/root/nope")

        snap = await sbx.snapshot()
        assert isinstance(snap, SnapshotInfo) and snap.name.startswith("template-") and snap.kind
        assert sbx.info.status == "paused"
        assert snap.name in [
            s.name for s in await AsyncSandbox.list_snapshots(type="snapshot", **platform.sdk())
        ]
        async with await AsyncSandbox.create(snap.name, **platform.sdk()) as copy:
            assert await copy.files.read("/root/c/b.txt") == "text"
        await AsyncSandbox.delete_snapshot(snap.name, **platform.sdk())
        with pytest.raises(NotFoundError):
            await AsyncSandbox.delete_snapshot(snap.name, **platform.sdk())
