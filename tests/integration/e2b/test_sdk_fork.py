"""E2B's ``Sandbox.fork`` through its SDK (``e2b``, unchanged, sync and async) against a live
platform (docs/e2b.md §5.1): one snapshot of the source, N creates from it, the snapshot gone
afterwards. A runc source's forks get its files (independent afterwards) and the source runs on
with its id and end; a gVisor source's forks go on with its running processes; a count out of
bounds is a 400, an unknown sandbox the SDK's not-found, a paused one a 409, and a team at its
sandbox quota gets the refused forks as per-entry exceptions."""

from __future__ import annotations

import asyncio
import shlex
import time
from typing import Any

import httpx
import pytest
from e2b import AsyncSandbox, Sandbox
from e2b.exceptions import NotFoundException, RateLimitException, SandboxException

from tests.harness.e2b import E2BEnv, warren_sh
from tests.harness.platform import Platform
from warren import ids

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

COUNTER = (
    "import os, time\ni = 0\nwhile True:\n"
    "    open('/tmp/n.new', 'w').write(str(i)); os.replace('/tmp/n.new', '/tmp/n')\n"
    "    i += 1; time.sleep(0.01)\n"
)


def sql(platform: Platform, statement: str) -> Any:
    """``statement`` on the platform's database, ``:t`` the module's team."""
    return asyncio.run(platform.sql(statement, t=ids.parse_id(ids.Kind.TEAM, platform.team_id)))


def snapshot_rows(platform: Platform) -> int:
    """The team's snapshots in the database (a fork's must not outlive the call)."""
    return int(sql(platform, "SELECT count(*) FROM templates WHERE team_id = :t AND type = 'snapshot'")[0][0])


def fork_raw(e2b_env: E2BEnv, sandbox_id: str, body: Any) -> httpx.Response:
    return httpx.post(
        f"{e2b_env.url}/sandboxes/{sandbox_id}/fork",
        json=body,
        headers={"X-API-KEY": e2b_env.api_key},
        timeout=60,
    )


def test_fork_copies_the_files_and_leaves_the_source_running(e2b_env: E2BEnv) -> None:
    platform = e2b_env.platform
    src = Sandbox.create(template=e2b_env.template, metadata={"who": "source"})
    forks: list[Any] = []
    try:
        src.files.write("/tmp/mark", "before the fork")
        end = src.get_info().end_at
        forks = src.fork(count=2, timeout=120)
        assert [type(f) for f in forks] == [Sandbox, Sandbox], forks
        a, b = forks
        assert len({a.sandbox_id, b.sandbox_id, src.sandbox_id}) == 3
        for f in forks:
            assert f.is_running()
            assert f.files.read("/tmp/mark") == "before the fork"
            info = f.get_info()
            assert info.metadata == {}  # E2B's fork carries no metadata (docs/e2b.md §5.1)
            assert 100 <= (info.end_at - info.started_at).total_seconds() <= 121
        # Independent afterwards: a write in one is in neither the other nor the source.
        a.files.write("/tmp/mark", "fork a")
        assert b.files.read("/tmp/mark") == "before the fork"
        assert src.files.read("/tmp/mark") == "before the fork"
        assert warren_sh(platform, a.sandbox_id, "cat /tmp/mark") == "fork a"
        # The source runs on, with its id and its end.
        assert src.is_running()
        info = src.get_info()
        assert (info.sandbox_id, info.end_at, info.metadata) == (src.sandbox_id, end, {"who": "source"})
        # The snapshot the forks came from is gone: nothing listed, nothing counted.
        assert Sandbox.list_snapshots(sandbox_id=src.sandbox_id).next_items() == []
        assert snapshot_rows(platform) == 0
    finally:
        for s in [src, *forks]:
            if isinstance(s, Sandbox):
                s.kill()


def test_fork_refusals(e2b_env: E2BEnv) -> None:
    platform = e2b_env.platform
    src = Sandbox.create(template=e2b_env.template)
    try:
        for body in ({"count": 21}, {"count": 0}, {"count": "2"}, {"timeout": 0}):
            r = fork_raw(e2b_env, src.sandbox_id, body)
            assert r.status_code == 400, (body, r.text)
            assert r.json()["code"] == 400 and r.json()["message"], r.text
        with pytest.raises(NotFoundException):
            Sandbox.fork("sb-" + "0" * 25)
        # At its sandbox quota, the team's refused forks are per-entry 429s; the others start.
        sql(platform, "UPDATE teams SET quota_sandboxes = 2 WHERE id = :t")
        try:
            got = Sandbox.fork(src.sandbox_id, count=2)
        finally:
            sql(platform, "UPDATE teams SET quota_sandboxes = NULL WHERE id = :t")
        started = [f for f in got if isinstance(f, Sandbox)]
        for f in started:
            f.kill()
        assert len(started) == 1 and len(got) == 2, got
        refused = next(f for f in got if not isinstance(f, Sandbox))
        assert isinstance(refused, RateLimitException) and "quota" in str(refused), refused
        assert snapshot_rows(platform) == 0
        # The snapshot refused (the team's snapshot quota): the whole call, and no fork starts.
        sql(platform, "UPDATE teams SET quota_snapshots = 0 WHERE id = :t")
        try:
            with pytest.raises(RateLimitException, match="snapshots"):
                Sandbox.fork(src.sandbox_id, count=2)
        finally:
            sql(platform, "UPDATE teams SET quota_snapshots = NULL WHERE id = :t")
        assert [s.sandbox_id for s in Sandbox.list().next_items()] == [src.sandbox_id]
        # A paused source is not forked (E2B checkpoints a running one): 409.
        src.pause()
        with pytest.raises(SandboxException) as paused:
            src.fork()
        assert "409" in str(paused.value) and "paused" in str(paused.value)
        assert snapshot_rows(platform) == 0
    finally:
        src.kill()


def test_a_gvisor_source_forks_with_its_processes(e2b_env: E2BEnv) -> None:
    platform = e2b_env.platform
    # A template of store layers: its layers are images mounted on the host, which a memory
    # snapshot copies (hard links across their mounts failed, EXDEV: a 502 before session 30).
    body = {"template": e2b_env.template, "runtime": "gvisor", "memory_mb": 256}
    r = httpx.post(f"{platform.url}/v1/sandboxes", json=body, headers=platform.headers, timeout=120)
    assert r.status_code == 201, r.text
    src = r.json()["id"]
    forks: list[Any] = []
    try:
        warren_sh(platform, src, f"python3 -c {shlex.quote(COUNTER)} >/dev/null 2>&1 &")
        at_fork = wait_past(platform, src, 100)
        forks = Sandbox.fork(src, count=2, timeout=120)
        assert [type(f) for f in forks] == [Sandbox, Sandbox], forks
        for f in forks:
            got = httpx.get(f"{platform.url}/v1/sandboxes/{f.sandbox_id}", headers=platform.headers).json()
            assert got["runtime"] == "gvisor"
            # The counter went on where it was (a new one would start from 0), and counts on.
            wait_past(platform, f.sandbox_id, at_fork + 100)
            assert warren_sh(platform, f.sandbox_id, "id -un; pwd").split() == ["user", "/home/user"]
        source = httpx.get(f"{platform.url}/v1/sandboxes/{src}", headers=platform.headers).json()
        assert (source["status"], source.get("paused_state")) == ("running", None)
        wait_past(platform, src, at_fork + 100)
        assert snapshot_rows(platform) == 0
    finally:
        for f in forks:
            if isinstance(f, Sandbox):
                f.kill()
        httpx.delete(f"{platform.url}/v1/sandboxes/{src}", headers=platform.headers, timeout=120)


def wait_past(platform: Platform, sandbox_id: str, floor: int) -> int:
    """The sandbox's counter once it is past ``floor``."""
    end = time.monotonic() + 60
    while True:
        got = warren_sh(platform, sandbox_id, "cat /tmp/n 2>/dev/null || echo 0").strip()
        if got.isdigit() and int(got) > floor:
            return int(got)
        assert time.monotonic() < end, f"the counter of {sandbox_id} stayed at {got}"
        time.sleep(0.1)


async def test_async_fork(e2b_env: E2BEnv) -> None:
    src = await AsyncSandbox.create(template=e2b_env.template)
    try:
        await src.files.write("/tmp/mark", "async")
        (child,) = await src.fork()
        assert isinstance(child, AsyncSandbox)
        assert await child.files.read("/tmp/mark") == "async"
        assert await src.is_running()
        await child.kill()
    finally:
        await src.kill()
