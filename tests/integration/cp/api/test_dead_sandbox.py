"""What the REST API answers for a sandbox whose container the host ended mid-command (its init
killed from the host, as the host's OOM killer would): the exec in flight is a 409 saying the
sandbox is not running, within moments rather than at its timeout; so is the next one. The host
monitor then records the sandbox ``stopped`` as it does for any sandbox gone from its host (not
waited for here: the shared platform's monitor passes every 5 s). The agent's side of it (every
kind of call, gVisor too) is tests/integration/agent/test_dead_container.py."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

# A functional bound far below the exec's own timeout (600 s), not a figure.
ENDED_WITHIN_S = 60.0


@pytest.fixture(scope="module")
def tenant(platform: Platform) -> Tenant:
    return signup(platform.url, "dead")


def _wait(what: str, fn: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _container_pid(platform: Platform, sb: str) -> int:
    """The sandbox's container init, from its agent's record (a warm-pool member's container id
    is not the sandbox's, its record is under the sandbox's)."""
    for agent in platform.agents:
        record = agent.data_dir / "sandboxes" / sb / "record.json"
        if record.exists():
            return int(json.loads(Path(record).read_text())["pid"])
    raise AssertionError(f"no agent holds {sb}")


def _not_running(r: httpx.Response) -> None:
    """The agent's answer ("sandbox <id> is not running: its container exited ...") or, once the
    monitor has recorded it stopped, the CP's own ("sandbox is not running (status: stopped)")."""
    assert r.status_code == 409, r.text
    assert "is not running" in r.json()["error"]["message"], r.text


def test_an_exec_into_a_sandbox_whose_container_died_is_a_409(platform: Platform, tenant: Tenant) -> None:
    sb = tenant.create()
    got: list[httpx.Response] = []
    runs = threading.Thread(
        target=lambda: got.append(tenant.x(sb, "sleep 1000", timeout_sec=600)), daemon=True
    )
    runs.start()
    _wait(
        "the sleep to run", lambda: tenant.x(sb, "grep -qx sleep /proc/[0-9]*/comm").json()["exit_code"] == 0
    )

    os.kill(_container_pid(platform, sb), signal.SIGKILL)
    runs.join(ENDED_WITHIN_S)
    assert got, f"the exec still runs {ENDED_WITHIN_S} s after its sandbox died"
    _not_running(got[0])
    assert "its container exited" in got[0].json()["error"]["message"], got[0].text
    _not_running(tenant.x(sb, "true"))
