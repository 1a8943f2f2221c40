"""Session 10's hostile tenant: every quota is per team, and one account makes teams without
number.

``POST /v1/teams`` has no bound: a signed-up user (signup itself is 60 an hour per address)
creates a team per call at the team request rate, and each new team brings the whole default
quota with it (20 sandboxes, 40 vCPUs, 40 GiB of memory, 20 GiB of snapshots, 2 builds at once,
its own 200 requests a second). One account therefore holds as much of the platform's
capacity as it likes, and the quotas that keep one tenant from crowding out the others bound
nothing. ``GET /v1/teams`` lists them all in one response.

Expected: the teams one user may own are bounded (the next create is a 4xx: 429
``quota_exceeded`` past ``WARREN_MAX_TEAMS_PER_USER``, 10 by default, the signup team included),
and a burst of concurrent creates by one account does not slip past the bound.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

TRIES = 101  # no product needs a hundred teams per account without an operator's say
CAP = 10  # WARREN_MAX_TEAMS_PER_USER's default, which this module's CP runs with
BURST = 40  # creates sent at once by one account


def test_one_account_cannot_make_teams_without_bound(platform: Platform, alice: Tenant) -> None:
    made = 0
    auth = {"Authorization": f"Bearer {alice.token}"}
    with httpx.Client(base_url=platform.url, headers=auth, timeout=60) as c:
        for i in range(TRIES):
            r = c.post("/v1/teams", json={"name": f"shell-{i}"})
            if r.status_code != 201:
                assert 400 <= r.status_code < 500, r.text
                break
            made += 1
        listed = c.get("/v1/teams")
    assert made < TRIES, f"one account made {made} teams ({len(listed.json())} listed), each a full quota"
    assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded", r.text
    assert made == CAP - 1 and len(listed.json()) == CAP, (made, len(listed.json()))


def test_a_burst_of_concurrent_creates_does_not_slip_past_the_bound(platform: Platform) -> None:
    """The count and the insert are one step per user: BURST creates at once, each on its own
    connection, and exactly the places left are taken."""
    mallory = signup(platform.url, "mallory")
    auth = {"Authorization": f"Bearer {mallory.token}"}

    def create(i: int) -> int:
        with httpx.Client(base_url=platform.url, headers=auth, timeout=60) as c:
            return c.post("/v1/teams", json={"name": f"burst-{i}"}).status_code

    with ThreadPoolExecutor(BURST) as pool:
        statuses = sorted(pool.map(create, range(BURST)))
    with httpx.Client(base_url=platform.url, headers=auth, timeout=60) as c:
        listed = c.get("/v1/teams").json()
    assert statuses == [201] * (CAP - 1) + [429] * (BURST - CAP + 1), statuses
    assert len(listed) == CAP, len(listed)
