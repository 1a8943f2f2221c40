"""Snapshots on real agents, through the template store: create → 3 sandboxes see the files;
an overwrite whose new snapshot fails keeps the old one; with a second agent, a snapshot starts
on either host, and delete removes the record while sandboxes of it run on.

Failures are real, not mocked: the control plane's store directory is bind-mounted read-only
while the overwrite runs (the new layer cannot be spooled: EROFS → 500)."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.platform import Platform
from warren import Sandbox, ids
from warren.sdk import (
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
)

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
        spool = platform.cp.home / "store" / "tmp"
        with _mounted("--bind", str(spool), target=spool):
            subprocess.run(["mount", "-o", "remount,bind,ro", str(spool)], check=True)
            with pytest.raises(ServerError) as e:  # the store cannot take the layer → 500
                src.snapshot("stable", overwrite=True)
            assert e.value.status == 500
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
    Sandbox.delete_snapshot("stable", **platform.sdk())


async def test_second_agent(platform: Platform, platform_dir: Path) -> None:
    await platform.add_agent("127.0.0.22", platform_dir / "agent-b")


def test_a_snapshot_starts_on_either_host_and_delete_keeps_its_sandboxes(platform: Platform) -> None:
    assert len(platform.agents) == 2, "needs the second agent from test_second_agent"
    with Sandbox.create(**platform.sdk()) as src:
        src.files.write("/root/keep.txt", "precious")
        src.snapshot("portable")
        maker = _agent_of(platform, src.id)
    # Its maker holds the layer and is preferred; while it is draining, the other host fetches
    # the layer from the store.
    other = next(a for a in platform.agents if a is not maker)
    with Sandbox.create("portable", **platform.sdk()) as near:
        assert _agent_of(platform, near.id) is maker
    _set_status(platform, maker, "draining")
    try:
        far = Sandbox.create("portable", **platform.sdk())
    finally:
        _set_status(platform, maker, "online")
    try:
        assert _agent_of(platform, far.id) is other
        assert far.files.read("/root/keep.txt") == "precious"
        # Delete is the record: the sandbox runs on, new ones cannot start from it.
        Sandbox.delete_snapshot("portable", **platform.sdk())
        assert "portable" not in [s.name for s in Sandbox.list_snapshots(**platform.sdk())]
        assert far.files.read("/root/keep.txt") == "precious"
        with pytest.raises(NotFoundError):
            Sandbox.create("portable", **platform.sdk())
    finally:
        far.kill()
        far.close()


def _set_status(platform: Platform, agent: Any, status: str) -> None:
    import asyncio

    asyncio.run(platform.sql("UPDATE hosts SET status = :s WHERE address = :a", s=status, a=agent.address))


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
