"""What the REST API answers for a sandbox paused in memory whose container the host ended (its
init killed from the host while frozen: the SIGKILL waits in the freezer, agent/container_exits.py
polls for it): the host monitor records it ``stopped`` without any resume having thawed it, and a
resume is a 409 saying it is not running, not a hang or a 502. The agent's side (the OOM killer's
way too, and warm-pool members) is tests/integration/agent/test_frozen_deaths.py."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

# The agent notices within moments; the shared platform's monitor records it at its next passes.
DEADLINE_S = 120.0


@pytest.fixture(scope="module")
def tenant(platform: Platform) -> Tenant:
    return signup(platform.url, "frozen-dead")


def _wait(what: str, fn: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not fn():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _container_pid(platform: Platform, sb: str) -> int:
    for agent in platform.agents:
        record = agent.data_dir / "sandboxes" / sb / "record.json"
        if record.exists():
            return int(json.loads(Path(record).read_text())["pid"])
    raise AssertionError(f"no agent holds {sb}")


def _status(tenant: Tenant, sb: str) -> str:
    r = tenant.w("GET", f"/v1/sandboxes/{sb}")
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


def test_a_paused_sandbox_killed_on_the_host_is_stopped_and_its_resume_a_409(
    platform: Platform, tenant: Tenant
) -> None:
    sb = tenant.create()
    neighbour = tenant.create()
    for s in (sb, neighbour):
        r = tenant.w("POST", f"/v1/sandboxes/{s}/pause")
        assert r.status_code == 200, r.text
        assert r.json()["paused_state"] == "memory", r.text

    os.kill(_container_pid(platform, sb), signal.SIGKILL)  # frozen: it stays until thawed

    _wait("the monitor to record it stopped", lambda: _status(tenant, sb) in ("stopped", "error"))
    # Why, as the API says: its agent no longer has it (docs/api.md §2).
    assert tenant.w("GET", f"/v1/sandboxes/{sb}").json()["end_reason"] == "gone_from_host"
    r = tenant.w("POST", f"/v1/sandboxes/{sb}/resume", timeout=60)
    assert r.status_code == 409, r.text
    message = r.json()["error"]["message"]
    assert "not paused" in message or "not running" in message, r.text

    # Its neighbour, paused beside it, resumes and runs.
    r = tenant.w("POST", f"/v1/sandboxes/{neighbour}/resume")
    assert r.status_code == 200, r.text
    assert tenant.sh(neighbour, "echo alive") == "alive\n"


def test_a_resume_that_comes_first_is_a_409(platform: Platform, tenant: Tenant) -> None:
    """A resume asked right after the kill, before the monitor's pass: the agent answers it
    (not running: its container exited), whether or not it has noticed the death yet."""
    sb = tenant.create()
    r = tenant.w("POST", f"/v1/sandboxes/{sb}/pause")
    assert r.status_code == 200, r.text
    os.kill(_container_pid(platform, sb), signal.SIGKILL)
    r = tenant.w("POST", f"/v1/sandboxes/{sb}/resume", timeout=60)
    assert r.status_code == 409, r.text
    assert "is not running" in r.json()["error"]["message"], r.text
    _wait("the monitor to record it stopped", lambda: _status(tenant, sb) in ("stopped", "error"))
