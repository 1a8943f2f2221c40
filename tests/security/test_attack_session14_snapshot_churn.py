"""Session 14: one tenant fills the template store with snapshots it no longer has.

The snapshot storage quota (``quota_snapshot_mb``, 20 GiB by default) counts the team's live
snapshots. A deleted or overwritten snapshot's layer leaves the store only when the layer
collector finds it unreferenced *and* older than its grace period (``WARREN_LAYER_GC_GRACE_S``,
an hour; a pass every ten minutes). So snapshot → delete (or ``?overwrite=true``) in a loop,
a byte changed each time, wrote a new layer each round that stayed on the store's disk for an
hour or more while the quota showed it free: at export speed, hundreds of GB an hour for every
team of the store, far past the quota. Snapshots that failed after their export (the quota's
check at the record, raced by several at once) left theirs likewise.

Now every layer a team's snapshot writes to the store is the team's until the collector has
removed it (``services/team_store.py``): a snapshot is refused (429 ``quota_exceeded``) and
an export stops where the team's layers still in the store, live or not, would pass
its store quota (``store_mb``; twice its snapshot quota until session 15, and set so here); an
export in flight holds its
room. The probes set a small quota for the attacker's own team and measure what of the store's
directory is that team's: the files (layers, spools) holding its sandboxes' files, whose names
carry the team's id. The whole directory is the worker's shared platform's: another module's
late writes counted too (once 120 MiB against 97, ``[201, 429, 429, 429]``, in a loaded run).
"""

from __future__ import annotations

import contextlib
import os
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

QUOTA_MB = 48
FILE_MB = 20  # what each round's layer holds (random bytes: they do not compress)
ROUNDS = 6  # 120 MiB of layers: 2.5 times the quota, past the factor of 2
MiB = 1024 * 1024


def _store_bytes(platform: Platform) -> int:
    total = 0
    for root, _dirs, files in os.walk(Path(platform.cp.home) / "store"):
        for f in files:
            with contextlib.suppress(FileNotFoundError):  # collected meanwhile
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def _holds(path: str, mark: str) -> bool:
    """Whether the tar at ``path`` (a spool's partial one too) has a member named with ``mark``."""
    with contextlib.suppress(tarfile.TarError, OSError, EOFError), tarfile.open(path, "r:") as tf:
        return any(mark in m.name for m in tf)
    return False


def _team_store_bytes(platform: Platform, t: Tenant, since: float) -> int:
    """What the store's directory holds of ``t``'s: the files written since ``since`` (a layer is
    renamed into place once written) with a file of its sandboxes (:func:`_mark`) in them."""
    total = 0
    for root, _dirs, files in os.walk(Path(platform.cp.home) / "store"):
        for f in files:
            path = os.path.join(root, f)
            with contextlib.suppress(FileNotFoundError):  # collected meanwhile
                st = os.lstat(path)
                if st.st_mtime >= since and _holds(path, _mark(t)):
                    total += st.st_size
    return total


def _mark(t: Tenant) -> str:
    """In the name of every file this module's snapshots are of: the team's own."""
    return f"churn-{t.team_id}"


def _admin_quota(platform: Platform, team_id: str, mb: int) -> None:
    with httpx.Client(base_url=platform.url, headers=platform.user_headers, timeout=60) as c:
        # The store bound was twice the snapshot quota until session 15 gave it its own quota.
        body = {"snapshot_mb": mb, "snapshots": 100, "store_mb": 2 * mb}
        r = c.put(f"/v1/admin/teams/{team_id}/quotas", json=body)
        assert r.status_code == 200, r.text


@pytest.fixture
def mallory(platform: Platform) -> Iterator[Tenant]:
    """A fresh team whose operator gave it a small snapshot quota (the default's 20 GiB would
    make the probe write 40 GiB)."""
    t = signup(platform.url, "mallory")
    _admin_quota(platform, t.team_id, QUOTA_MB)
    yield t
    with t.client() as c:
        for s in c.get("/v1/snapshots").json():
            if s.get("team_id", t.team_id) == t.team_id and s.get("type") == "snapshot":
                c.delete(f"/v1/snapshots/{s['name']}")


def _snapshot(t: Tenant, sid: str, name: str, overwrite: bool) -> httpx.Response:
    q = "?overwrite=true" if overwrite else ""
    return t.w("POST", f"/v1/snapshots{q}", {"sandbox_id": sid, "name": name}, timeout=300)


def _new_bytes(t: Tenant, sid: str, rnd: int) -> None:
    """Make this round's layer differ from every other: a new file of random bytes (a snapshot
    leaves its sandbox paused: resumed first)."""
    t.w("POST", f"/v1/sandboxes/{sid}/resume", {})
    blob = f"/root/{_mark(t)}-blob"
    t.sh(sid, f"rm -f {blob}*; head -c {FILE_MB * MiB} /dev/urandom > {blob}{rnd}", timeout_sec=120)


@pytest.mark.parametrize("how", ["overwrite", "delete"])
def test_snapshot_churn_stays_within_the_store_bound(platform: Platform, mallory: Tenant, how: str) -> None:
    sid = mallory.create(memory_mb=256)
    try:
        since = time.time() - 1  # (the store's filesystem stamps files at its tick)
        codes = []
        for rnd in range(ROUNDS):
            _new_bytes(mallory, sid, rnd)
            r = _snapshot(mallory, sid, "churn", overwrite=how == "overwrite")
            codes.append(r.status_code)
            if r.status_code == 201 and how == "delete":
                assert mallory.w("DELETE", "/v1/snapshots/churn").status_code == 204
            if r.status_code != 201:
                assert r.status_code == 429, r.text
                assert r.json()["error"]["code"] == "quota_exceeded", r.text
        grown = _team_store_bytes(platform, mallory, since)
        print(f"{codes}: the team's store {grown / MiB:.1f} MiB")
        # What the team may have in the store: twice its quota (plus tar headers).
        assert grown <= 2 * QUOTA_MB * MiB + MiB, f"{codes}: the store grew {grown / MiB:.0f} MiB"
        assert codes[0] == 201 and 429 in codes, codes  # the first fits; the bound does refuse
        assert grown >= FILE_MB * MiB, grown  # the measure sees the team's layers (the first's)
    finally:
        mallory.w("DELETE", f"/v1/sandboxes/{sid}")


def test_concurrent_snapshots_hold_their_room(platform: Platform, mallory: Tenant) -> None:
    """Four sandboxes snapshotted at once: each export's room is held while it runs, so the
    exports together cannot pass the bound before any of them is recorded."""
    sids = [mallory.create(memory_mb=256) for _ in range(4)]
    try:
        for i, sid in enumerate(sids):
            _new_bytes(mallory, sid, i)
            mallory.sh(
                sid, f"head -c {FILE_MB * MiB} /dev/urandom > /root/{_mark(mallory)}-more{i}", timeout_sec=120
            )
        since = time.time() - 1
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: _snapshot(mallory, sids[i], f"c{i}", False), range(4)))
        codes = [r.status_code for r in answers]
        grown = _team_store_bytes(platform, mallory, since)
        print(f"{codes}: the team's store {grown / MiB:.1f} MiB")
        assert grown <= 2 * QUOTA_MB * MiB + MiB, f"{codes}: the store grew {grown / MiB:.0f} MiB"
        assert set(codes) <= {201, 429}, codes
        assert grown >= 2 * FILE_MB * MiB * codes.count(201), (codes, grown)  # each stored one's
    finally:
        for sid in sids:
            mallory.w("DELETE", f"/v1/sandboxes/{sid}")


def test_another_teams_snapshot_is_unaffected(platform: Platform, mallory: Tenant, bob: Tenant) -> None:
    """The bound is the attacker's: with Mallory at hers, Bob's snapshot still fits his quota."""
    sid = mallory.create(memory_mb=256)
    bsid = bob.create(memory_mb=128)
    try:
        for rnd in range(4):
            _new_bytes(mallory, sid, rnd)
            _snapshot(mallory, sid, "churn", overwrite=True)
        bob.sh(bsid, "echo bob > /root/bob")
        r = _snapshot(bob, bsid, "bobs", overwrite=False)
        assert r.status_code == 201, r.text
        assert bob.w("DELETE", "/v1/snapshots/bobs").status_code == 204
    finally:
        mallory.w("DELETE", f"/v1/sandboxes/{sid}")
        bob.w("DELETE", f"/v1/sandboxes/{bsid}")
