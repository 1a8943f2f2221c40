"""Session 10's hostile tenant: API keys without number.

A team member may create API keys without limit (one row and one audit record each), and
``GET /v1/api-keys`` (and the dashboard's Keys page) answers every one of them in one
response, built whole in the control plane's memory: at the team request rate (200/s) a
tenant makes 17 million in a day, and then each listing holds gigabytes of one CP process,
which every tenant shares. Every other list the API serves is paged at 1000 entries or bounded
by a quota.

Expected: a team's keys are bounded (the next is a 4xx) or their listing is paged at 1000.
"""

from __future__ import annotations

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

PAGE = 1000


def test_a_teams_api_keys_are_bounded_or_paged(platform: Platform, alice: Tenant) -> None:
    headers = {"Authorization": f"Bearer {alice.token}"}
    refused = None
    with httpx.Client(base_url=platform.url, headers=headers, timeout=60) as c:
        for i in range(PAGE + 1):
            r = c.post("/v1/api-keys", json={"name": f"k{i}"})
            if r.status_code == 429 and r.json()["error"]["code"] == "rate_limited":
                raise AssertionError("the team rate limit stopped the test; lower its pace")
            if r.status_code != 201:
                refused = r
                break
        listed = c.get("/v1/api-keys")
    assert listed.status_code == 200, listed.text
    if refused is not None:
        assert 400 <= refused.status_code < 500, refused.text
        assert len(listed.json()) <= PAGE + 1
    else:
        assert len(listed.json()) <= PAGE, f"{len(listed.json())} keys listed in one response, unpaged"
