"""Session 22: one tenant's unary execs held the CP's whole unary budget, for an hour.

A unary exec (``POST /v1/sandboxes/{id}/exec``) keeps its command's output in the CP until the
command ends, each chunk reserved in the process's unary byte budget (``WARREN_UNARY_BUDGET_MB``,
128 MiB; services/budget.py) for as long as the command runs: up to ``timeout_sec``, an hour. A
request that does not fit waits ``WARREN_UNARY_BUDGET_WAIT_S`` (30 s; 5 s on the test platform),
then 503 ``server_busy``. The budget had no per-tenant share: eight of one tenant's commands
that printed 16 MiB each (its output limit) and then slept held all of it, and every other
team's unary exec on that CP, a 3-byte ``echo`` included, was refused 503 for as long as they
slept. (docs/security.md listed "one tenant can make others wait for it, at most 30 s, then
503" as left open: the 503 lasted as long as the attacker's commands.)

Written as the two tenants would: alice's eight printing commands, her own small exec refused
(the budget, or her share of it, is full), then bob's ``echo``. Now a tenant (its owning
account, or its team) holds at most half the budget, and a request held back by its own share
holds up nobody behind it: bob's exec answers 200 at once.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from warren.config import Settings

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

BUDGET = Settings.model_fields["unary_budget_mb"].default << 20
OUTPUT = Settings.model_fields["max_exec_output"].default  # a unary exec's output limit
HOLDERS = BUDGET // OUTPUT  # 8: together exactly the budget
HOLD = f"head -c {OUTPUT} /dev/zero | tr '\\0' a; sleep 300"


@pytest.mark.timeout(600)
def test_one_tenants_held_output_leaves_another_tenants_exec_room(
    platform: Platform, alice: Tenant, bob: Tenant
) -> None:
    sid_a = alice.create(memory_mb=512)
    sid_b = bob.create(memory_mb=128)
    assert bob.x(sid_b, "echo hi").status_code == 200  # bob's sandbox answers
    try:
        with ThreadPoolExecutor(HOLDERS + 4) as pool:
            # One command at a time, until alice's output fills what she may hold: then her own
            # small exec waits and is refused.
            holders = []
            for _ in range(HOLDERS + 4):
                holders.append(pool.submit(alice.x, sid_a, HOLD, 400))
                # Its 16 MiB in the CP (well under a second). Were it not yet, the probe fits, and
                # one more command, past her share, waits and is refused as the probe is.
                time.sleep(1)
                if (probe := alice.x(sid_a, "echo x", 30)).status_code != 200:
                    break
            assert probe.status_code == 503, f"alice's output never filled what she may hold: {probe.text}"
            started = time.monotonic()
            r = bob.x(sid_b, "echo hi", 30)
            took = time.monotonic() - started
            print(f"bob's exec while alice's output is held: {r.status_code} after {took:.1f} s")
            assert r.status_code == 200, f"bob's echo was refused for alice's held output: {r.text}"
            assert r.json()["stdout"] == "hi\n"
            alice.w("DELETE", f"/v1/sandboxes/{sid_a}")  # her commands end with it
            for h in holders:
                h.result()
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sid_a}")
        bob.w("DELETE", f"/v1/sandboxes/{sid_b}")
