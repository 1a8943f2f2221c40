"""Session 14: many E2B ``ListDir`` of one big listing at once, against the control plane.

E2B's ``filesystem.Filesystem/ListDir`` gathers the whole listing in the CP, page by page from
the agent, up to 50 000 entries and 32 MiB on the wire (services/envd_fs.py), and then answers
it as one JSON body. None of that was counted in the CP's unary budget
(``WARREN_UNARY_BUDGET_MB``, 128), so the number of listings gathered at once was bounded only
by the team rate limit and the connection caps: 8 listings of 36 000 entries at once held
+397 MiB of the CP (~50 MiB each), 512 from one address would hold tens of GiB. A listing of
more than one page now holds LIST_HELD_BYTES (64 MiB) of the budget while it is gathered; the
others wait for their turn, at most ``WARREN_UNARY_BUDGET_WAIT_S`` (30 s; 5 s on the shared test
platform), then 503 ``server_busy``, as a unary exec past the budget: 12 at once grew the CP by
187 MiB (six answered, six 503), against 458 before.

The attacker is a tenant with its own sandbox and its envd token, as E2B's SDK has them.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_session12_tenants import token_of
from tests.security.test_what_held_api import PeakRss

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

FILES = 8000
AT_ONCE = 12
# The CP's growth: the budget (128 MiB: two listings) of listings being gathered, and the JSON bodies of those
# that were gathered being written; without the budget, 12 listings held ~2.5 times this.
BOUND_MIB = 300


@pytest.mark.timeout(900)
def test_many_big_listings_at_once_wait_for_the_budget(platform: Platform, alice: Tenant) -> None:
    sid = alice.create(memory_mb=512)
    try:
        d = "/tmp/" + "/".join(["d" * 200] * 15)  # long paths: ~3.4 KiB an entry on the wire
        make = f"import os\nfor i in range({FILES}): open('%0200d' % i, 'w').close()"
        alice.sh(sid, f'mkdir -p {d} && cd {d} && python3 -c "{make}"', timeout_sec=300)
        h = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983", "X-Access-Token": token_of(sid)}
        url = platform.cp.e2b_url + "/filesystem.Filesystem/ListDir"

        def one(_: int) -> tuple[int, int]:
            with httpx.Client(timeout=600) as c:
                r = c.post(url, headers=h, json={"path": d, "depth": 1})
                return r.status_code, len(r.json().get("entries", [])) if r.status_code == 200 else 0

        started = time.monotonic()
        with PeakRss(platform) as rss, ThreadPoolExecutor(AT_ONCE) as pool:
            answers = list(pool.map(one, range(AT_ONCE)))
        print(
            f"{AT_ONCE} listings in {time.monotonic() - started:.0f} s: {answers}, grown {rss.grown_mib} MiB"
        )
        assert all(code in (200, 503) for code, _ in answers), answers
        assert all(n == FILES for code, n in answers if code == 200), answers
        # One tenant's share of the budget (three quarters, session 22) holds one listing (64 MiB)
        # at a time; how many more finish within the 5 s wait depends on the machine's load.
        assert sum(code == 200 for code, _ in answers) >= 1, answers
        assert rss.grown_mib[0] <= BOUND_MIB, f"{AT_ONCE} listings grew the CP by {rss.grown_mib[0]} MiB"
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sid}")
