"""Session 20: a sandbox claimed from a warm pool escaped the agent's socket watchdog.

A claimed pool member keeps its container id (``wp-…``, agent/container_ids.py): its cgroups
are named for the member, not for the sandbox (``sb-…``). The socket ceiling
(runtime/socket_ceiling.py) was handed the running sandboxes' ids and looked for their cgroups by
those names: a claimed sandbox's were never found, so its socket memory and its TCP sockets were
never checked. Found by reading the code; measured before the fix with session 18's probe in a
claimed 256 MiB sandbox: 1900 loopback pairs held 71.7 MiB of socket memory past a 32 MiB
ceiling for good, no kill. Fixed: the agent hands the watchdog container ids
(``SandboxManager.running``). The OOM storm watch (runtime/cmds_oom.py, new this session) is
armed by container id from the start; its storm is checked here too.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_pools_claim import _agent_log, _claim, pool  # noqa: F401 (a fixture)
from tests.security.test_attack_session18_socket_ceiling import PAIRS, _attack
from tests.security.test_attack_session20_oom_storm import (
    KERNEL_SLACK,
    STORM,
    STORM_KILLS,
    kernel_log,
    kill_lines,
)

pytestmark = pytest.mark.root


@contextlib.contextmanager
def claimed(platform: Platform, t: Tenant, memory_mb: int) -> Iterator[str]:
    """A sandbox of ``t`` claimed from the pool; it must still answer at the end."""
    sid = _claim(platform, t, memory_mb=memory_mb)
    try:
        yield sid
        assert t.sh(sid, "echo alive").strip() == "alive"  # the sandbox lives on
    finally:
        t.w("DELETE", f"/v1/sandboxes/{sid}")


def test_a_claimed_sandbox_is_under_the_socket_ceiling(
    platform: Platform,
    alice: Tenant,
    pool: str,  # noqa: F811
) -> None:
    with claimed(platform, alice, 256) as sid:
        got = _attack(platform, alice, sid, 1, PAIRS, "nobody")
        assert got["max_after"] <= got["ceiling"], got  # it does not stay past the ceiling
        # The watchdog names the container (the member's id) in its lines.
        claim = re.search(rf"event=warm_claimed sandbox_id={sid} member=(\S+) ", _agent_log(platform))
        assert claim is not None
        assert f"event=socket_memory_kill sandbox={claim[1]} " in _agent_log(platform)


def test_a_claimed_sandboxs_oom_storm_is_the_agents(
    platform: Platform,
    alice: Tenant,
    pool: str,  # noqa: F811
) -> None:
    tag = "s20poolstorm"
    body = {"cmd": "python3", "args": ["-c", STORM, "8", tag, str(512 << 20)], "user": "nobody",
            "timeout_sec": 120}  # fmt: skip
    with claimed(platform, alice, 128) as sid, kernel_log() as kmsg:
        r = alice.w("POST", f"/v1/sandboxes/{sid}/exec", body, timeout=240)
        assert r.status_code == 200, r.text
        assert r.json()["exit_code"] == 0, r.json()
        out = json.loads(r.json()["stdout"])
        assert out["sigkill"] >= 10, out
        assert kill_lines(kmsg, tag) <= STORM_KILLS + KERNEL_SLACK, out
