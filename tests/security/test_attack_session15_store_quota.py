"""Session 15: the template store's per-team bound has a quota of its own, ``store_mb``.

Session 14 bounded what a team's layers hold of the store (services/team_store.py) at twice its
snapshot storage quota. That tied two things together: a team whose operator set its snapshot
quota to 0 (no snapshots for it) could build nothing either, its first build step refused, and a
team given a large snapshot quota got twice that much of the store for its builds, whatever the
operator meant. Now the bound is ``quota_store_mb`` (``WARREN_QUOTA_STORE_MB``, 40 GiB by
default: twice the snapshot default), set per team like the other quotas
(``PUT /v1/admin/teams/{id}/quotas {"store_mb": ...}``) and shown with them.

The probes: a team without snapshot quota builds; a team with a large snapshot quota and a small
store quota is stopped at the store quota (a build of many 16 MiB steps fails, and the store
grows by at most the quota and one step's layer).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup
from tests.security.test_attack_session14_snapshot_churn import MiB, _store_bytes
from tests.security.test_attack_session14_template_store import LAYER_MB, ROUNDS, _build

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

STORE_MB = 32


def _quotas(platform: Platform, team_id: str, **quotas: int) -> dict:
    with httpx.Client(base_url=platform.url, headers=platform.user_headers, timeout=60) as c:
        r = c.put(f"/v1/admin/teams/{team_id}/quotas", json=quotas)
        assert r.status_code == 200, r.text
        return dict(r.json())


@pytest.fixture
def mallory(platform: Platform) -> Iterator[Tenant]:
    t = signup(platform.url, "mallory")
    yield t
    for name in ("small", "tall"):
        t.w("DELETE", f"/v1/templates/{name}")


def test_a_team_without_snapshot_quota_still_builds(platform: Platform, mallory: Tenant) -> None:
    report = _quotas(platform, mallory.team_id, snapshot_mb=0, snapshots=0, store_mb=STORE_MB)
    assert report["quotas"]["snapshot_mb"] == 0 and report["quotas"]["store_mb"] == STORE_MB, report
    assert report["overrides"]["store_mb"] == STORE_MB and report["usage"]["store_mb"] == 0, report
    b = _build(mallory, "small", f"FROM minimal\nRUN echo {secrets.token_hex(4)} > /small\n")
    assert b["status"] == "ready", b["log"][-2000:]
    # The team sees its own quota and what its layers hold of the store.
    mine = mallory.w("GET", f"/v1/teams/{mallory.team_id}/quotas").json()
    assert mine["quotas"]["store_mb"] == STORE_MB and mine["usage"]["store_mb"] >= 1, mine


def test_the_store_bound_is_the_store_quota(platform: Platform, mallory: Tenant) -> None:
    """A large snapshot quota (the old bound was twice it: 2 GiB) and a 32 MiB store quota."""
    _quotas(platform, mallory.team_id, snapshot_mb=1024, store_mb=STORE_MB)
    spec = "FROM minimal\n" + "".join(
        f"RUN head -c {LAYER_MB * MiB} /dev/urandom > /blob{i}\n" for i in range(ROUNDS)
    )
    before = _store_bytes(platform)
    b = _build(mallory, "tall", spec)
    grown = _store_bytes(platform) - before
    assert b["status"] == "failed" and "store quota (store_mb)" in b["log"], (b["status"], b["log"][-2000:])
    assert grown <= (STORE_MB + LAYER_MB) * MiB + MiB, f"the store grew {grown / MiB:.0f} MiB"


def test_store_quota_values_are_checked(platform: Platform, mallory: Tenant) -> None:
    with httpx.Client(base_url=platform.url, headers=platform.user_headers, timeout=60) as c:
        for bad in (-1, 2**31, True, "64"):
            r = c.put(f"/v1/admin/teams/{mallory.team_id}/quotas", json={"store_mb": bad})
            assert r.status_code == 400, (bad, r.text)
        limits = c.get("/v1/admin/limits").json()
    assert limits["quota_store_mb"] == 40960, limits
    # A tenant's own key cannot set it.
    r = mallory.w("PUT", f"/v1/admin/teams/{mallory.team_id}/quotas", {"store_mb": 10**6})
    assert r.status_code in (401, 403), r.text
