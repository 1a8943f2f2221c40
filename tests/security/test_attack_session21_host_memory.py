"""Session 21: a host's tenants together push it past its memory, the scheduler counting each
sandbox at its limit only.

A sandbox holds host memory its memory limit does not bound: a runc/crun sandbox its socket
buffers (cgroup v1 ``memory.kmem.tcp``) up to the agent's socket ceiling, twice a sixteenth of
its memory and at least 32 MiB (+50 % for a 64 MiB sandbox); a gVisor sandbox the 96 MiB its
host cgroup holds past the tenant's limit for the Sentry. The scheduler counted ``memory_mb``, so
a host filled to its memory (``WARREN_OVERCOMMIT_MEMORY`` 1.0) could be driven past its RAM by
its tenants together, and the host's OOM killer then takes a process of any tenant. Now each
sandbox counts at its footprint (warren/footprint.py, migration 0021): the create past the
host's room at footprints gets 503 ``no_capacity``.

The host here is this machine; the operator's memory ratio makes its room :data:`ROOM_MB`, the
memory of a small host: four 64 MiB sandboxes at their limits, two at their footprints (96 MiB
each: 64 + the 32 MiB socket ceiling), one gVisor sandbox (160 MiB). The attacker's view: the
public API with two tenants' keys (the room is the host's, whichever teams fill it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.platform import Platform, running_platform
from tests.harness.tenant import Tenant, signup
from warren.agent.control_plane import host_specs
from warren.footprint import footprint_mb

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]


HOST_MB = host_specs()["memory_mb"]  # what the agent reports
SMALL_MB = 64
# Four 64 MiB sandboxes at their limits (256), with a margin far from every edge below so the
# float ratio's rounding cannot matter; two at their runc/crun footprints (192; three: 288),
# one gVisor (160; two: 320).
ROOM_MB = 4 * SMALL_MB + 16
AT_LIMITS = ROOM_MB // SMALL_MB
AT_FOOTPRINT = ROOM_MB // footprint_mb(SMALL_MB, "runc")
GVISOR_AT_FOOTPRINT = ROOM_MB // footprint_mb(SMALL_MB, "gvisor")


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    env = {"WARREN_OVERCOMMIT_MEMORY": repr(ROOM_MB / HOST_MB)}
    async with running_platform(db_url, platform_dir, env) as p:
        yield p


@pytest.fixture
def tenants(platform: Platform) -> Iterator[tuple[Tenant, Tenant]]:
    mallory, bob = signup(platform.url, "mallory"), signup(platform.url, "bob")
    yield mallory, bob
    for t in (mallory, bob):
        for sb in t.w("GET", "/v1/sandboxes").json():
            t.w("DELETE", f"/v1/sandboxes/{sb['id']}")


def _fill(teams: tuple[Tenant, Tenant], body: dict[str, object]) -> tuple[int, httpx.Response]:
    """Creates by the two teams in turn until one is refused (at most AT_LIMITS + 1): how many
    the host took, and the refusal."""
    for i in range(AT_LIMITS + 1):
        r = teams[i % 2].w("POST", "/v1/sandboxes", {"template": "minimal", "memory_mb": SMALL_MB, **body})
        if r.status_code != 201:
            return i, r
    raise AssertionError(
        f"{AT_LIMITS + 1} sandboxes of {SMALL_MB} MiB landed on a host with {ROOM_MB} MiB of room"
    )


def test_the_host_takes_small_sandboxes_only_up_to_their_footprints(tenants: tuple[Tenant, Tenant]) -> None:
    assert (AT_LIMITS, AT_FOOTPRINT) == (4, 2)
    took, refused = _fill(tenants, {})
    assert took == AT_FOOTPRINT, (
        f"the host took {took} sandboxes of {SMALL_MB} MiB ({footprint_mb(SMALL_MB, 'runc')} MiB each with "
        f"their socket ceiling) on {ROOM_MB} MiB of room: its tenants can hold "
        f"{took * footprint_mb(SMALL_MB, 'runc')} MiB"
    )
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_capacity", refused.text


def test_the_host_counts_a_gvisor_sandbox_with_its_headroom(tenants: tuple[Tenant, Tenant]) -> None:
    assert GVISOR_AT_FOOTPRINT == 1
    took, refused = _fill(tenants, {"runtime": "gvisor"})
    assert took == GVISOR_AT_FOOTPRINT, (
        f"the host took {took} gVisor sandboxes of {SMALL_MB} MiB ({footprint_mb(SMALL_MB, 'gvisor')} MiB "
        f"each with the Sentry's headroom) on {ROOM_MB} MiB of room"
    )
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_capacity", refused.text
