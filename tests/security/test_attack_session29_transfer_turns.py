"""Session 29: one team's many file transfers crowding every other team's requests on the CP
(docs/security.md §24, ``services/transfer_turns.py``).

A transfer relays its file as 64 KiB messages on the CP's one event loop, and the loop runs
every ready callback in turn: Mallory's concurrent uploads (up to her stream cap) put dozens of
message hand-offs ahead of every other team's request at each turn. Beside 64 of them another
team's reads went from a p50 of 2 ms to 21-25 ms (``bench/transfer_turns.py``). Now an account
hands on at most ``WARREN_TRANSFER_TURNS_PER_OWNER`` (2) messages at once; the rest wait their
turn, which the CP counts (``warren_transfer_turn_waits_total``, by direction).

The attack, as Mallory runs it: 12 uploads and 12 downloads at once into and out of her
sandbox, at full speed. Expected: every byte arrives intact, and her messages took turns
(before, no message ever waited: the counter did not exist). That the loop then serves other
teams sooner is the benchmark's to show, not a test's (no timing here).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

MIB = 1 << 20
SIZE = 8 * MIB
AT_ONCE = 12
WAITS = "warren_transfer_turn_waits_total"


def _waits(platform: Platform, direction: str) -> float:
    """The CP's count of messages in ``direction`` that waited for their account's turn."""
    r = httpx.get(f"{platform.url}/metrics", headers=platform.user_headers, timeout=60)
    assert r.status_code == 200, r.text[:300]
    line = f'{WAITS}{{direction="{direction}"}} '
    found = [row.removeprefix(line) for row in r.text.splitlines() if row.startswith(line)]
    assert found, f"{line.strip()} is not among the CP's metrics"
    return float(found[0])


def _upload(alice: Tenant, sid: str, path: str, data: bytes) -> int:
    with alice.client(timeout=120) as c:
        files = {"path": (None, path), "file": ("f", data)}
        return c.post(f"/v1/sandboxes/{sid}/files/stream/write", files=files).status_code


def _download(alice: Tenant, sid: str, path: str) -> str:
    digest = hashlib.sha256()
    url = f"/v1/sandboxes/{sid}/files/stream/read"
    with alice.client(timeout=120) as c, c.stream("POST", url, json={"path": path}) as r:
        assert r.status_code == 200, r.read()[:300]
        for chunk in r.iter_bytes(1 << 16):
            digest.update(chunk)
    return digest.hexdigest()


def test_one_teams_many_transfers_take_turns_and_arrive_whole(
    platform: Platform, alice: Tenant, sandbox: str
) -> None:
    data = os.urandom(SIZE)
    want = hashlib.sha256(data).hexdigest()
    assert _upload(alice, sandbox, "/tmp/source", data) == 204
    before = {d: _waits(platform, d) for d in ("upload", "download")}

    with ThreadPoolExecutor(2 * AT_ONCE) as pool:
        ups = [pool.submit(_upload, alice, sandbox, f"/tmp/up{i}", data) for i in range(AT_ONCE)]
        downs = [pool.submit(_download, alice, sandbox, "/tmp/source") for _ in range(AT_ONCE)]
        assert [u.result() for u in ups] == [204] * AT_ONCE
        assert [d.result() for d in downs] == [want] * AT_ONCE
    for i in range(AT_ONCE):  # each upload whole, where it was sent
        assert _download(alice, sandbox, f"/tmp/up{i}") == want
    alice.x(sandbox, "rm -f /tmp/up* /tmp/source")

    waited = {d: _waits(platform, d) - before[d] for d in before}
    assert waited["upload"] > 0 and waited["download"] > 0, waited
