"""E2B's snapshots through its SDK (``e2b``, unchanged, sync and async) against a live platform
(docs/e2b.md §2): create (the source keeps running), list (by source sandbox, paginated), start
a sandbox from one, delete (True, then False)."""

from __future__ import annotations

import pytest
from e2b import AsyncSandbox, Sandbox, SandboxState
from e2b.exceptions import SandboxNotFoundException

from tests.harness.e2b import E2BEnv, warren_sh

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]


def test_snapshot_create_list_start_delete(e2b_env: E2BEnv) -> None:
    platform = e2b_env.platform
    src = Sandbox.create(template=e2b_env.template)
    started: list[Sandbox] = []
    try:
        warren_sh(platform, src.sandbox_id, "echo kept > /tmp/mark")
        snap = src.create_snapshot()
        assert snap.snapshot_id and snap.names == [snap.snapshot_id]
        # E2B's snapshots leave the source running.
        assert src.is_running()
        assert src.get_info().state == SandboxState.RUNNING
        named = src.create_snapshot(name="e2b-snap-named")
        assert named.snapshot_id == "e2b-snap-named"

        listed = Sandbox.list_snapshots(sandbox_id=src.sandbox_id, limit=1)
        pages = []
        while listed.has_next:
            pages.append([s.snapshot_id for s in listed.next_items()])
        assert pages == [[named.snapshot_id], [snap.snapshot_id]]  # newest first, one per page
        assert Sandbox.list_snapshots(sandbox_id="sb-" + "0" * 25).next_items() == []
        by_name = Sandbox.list_snapshots(name="e2b-snap-named:v1").next_items()
        assert [s.snapshot_id for s in by_name] == [named.snapshot_id]
        assert Sandbox.list_snapshots(name="e2b-snap-named:v9").next_items() == []

        child = Sandbox.create(template=snap.snapshot_id)
        started.append(child)
        assert child.get_info().template_id == snap.snapshot_id
        assert warren_sh(platform, child.sandbox_id, "cat /tmp/mark") == "kept\n"

        assert Sandbox.delete_snapshot(named.snapshot_id) is True
        assert Sandbox.delete_snapshot(named.snapshot_id) is False
        # A base template is not a snapshot: nothing to delete here.
        assert Sandbox.delete_snapshot(e2b_env.template) is False
        with pytest.raises(SandboxNotFoundException):
            Sandbox.create_snapshot("sb-" + "0" * 25)
    finally:
        for s in [src, *started]:
            s.kill()


async def test_async_snapshot(e2b_env: E2BEnv) -> None:
    src = await AsyncSandbox.create(template=e2b_env.template)
    try:
        snap = await src.create_snapshot()
        assert await src.is_running()
        ids = [
            s.snapshot_id for s in await AsyncSandbox.list_snapshots(sandbox_id=src.sandbox_id).next_items()
        ]
        assert ids == [snap.snapshot_id]
        child = await AsyncSandbox.create(template=snap.snapshot_id)
        assert await child.is_running()
        await child.kill()
        assert await AsyncSandbox.delete_snapshot(snap.snapshot_id) is True
        assert await AsyncSandbox.delete_snapshot(snap.snapshot_id) is False
    finally:
        await src.kill()
