"""Snapshots on real agents: create → 3 sandboxes see the files; delete with one online agent
failing → 500 and the record kept; an overwrite whose new snapshot fails keeps the old one.

Failures are real, not mocked: agent B holds a copy of the template directory that is a busy
mount point (it cannot be renamed away: EBUSY → INTERNAL), and agent A's team template
directory is bind-mounted read-only while the overwrite runs (the new snapshot cannot be
written: EROFS → INTERNAL)."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from warren import Sandbox, ids
from warren.sdk import (
    ConflictError,
    InvalidArgumentError,
    PermissionDeniedError,
    SandboxUnavailableError,
    ServerError,
)

from .platform import Platform

pytestmark = [pytest.mark.root, pytest.mark.timeout(900)]


def _template_id(platform: Platform, name: str) -> uuid.UUID:
    import asyncio

    rows = asyncio.run(platform.sql("SELECT id FROM templates WHERE name = :n", n=name))
    assert rows, f"no template row for {name}"
    return uuid.UUID(str(rows[0][0]))


def _team_uuid(platform: Platform) -> uuid.UUID:
    return ids.parse_id(ids.Kind.TEAM, platform.team_id)


@contextlib.contextmanager
def _mounted(*args: str, target: Path) -> Iterator[None]:
    subprocess.run(["mount", *args, str(target)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_create_and_launch_three_from_it(platform: Platform) -> None:
    with Sandbox.create(vcpus=2, memory_mb=384, **platform.sdk()) as src:
        src.files.write("/root/app/config.json", '{"ready": true}')
        src.commands.run("mkdir -p /opt/tool && echo v1 > /opt/tool/VERSION && ln -s VERSION /opt/tool/link")
        src.commands.run("rm -f /etc/motd")  # deletions are part of the snapshot too
        snap = src.snapshot("app-ready")
        assert (snap.name, snap.type, snap.kind, snap.vcpus, snap.memory_mb) == (
            "app-ready", "snapshot", "filesystem", 2, 384,
        )  # fmt: skip
        assert snap.size_bytes > 0 and not snap.platform
        assert src.get_info().status == "paused"  # snapshotted sandboxes stay paused
        src.resume()
        assert src.files.read("/root/app/config.json") == '{"ready": true}'

        listed = {s.name: s for s in Sandbox.list_snapshots(**platform.sdk())}
        assert "app-ready" in listed and "minimal" in listed and listed["minimal"].platform
        assert [s.name for s in Sandbox.list_snapshots(type="snapshot", **platform.sdk())] == ["app-ready"]

        with pytest.raises(ConflictError) as e:
            src.snapshot("app-ready")
        assert e.value.code == "already_exists"
        with pytest.raises(ConflictError) as e:
            src.snapshot("minimal")
        assert e.value.code == "name_reserved"
        with pytest.raises(InvalidArgumentError):
            src.snapshot("bad/name")

    copies = [Sandbox.create("app-ready", vcpus=1, memory_mb=128, **platform.sdk()) for _ in range(3)]
    try:
        for c in copies:
            # A snapshot keeps its own shape whatever the create asked for.
            assert (c.info.vcpus, c.info.memory_mb, c.info.template) == (2, 384, "app-ready")
            assert c.files.read("/root/app/config.json") == '{"ready": true}'
            assert c.commands.run("cat /opt/tool/link; test -e /etc/motd || echo gone").stdout == "v1\ngone\n"
        # Copies are independent of each other.
        copies[0].files.write("/root/app/config.json", "changed")
        assert copies[1].files.read("/root/app/config.json") == '{"ready": true}'
    finally:
        for c in copies:
            c.kill()
            c.close()

    with pytest.raises(PermissionDeniedError):
        Sandbox.delete_snapshot("minimal", **platform.sdk())
    Sandbox.delete_snapshot("app-ready", **platform.sdk())
    assert "app-ready" not in [s.name for s in Sandbox.list_snapshots(**platform.sdk())]


def test_overwrite_whose_new_snapshot_fails_keeps_the_old(platform: Platform) -> None:
    with Sandbox.create(**platform.sdk()) as src:
        src.files.write("/root/v.txt", "old")
        old = src.snapshot("stable")
        old_id = _template_id(platform, "stable")
        src.resume()
        src.files.write("/root/v.txt", "new")
        host_of_src = _agent_of(platform, src.id)
        team_dir = host_of_src.data_dir / "templates" / "teams" / str(_team_uuid(platform))
        with _mounted("--bind", "-o", "ro", str(team_dir), target=team_dir):
            subprocess.run(["mount", "-o", "remount,bind,ro", str(team_dir)], check=True)
            with pytest.raises(SandboxUnavailableError) as e:  # the agent's INTERNAL → 502
                src.snapshot("stable", overwrite=True)
            assert e.value.status == 502
        # Nothing changed: same record, same files, and the source is running again.
        assert _template_id(platform, "stable") == old_id
        assert src.get_info().status == "running"
        with Sandbox.create("stable", **platform.sdk()) as copy:
            assert copy.files.read("/root/v.txt") == "old"
        # A good overwrite replaces it.
        new = src.snapshot("stable", overwrite=True)
        assert _template_id(platform, "stable") != old_id and new.name == old.name
        with Sandbox.create("stable", **platform.sdk()) as copy:
            assert copy.files.read("/root/v.txt") == "new"
        # The old generation's files are gone from the host.
        assert not (team_dir / str(old_id)).exists()
    Sandbox.delete_snapshot("stable", **platform.sdk())


async def test_second_agent(platform: Platform, platform_dir: Path) -> None:
    # From here on sandboxes may land on either host; a snapshot's files live on the host that
    # made it, so the tests above that launch copies run while there is one agent.
    await platform.add_agent("127.0.0.22", platform_dir / "agent-b")


def test_delete_failing_on_the_host_with_the_files_keeps_the_record(platform: Platform) -> None:
    assert len(platform.agents) == 2, "needs the second agent from test_second_agent"
    with Sandbox.create(**platform.sdk()) as src:
        src.files.write("/root/keep.txt", "precious")
        src.snapshot("doomed")
        maker = _agent_of(platform, src.id)
    tid = _template_id(platform, "doomed")
    # Only the host that made the snapshot has its files, and only it is asked to delete them.
    # Its template directory is busy (a mount point), so its delete fails: a hard error.
    busy = maker.data_dir / "templates" / "teams" / str(_team_uuid(platform)) / str(tid)
    assert busy.is_dir()
    with _mounted("-t", "tmpfs", "tmpfs", target=busy):
        with pytest.raises(ServerError) as e:
            Sandbox.delete_snapshot("doomed", **platform.sdk())
        assert (e.value.status, e.value.code) == (500, "agent_error")
        assert "doomed" in [s.name for s in Sandbox.list_snapshots(**platform.sdk())]
        # The raw API says the same.
        r = httpx.delete(f"{platform.url}/v1/snapshots/doomed", headers=platform.headers, timeout=60)
        assert r.status_code == 500 and r.json()["error"]["code"] == "agent_error"
    # Once the host can delete again, the delete goes through.
    Sandbox.delete_snapshot("doomed", **platform.sdk())
    assert "doomed" not in [s.name for s in Sandbox.list_snapshots(**platform.sdk())]
    assert not busy.exists()


def _agent_of(platform: Platform, sandbox_id: str) -> Any:
    import asyncio

    rows = asyncio.run(
        platform.sql(
            "SELECT h.address FROM sandboxes s JOIN hosts h ON h.id = s.host_id WHERE s.id = :i",
            i=ids.parse_id(ids.Kind.SANDBOX, sandbox_id),
        )
    )
    address = rows[0][0]
    return next(a for a in platform.agents if a.address == address)
