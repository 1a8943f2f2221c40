"""``Sandbox.create(runtime=...)`` (sync and async) sends the runtime tier, and the server's
answers come back as the SDK's errors: an unknown runtime is ``InvalidArgumentError``, one no
host offers ``SandboxUnavailableError`` naming it. The control plane here has no host at all;
creates that succeed on a gVisor host are in tests/integration/cp/api/test_gvisor_sandboxes.py."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness.cp import InProcessCP
from warren import AsyncSandbox, Sandbox
from warren.sdk import InvalidArgumentError, SandboxUnavailableError
from warren.sdk._models import SandboxInfo


async def test_the_runtime_reaches_the_server_sync_and_async(cp: InProcessCP) -> None:
    user = await cp.signup()
    conn = {"url": cp.url, "api_key": await user.api_key()}
    with pytest.raises(InvalidArgumentError) as bad:
        await AsyncSandbox.create(runtime="kata", **conn)
    assert "runtime" in str(bad.value)
    with pytest.raises(SandboxUnavailableError) as none:
        await AsyncSandbox.create(runtime="gvisor", **conn)
    assert none.value.code == "no_hosts_available" and "gvisor runtime" in str(none.value)
    # The sync client blocks its thread: off the loop that serves the control plane.
    with pytest.raises(SandboxUnavailableError) as sync_none:
        await asyncio.to_thread(lambda: Sandbox.create(runtime="crun", **conn))
    assert "crun runtime" in str(sync_none.value)
    with pytest.raises(SandboxUnavailableError) as default:
        await AsyncSandbox.create(**conn)  # no runtime: any host's own default, and none is online
    assert str(default.value) == "[503 no_hosts_available] no online platform hosts available"


def test_sandbox_info_carries_the_runtime_and_the_paused_state() -> None:
    base = {"id": "sb-1", "status": "paused", "template": "minimal", "vcpus": 1, "memory_mb": 512}
    info = SandboxInfo.from_json({**base, "runtime": "gvisor", "paused_state": "disk"})
    assert (info.runtime, info.paused_state) == ("gvisor", "disk")
    older = SandboxInfo.from_json(base)  # a server from before the runtime tiers
    assert (older.runtime, older.paused_state, older.end_reason) == ("", None, None)
    ended = SandboxInfo.from_json({**base, "status": "stopped", "end_reason": "lifetime_ended"})
    assert ended.end_reason == "lifetime_ended"
