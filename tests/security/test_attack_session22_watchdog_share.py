"""Session 22: one tenant's sandboxes took every socket watchdog worker from another team (v1).

Session 20 moved enforcement off the watchdog's tick: a sandbox past its socket ceiling is
enforced by one of 4 worker threads, and a pass of kills costs what the tenant makes it (its
processes' descriptors), up to 5 s, twice before all of ``cmds`` is killed. The workers took
sandboxes first come, first served, whoever owned them: tenant A with 4 sandboxes past their
ceilings held all 4, and tenant B's sandbox past its own ceiling waited in the queue
(``event=socket_watchdog_queued``) until one of A's enforcements was done, and behind every
other of A's sandboxes queued before it.

As the attacker runs it (tenant A's key; scripts inside A's sandboxes as ``nobody``): in each of
4 sandboxes, 300 ``sleep`` processes inherit ~4000 descriptors each (a pass's reads take longer
than the 5 s a pass may), then a holder of 1000 unread loopback TCP pairs takes the sandbox past
its ceiling. Once the watchdog is at all of them, tenant B's holder (its 1000 pairs connected
before, quiet) fills them at once.

Now a team holds at most 3 of the 4 workers (runtime/enforce_workers.py), and a free worker
takes the sandbox whose team holds the fewest: B's sandbox is enforced at once, never queued.
Measured: before, B was killed 3.1-3.4 s after it went past its ceiling, after waiting in the
queue; now 0.4 s. The share needed the owner: the agent's records named each sandbox's
*template's* team (the same all-zero team for every sandbox of the built-in ``minimal``), so
the CP now sends ``owner_team_id`` and the agent shares by it (``HostSandbox.tenant``; its
file transfer windows' per-team share, which had the same fault, too).
"""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_pools_claim import _agent_log
from tests.security.test_attack_session18_socket_ceiling import HOLD, _cmds_comms, _start
from tests.security.test_attack_session18_socket_memory import _memcg, _tcp
from tests.security.test_attack_session20_socket_watchdog import SPREADER
from warren import ids
from warren.agent.record import RECORD_FILE
from warren.agent.runtime.socket_ceiling import WORKERS, ceiling

# On the worker's shared platform (no platform start of its own, ~5 CPU-s): it only reads the
# agent's log and records, and changes nothing beyond its own tenants' sandboxes.
pytestmark = [pytest.mark.root, pytest.mark.shared_platform, pytest.mark.timeout(900)]

SPREAD = 300  # sleep processes in each of A's sandboxes, ~4000 descriptors each
A_MB = 256  # room for them (~270 KiB a process) and the holder
PAIRS = 1000  # ~64 MiB of unread data against a 32 MiB ceiling (a 256 MiB sandbox)
LOOKED_S = 2.0  # A past its ceilings this long before B fires: the watchdog is at A
WAIT_S = 240.0

# argv: pairs. Connects them all (nothing sent: under the ceiling), says "armed", waits for
# /tmp/fire, then sends 64 KiB into each: past the ceiling within a tick.
ARMED = r"""
import os, socket, sys, time
def name(s):
    with open("/proc/self/comm", "w") as f:
        f.write(s)
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(1024)
pairs = []
for _ in range(int(sys.argv[1])):
    c = socket.create_connection(ls.getsockname())
    s, _ = ls.accept()
    c.setblocking(False)
    pairs.append((c, s))
name("armed")
while not os.path.exists("/tmp/fire"):
    time.sleep(0.02)
for c, _ in pairs:
    try:
        c.send(b"x" * 65536)
    except BlockingIOError:
        pass
name("fired")
time.sleep(3600)
"""


def _lines(platform: Platform, event: str, sid: str) -> int:
    return len(re.findall(rf"event={event} sandbox={sid} ", _agent_log(platform)))


def _done_with(platform: Platform, sid: str) -> bool:
    """The watchdog has finished a pass of ``sid``'s (a kill line of any kind)."""
    return re.search(rf"event=socket_(?:memory|count)_\w+ sandbox={sid} ", _agent_log(platform)) is not None


def _owner(platform: Platform, sid: str) -> tuple[str, str]:
    """The owning team and account the agent recorded for ``sid``."""
    rec = json.loads((platform.agents[0].data_dir / "sandboxes" / sid / RECORD_FILE).read_text())
    return str(rec["owner_team"]), str(rec["owner_account"])


def _account(tenant: Tenant) -> str:
    me = httpx.get(f"{tenant.url}/v1/users/me", headers={"Authorization": f"Bearer {tenant.token}"})
    return str(ids.parse_id(ids.Kind.USER, me.raise_for_status().json()["user_id"]))


def _until(what: str, ok: object, began: float) -> None:
    assert ok, f"never: {what}"
    assert time.monotonic() - began < WAIT_S, f"not within {WAIT_S:.0f} s: {what}"


def _hold_the_workers(platform: Platform, alice: Tenant, attackers: list[str]) -> None:
    """A's sandboxes: the spread, then the holders; until each is past its ceiling, LOOKED_S more."""
    began = time.monotonic()
    for sid in attackers:
        _start(alice, sid, SPREADER, [str(SPREAD)], "nobody", "spread")
    for sid in attackers:
        d = _memcg(platform, sid)
        while list(_cmds_comms(d).values()).count("sleep") < SPREAD:
            _until(f"{SPREAD} sleeps in {sid}", True, began)
            time.sleep(0.2)
    for sid in attackers:
        _start(alice, sid, HOLD, ["1", str(PAIRS)], "nobody", "hold")
    for sid in attackers:
        d = _memcg(platform, sid)
        while _tcp(d, "usage_in_bytes") <= ceiling(_tcp(d, "limit_in_bytes")):
            _until(f"{sid} past its ceiling", True, began)
            time.sleep(0.05)
    time.sleep(LOOKED_S)


def test_another_teams_sandbox_past_its_ceiling_gets_a_worker_while_one_team_floods_them(
    platform: Platform, alice: Tenant, bob: Tenant
) -> None:
    attackers = [alice.create(memory_mb=A_MB, runtime="runc") for _ in range(WORKERS)]
    victim = bob.create(memory_mb=256, runtime="runc")
    try:
        # The agent knows each sandbox's owner (not only its template's team, the same for all).
        owners = {sid: _owner(platform, sid) for sid in [*attackers, victim]}
        a_owner, b_owner = ((str(ids.parse_id(ids.Kind.TEAM, t.team_id)), _account(t)) for t in (alice, bob))
        assert owners == {**dict.fromkeys(attackers, a_owner), victim: b_owner}, owners
        b = _memcg(platform, victim)
        b_top = ceiling(_tcp(b, "limit_in_bytes"))
        _start(bob, victim, ARMED, [str(PAIRS)], "nobody", "armed")
        began = time.monotonic()
        while "armed" not in _cmds_comms(b).values():
            _until("B's holder armed", True, began)
            time.sleep(0.1)
        assert _tcp(b, "usage_in_bytes") <= b_top  # quiet until fired

        _hold_the_workers(platform, alice, attackers)
        held = [_done_with(platform, sid) for sid in attackers]
        assert not any(held), f"the watchdog was done with one of A's before B fired: {held}"

        assert bob.sh(victim, "touch /tmp/fire") == ""
        fired, b_max = time.monotonic(), 0
        while _lines(platform, "socket_memory_kill", victim) == 0:
            b_max = max(b_max, _tcp(b, "usage_in_bytes"))
            _until("B's holder killed", True, fired)
            time.sleep(0.05)
        queued = _lines(platform, "socket_watchdog_queued", victim)
        a_queued = sum(_lines(platform, "socket_watchdog_queued", sid) for sid in attackers)
        print(
            f"B past its ceiling ({b_max >> 20} of {b_top >> 20} MiB), killed after "
            f"{time.monotonic() - fired:.1f} s; B queued {queued} times; A's queued lines {a_queued}"
        )
        assert b_max > b_top, "B never went past its ceiling"
        assert queued == 0, "B's sandbox waited for a worker while A's held them all"
        while _tcp(b, "usage_in_bytes") > b_top:
            _until("B back under its ceiling", True, fired)
            time.sleep(0.05)
        assert bob.sh(victim, "echo alive").strip() == "alive"  # B's sandbox and guest live on
        for sid in attackers:  # and A is still contained
            d = _memcg(platform, sid)
            while _tcp(d, "usage_in_bytes") > ceiling(_tcp(d, "limit_in_bytes")):
                _until(f"{sid} back under its ceiling", True, fired)
                time.sleep(0.1)
    finally:
        for sid in attackers:
            alice.w("DELETE", f"/v1/sandboxes/{sid}")
        bob.w("DELETE", f"/v1/sandboxes/{victim}")
