"""Session 25: a build cancelled through one CP replica while it runs on another.

``cancel_build`` set the row ``failed`` at once. A host's build usage counts a build's step
reservation only while its row is ``running``, and the team's (and owner's) build bound counts
``queued``/``running`` rows: both were given back at once, while the step ran on until the running
replica's next heartbeat (``WARREN_BUILD_HEARTBEAT_S``, 5 s). As the attacker runs it (a
tenant's key, two replicas behind one address as a load balancer would have them): submit a build
through replica A, wait until its step runs, cancel it through replica B, submit the next. Each
next build found its team under the bound and the host's room free and started a step beside the
cancelled ones. Here the host's build room is ONE step and each step holds 200 MiB: before, 19
steps were alive at once after 24 cycles (host MemAvailable -4104 MiB; at the default 2048 MiB a
step, ~38 GiB on a 24 GiB host); 12 after 12 cycles.

Now a running build's cancel only marks it (``error``); the replica running it stops the step and
then fails the row, so the slot and the room are held until the step is gone.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.harness.cp import CPProcess
from tests.harness.platform import Platform, running_platform, second_replica
from tests.harness.tenant import signup

pytestmark = pytest.mark.root

CORES = os.cpu_count() or 2
ENV = {"WARREN_BUILD_VCPUS": str(CORES), "WARREN_OVERCOMMIT_CPU": "1", "WARREN_BUILD_MEMORY_MB": "256"}
CYCLES = 6
LIVE_BOUND = 2


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    async with running_platform(db_url, platform_dir, ENV) as p:
        yield p


@pytest.fixture(scope="module")
async def replica_b(platform: Platform, platform_dir: Path) -> AsyncIterator[CPProcess]:
    async with second_replica(platform, platform_dir / "cp-b", ENV) as b:
        yield b


def _live(marker: str) -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            n += cmd.startswith(b"python3") and marker.encode() in cmd
    return n


def test_builds_cancelled_through_another_replica_stay_within_the_hosts_room(
    platform: Platform, replica_b: CPProcess
) -> None:
    mallory = signup(platform.url, "mallory")
    marker = f"mk{uuid.uuid4().hex[:10]}"
    hold = 'python3 -c "b=bytearray(200<<20); import time; time.sleep(120)"'
    spec = f"FROM minimal\nRUN echo started; {hold} {marker}\n"
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _live(marker))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with httpx.Client(headers={"X-API-Key": mallory.api_key}, timeout=60) as c:
            for i in range(CYCLES):
                name = f"s25c{i}-{uuid.uuid4().hex[:6]}"
                r = c.post(f"{platform.url}/v1/templates", json={"name": name, "spec": spec})
                assert r.status_code in (202, 429), r.text
                if r.status_code == 429:
                    time.sleep(0.5)
                    continue
                bid = r.json()["build_id"]
                for _ in range(300):  # its step runs, or it waits for room: cancel it either way
                    log = c.get(f"{platform.url}/v1/templates/{name}/builds/{bid}/log").json()["data"]
                    if "started" in log or "Waiting for" in log:
                        break
                    time.sleep(0.1)
                r = c.post(f"{replica_b.url}/v1/templates/{name}/builds/{bid}/cancel")
                assert r.status_code in (200, 409), r.text
    finally:
        stop.set()
        sampler.join()
    assert peak[0] <= LIVE_BOUND, f"{peak[0]} build steps of one team live at once; the host has room for 1"


def test_a_team_deleted_through_another_replica_stops_its_build_there(
    platform: Platform, replica_b: CPProcess
) -> None:
    """Session 37: the team's delete cancels its builds as a cancel does. Its build runs on
    replica A, the delete goes through replica B: A sees the mark at its next heartbeat, stops
    the step (its host room given back) and fails the build; no template version is written."""
    from warren import ids
    from warren.cp.services.template_builds import TEAM_DELETED

    mallory = signup(platform.url, "doomed")
    marker = f"mk{uuid.uuid4().hex[:10]}"
    spec = f'FROM minimal\nRUN echo started; python3 -c "import time; time.sleep(120)" {marker}\n'
    name = f"s37d-{uuid.uuid4().hex[:6]}"
    with httpx.Client(headers={"X-API-Key": mallory.api_key}, timeout=60) as c:
        r = c.post(f"{platform.url}/v1/templates", json={"name": name, "spec": spec})
        assert r.status_code == 202, r.text
        bid = r.json()["build_id"]
        for _ in range(600):
            log = c.get(f"{platform.url}/v1/templates/{name}/builds/{bid}/log").json()["data"]
            if "started" in log and _live(marker):
                break
            time.sleep(0.1)
        assert _live(marker), f"the step's command is not running: {log[-500:]}"
    r = httpx.delete(
        f"{replica_b.url}/v1/teams/{mallory.team_id}",
        headers={"Authorization": f"Bearer {mallory.token}"},
        timeout=60,
    )
    assert r.status_code == 204, r.text
    deleted = time.monotonic()
    while _live(marker) and time.monotonic() - deleted < 60:
        time.sleep(0.2)
    lived = time.monotonic() - deleted
    assert not _live(marker) and lived < 20, f"the step ran on {lived:.1f} s after the delete"
    build = ids.parse_id(ids.Kind.BUILD, bid, what="build_id")
    team = ids.parse_id(ids.Kind.TEAM, mallory.team_id, what="team_id")
    while time.monotonic() - deleted < 60:
        [(status, error)] = asyncio.run(
            platform.sql("SELECT status, error FROM template_builds WHERE id = :i", i=build)
        )
        if status != "running":
            break
        time.sleep(0.2)
    assert (status, error) == ("failed", TEAM_DELETED)
    assert not asyncio.run(platform.sql("SELECT id FROM templates WHERE team_id = :t", t=team))
    assert f"event=build_cancel_seen build_id={build}" in platform.cp.log_path.read_text(errors="replace")
