"""Session 14: one tenant against the platform's storage, through the public API only.

* **The audit log.** Every change of a sandbox's egress rules (``PATCH
  /v1/sandboxes/{id}/network``) wrote the whole rule list into its audit record: 256 names of
  up to 253 characters, ~66 KiB of JSON a request, kept 90 days
  (``WARREN_AUDIT_RETENTION_DAYS``). At the team rate limit that is GBs of PostgreSQL an hour
  from one API key. A record's metadata is now at most ~4 KiB (services/audit.py: long values
  are replaced by their size and count, with the whole's sha256).

* **Failed requests.** Every state-changing request that failed (a 4xx after authentication)
  wrote a failure record: a flood of ``DELETE /v1/sandboxes/<no such id>`` is a row a request
  that costs the attacker nothing, at the team rate limit (200/s a replica) millions of rows a
  day kept 90 days. A team now writes at most ``FAILURE_BURST`` failure records, then one every
  ``FAILURE_EVERY_S`` per CP process; the next record written says how many were left out
  (``suppressed_before``).

Each probe runs as the attacker does (the tenant's own API key) and measures the victim's
resource (bytes of ``audit_logs`` rows) against a bound far from what a fixed tree writes.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup
from warren import ids
from warren.cp.services.audit import FAILURE_BURST, FAILURE_EVERY_S

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

# What one audit record may hold: the bound (4 KiB of JSON) plus jsonb's overhead. The old tree
# wrote ~66 KiB a record (stored ~40 KiB compressed): far past it.
RECORD_BOUND = 8 * 1024
# Each record is bounded, so a few changes show it; a sandbox's changes are applied at most one a
# second (agent/egress_pace.py, session 23).
PATCHES = 6


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
        # One change of a sandbox at a time (a concurrent one is 409), one a second at most.
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


FLOOD = 400


def _failures_since(platform: Platform, team_id: str, since: object) -> list[dict[str, Any]]:
    rows = asyncio.run(
        platform.sql(
            "SELECT metadata FROM audit_logs WHERE team_id = :t AND action = 'failed' AND created_at >= :s"
            " ORDER BY created_at",
            t=ids.parse_id(ids.Kind.TEAM, team_id),
            s=since,
        )
    )
    return [r[0] for r in rows]


def _now(platform: Platform) -> object:
    return asyncio.run(platform.sql("SELECT now()"))[0][0]


def _flood(t: Tenant, request: tuple[str, str, Any], n: int) -> dict[int, int]:
    """``n`` failing requests, 8 at a time; how many got each status."""
    method, path, body = request
    codes: dict[int, int] = {}
    with t.client() as c, ThreadPoolExecutor(8) as pool:
        for code in pool.map(lambda _: c.request(method, path, json=body).status_code, range(n)):
            codes[code] = codes.get(code, 0) + 1
    return codes


MISSING = ids.sandbox_id(uuid.UUID(int=14))  # well-formed, nobody's: 404
FAILING = {
    "delete-missing": ("DELETE", f"/v1/sandboxes/{MISSING}", None),
    "bad-body": ("POST", "/v1/snapshots", {"sandbox_id": "nope"}),
    "network-missing": ("PATCH", f"/v1/sandboxes/{MISSING}/network", {"deny_out": []}),
}


@pytest.mark.parametrize("kind", sorted(FAILING))
def test_failed_requests_do_not_write_a_row_each(platform: Platform, bob: Tenant, kind: str) -> None:
    mallory = signup(platform.url, "mallory")  # a fresh team: its whole budget
    since = _now(platform)
    started = time.monotonic()
    codes = _flood(mallory, FAILING[kind], FLOOD)
    elapsed = time.monotonic() - started
    failed = sum(n for code, n in codes.items() if 400 <= code < 500 and code != 429)
    assert failed >= FLOOD // 2, codes  # most were refused for themselves, not rate-limited
    rows = _failures_since(platform, mallory.team_id, since)
    allowed = FAILURE_BURST + elapsed / FAILURE_EVERY_S + 2
    assert len(rows) <= allowed, f"{failed} failed requests in {elapsed:.1f} s wrote {len(rows)} audit rows"
    assert len(rows) >= min(FAILURE_BURST, failed)  # the first ones are all there
    # Another team's failures are its own budget: recorded.
    bob_since = _now(platform)
    assert bob.w(*FAILING[kind][:2], FAILING[kind][2]).status_code in range(400, 500)
    assert len(_failures_since(platform, bob.team_id, bob_since)) == 1


def test_a_record_after_the_budget_says_how_many_it_left_out(platform: Platform) -> None:
    carol = signup(platform.url, "carol")
    since = _now(platform)
    codes = _flood(carol, FAILING["delete-missing"], FAILURE_BURST + 200)
    time.sleep(FAILURE_EVERY_S + 1)  # the budget has room for one more record
    assert carol.w("DELETE", f"/v1/sandboxes/{MISSING}").status_code == 404
    want = sum(n for c, n in codes.items() if c == 404) + 1
    # A failure's record is written after its response is sent (cp/observe.py): read until the
    # last one is in (CI once read before it, under load), then compare.
    deadline = time.monotonic() + 30
    while True:
        rows = _failures_since(platform, carol.team_id, since)
        suppressed = sum(int(r.get("suppressed_before", 0)) for r in rows)
        if suppressed + len(rows) >= want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert suppressed + len(rows) == want, (codes, len(rows))
