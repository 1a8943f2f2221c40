"""Session 8's create route (POST /v1/sandboxes takes the app's state as one dependency instead of
five): the authentication it kept, attacked with no credentials, forged ones and a wrong-kind
token, before anything is reserved; and a create lands in the caller's own team only."""

from __future__ import annotations

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

FORGED = (
    {},
    {"X-API-Key": "wk_" + "0" * 40},
    {"X-API-Key": ""},
    {"Authorization": "Bearer not.a.jwt"},
    {"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."},  # alg none
)


def active(t: Tenant) -> list[str]:
    r = t.w("GET", "/v1/sandboxes")
    assert r.status_code == 200, r.text
    return sorted(s["id"] for s in r.json() if s["status"] not in ("stopped", "error"))


@pytest.mark.parametrize("headers", FORGED)
def test_a_create_without_valid_credentials_is_401_and_reserves_nothing(
    platform: Platform, alice: Tenant, headers: dict[str, str]
) -> None:
    before = active(alice)
    r = httpx.post(f"{platform.url}/v1/sandboxes", json={"template": "minimal"}, headers=headers, timeout=60)
    assert r.status_code == 401, r.text
    assert active(alice) == before


def test_a_create_lands_in_the_callers_team_only(alice: Tenant, bob: Tenant) -> None:
    sb = alice.create()
    try:
        assert sb in active(alice) and sb not in active(bob)
        assert bob.w("GET", f"/v1/sandboxes/{sb}").status_code == 404
        assert bob.w("DELETE", f"/v1/sandboxes/{sb}").status_code == 404
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sb}")
