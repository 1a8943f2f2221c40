"""Session 14: one tenant against the platform's storage, through the public API only.

* **The audit log.** Every change of a sandbox's egress rules (``PATCH
  /v1/sandboxes/{id}/network``) wrote the whole rule list into its audit record: 256 names of
  up to 253 characters, ~66 KiB of JSON a request, kept 90 days
  (``WARREN_AUDIT_RETENTION_DAYS``). At the team rate limit that is GBs of PostgreSQL an hour
  from one API key. A record's metadata is now at most ~4 KiB (services/audit.py: long values
  are replaced by their size and count, with the whole's sha256).

Each probe runs as the attacker does (the tenant's own API key) and measures the victim's
resource (bytes of ``audit_logs`` rows) against a bound far from what a fixed tree writes.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

# What one audit record may hold: the bound (4 KiB of JSON) plus jsonb's overhead. The old tree
# wrote ~66 KiB a record (stored ~40 KiB compressed): far past it.
RECORD_BOUND = 8 * 1024
PATCHES = 24


def _long_name() -> str:
    """A valid DNS name of 253 characters that does not compress (random labels)."""
    labels = [secrets.token_hex(31) + "a" for _ in range(3)] + [secrets.token_hex(30)]
    return ".".join(labels)[:249] + ".com"


def _rules(n: int = 256) -> dict[str, list[str]]:
    names = [_long_name() for _ in range(n)]
    return {"deny_out": names[: n // 2], "allow_out": names[n // 2 :]}


async def _audit_bytes(platform: Platform, team_id: str, resource_type: str) -> tuple[int, int, int]:
    """(records, total bytes, largest record) of the team's ``resource_type`` audit records, as
    PostgreSQL stores their metadata."""
    from warren import ids

    rows = await platform.sql(
        "SELECT count(*), coalesce(sum(pg_column_size(metadata)), 0),"
        " coalesce(max(octet_length(metadata::text)), 0) FROM audit_logs"
        " WHERE team_id = :t AND resource_type = :r",
        t=ids.parse_id(ids.Kind.TEAM, team_id),
        r=resource_type,
    )
    n, total, largest = rows[0]
    return int(n), int(total), int(largest)


def _change(platform: Platform, alice: Tenant, sid: str, route: str, body: dict[str, Any]) -> int:
    """One change of the sandbox's rules through Warren's API or the E2B listener's."""
    if route == "api":
        return alice.w("PATCH", f"/v1/sandboxes/{sid}/network", body).status_code
    e2b = {"denyOut": body["deny_out"], "allowOut": body["allow_out"]}
    with httpx.Client(base_url=platform.cp.e2b_url, headers={"X-API-KEY": alice.api_key}, timeout=120) as c:
        return c.put(f"/sandboxes/{sid}/network", json=e2b).status_code


@pytest.mark.parametrize("route", ["api", "e2b"])
def test_network_changes_do_not_grow_the_audit_log_by_their_rules(
    platform: Platform, alice: Tenant, route: str
) -> None:
    sid = alice.create(memory_mb=128)
    try:
        bodies = [_rules() for _ in range(PATCHES)]
        before = asyncio.run(_audit_bytes(platform, alice.team_id, "sandbox_network"))
        # One change of a sandbox at a time (a concurrent one is 409): the attacker's rate is
        # the agent's, ~20-50 a second, times its sandboxes.
        codes = [_change(platform, alice, sid, route, b) for b in bodies]
        assert set(codes) <= {200, 204} and len(codes) == PATCHES, codes
        n, total, largest = asyncio.run(_audit_bytes(platform, alice.team_id, "sandbox_network"))
        grown = total - before[1]
        assert n - before[0] == PATCHES  # every change is still recorded
        assert largest <= RECORD_BOUND, f"one record holds {largest} bytes of metadata"
        assert grown <= PATCHES * RECORD_BOUND, f"{PATCHES} changes grew the audit log by {grown} bytes"
        # The rules themselves are where they belong: on the sandbox, whole.
        got = alice.w("GET", f"/v1/sandboxes/{sid}/network").json()
        assert got["deny_out"] == bodies[-1]["deny_out"]
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sid}")


def test_a_long_record_keeps_its_small_fields_and_a_digest(platform: Platform, alice: Tenant) -> None:
    """What the bound keeps: who, from where (ip, request id), the counts, and the sha256 of what
    was asked, so an investigator can still match a record to a copy of the rules."""
    from warren import ids

    sid = alice.create(memory_mb=128)
    try:
        body = _rules(200)
        r = alice.w("PATCH", f"/v1/sandboxes/{sid}/network", body)
        assert r.status_code == 200, r.text
        rows = asyncio.run(
            platform.sql(
                "SELECT metadata FROM audit_logs WHERE team_id = :t AND resource_type = 'sandbox_network'"
                " ORDER BY created_at DESC LIMIT 1",
                t=ids.parse_id(ids.Kind.TEAM, alice.team_id),
            )
        )
        meta = rows[0][0]
        assert meta["deny_out"] == {"omitted_bytes": meta["deny_out"]["omitted_bytes"], "count": 100}
        assert meta["allow_out"]["count"] == 100
        assert len(meta["metadata_truncated"]["sha256"]) == 64
        assert meta.get("request_id") and meta.get("ip")
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sid}")
