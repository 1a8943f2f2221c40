"""Session 14: one tenant fills the template store with build layers.

Nothing bounded what a team's builds keep in the template store. Each RUN step's layer goes to
the store and into the team's build cache, which keeps it live for ``WARREN_BUILD_CACHE_TTL_S``
(7 days) whether or not any template version still names it: deleting the template frees
nothing. Only the number of versions (1000 a team) and one template's size (8 GiB, checked when
the build ends, after every step's layer is stored) were bounded, so a loop of builds with a
changed ``RUN`` each time (2 at once a team, 10 teams an account) filled the disk every team's
templates and snapshots share.

Now a team's builds and imports count against the same bound as its snapshots
(services/snapshot_store.py): every layer the team wrote to the store counts until the
collector removes it, and a build step (or an import) that would start past
the team's store quota (``store_mb``; twice the snapshot storage quota until session 15, and set
so here) fails with 429 ``quota_exceeded``. The
probes give the attacker's own team a small quota and measure the store's directory.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup
from tests.security.test_attack_session14_snapshot_churn import MiB, _admin_quota, _store_bytes

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

QUOTA_MB = 32
LAYER_MB = 16  # random bytes: they do not compress
ROUNDS = 6  # 96 MiB of layers: 3 times the quota
WAIT_S = 300


@pytest.fixture
def mallory(platform: Platform) -> Iterator[Tenant]:
    t = signup(platform.url, "mallory")
    _admin_quota(platform, t.team_id, QUOTA_MB)
    yield t


def _build(t: Tenant, name: str, spec: str) -> dict[str, Any]:
    with t.client(timeout=120) as c:
        r = c.post("/v1/templates", json={"name": name, "spec": spec})
        assert r.status_code == 202, r.text
        build_id = r.json()["build_id"]
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            b = c.get(f"/v1/templates/{name}/builds/{build_id}").json()
            if b["status"] in ("ready", "failed"):
                log = c.get(f"/v1/templates/{name}/builds/{build_id}/log").json()["data"]
                return {**b, "log": log}
            time.sleep(0.5)
    raise AssertionError(f"build {build_id} did not end in {WAIT_S} s")


def _spec(nonce: str) -> str:
    return f"FROM minimal\nRUN head -c {LAYER_MB * MiB} /dev/urandom > /blob-{nonce}\n"


def test_build_and_delete_loop_stays_within_the_store_bound(platform: Platform, mallory: Tenant) -> None:
    before = _store_bytes(platform)
    results = []
    for _ in range(ROUNDS):
        b = _build(mallory, "churn", _spec(secrets.token_hex(4)))
        results.append(b["status"])
        if b["status"] == "ready":
            assert mallory.w("DELETE", "/v1/templates/churn").status_code == 204
        else:
            assert "template store" in b["log"], b["log"][-2000:]
    grown = _store_bytes(platform) - before
    # The team's layers may reach the bound once (a step starts below it and writes one layer).
    assert grown <= (2 * QUOTA_MB + LAYER_MB) * MiB + MiB, f"{results}: the store grew {grown / MiB:.0f} MiB"
    assert results[0] == "ready" and "failed" in results, results


def test_many_steps_in_one_build_stop_at_the_bound(platform: Platform, mallory: Tenant) -> None:
    """One build of many RUN steps: the template's size was checked only at its end, after
    every layer was in the store (and in the cache for 7 days)."""
    spec = "FROM minimal\n" + "".join(
        f"RUN head -c {LAYER_MB * MiB} /dev/urandom > /blob{i}\n" for i in range(ROUNDS)
    )
    before = _store_bytes(platform)
    b = _build(mallory, "tall", spec)
    grown = _store_bytes(platform) - before
    assert b["status"] == "failed", b
    assert grown <= (2 * QUOTA_MB + LAYER_MB) * MiB + MiB, f"the store grew {grown / MiB:.0f} MiB"


def test_another_team_still_builds(platform: Platform, mallory: Tenant, bob: Tenant) -> None:
    for _ in range(4):
        _build(mallory, "churn", _spec(secrets.token_hex(4)))
        mallory.w("DELETE", "/v1/templates/churn")
    b = _build(bob, "bobs", f"FROM minimal\nRUN echo {secrets.token_hex(4)} > /bob\n")
    assert b["status"] == "ready", b["log"][-2000:]
    assert bob.w("DELETE", "/v1/templates/bobs").status_code == 204
