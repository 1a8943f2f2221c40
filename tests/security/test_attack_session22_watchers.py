"""Session 22: polling watchers nobody polls, against the agent's own memory.

A polling watcher (``POST /v1/sandboxes/{id}/watchers``, E2B's ``watch_dir`` with polling) is a
task in the agent that reads the guest's watch into a buffer until the client polls. The buffer
was bounded in events (1000) only, each held as a protobuf object with the event's path, its
entry's path and a symlink's target. All of it is the agent's memory, outside every sandbox's
cgroup, and a tenant chooses how long the names are.

As the attacker runs it: in her own sandbox, as ``nobody``, a tree of 15 directories with
240-character names under ``/tmp/w``; 16 watchers on it (the per-sandbox cap), never polled;
then 550 symlinks with 247-character names and 4000-byte targets at the bottom, in batches so
the guest hands every event on. Measured on the tree before the fix: the agent +230-233 MiB for
one sandbox (~14 KiB an event; a team's 20 sandboxes would hold ~4.5 GiB of the host); after,
+12 MiB.

Fixed (agent/watch_rpc.py): a watcher holds its events serialized, at most 512 KiB of them
(``MAX_POLL_BYTES``) besides the 1000-event bound; past either, ``overflowed``. Expected: the
agent grows by at most ``BOUND_MIB``, and a poll still answers events, flagged as overflowed.
"""

from __future__ import annotations

import time

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_what_held_api import PeakRss
from warren.agent import watch_rpc

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

WATCHERS = watch_rpc.MAX_WATCHERS  # 16
# 16 watchers x 512 KiB, plus the transient of the guest's batches being read, plus slack.
BOUND_MIB = 48

DEEP = r"""
import os, time
p = "/tmp/w"
for i in range(15):
    p = p + "/" + ("d%d" % i) + "x" * 240
"""
TREE = DEEP + "os.makedirs(p)\n"


def _links(batches: int) -> str:
    """``batches`` of 50 symlinks at the bottom of the tree, half a second apart."""
    return (
        DEEP
        + f"""
os.chdir(p)
target = "/" + "t" * 4000
for b in range({batches}):
    for i in range(b * 50, b * 50 + 50):
        os.symlink(target, ("%06d" % i) + "y" * 240)
    time.sleep(0.5)
"""
    )


LINKS = _links(22)  # session 23's streamed watches: 1100
# 550 here: each of 16 watchers held ~14 KiB an event before the fix (+230 MiB with 1100, up to
# its 1000 events), so ~+120 MiB against the bound's 48; after, 512 KiB is ~40 of these events.
WATCHED_LINKS = _links(11)


def _as_nobody(code: str) -> dict[str, object]:
    return {"cmd": "python3", "args": ["-c", code], "user": "nobody", "timeout_sec": 300}


def test_unpolled_watchers_of_long_names_hold_a_bounded_share_of_the_agent(
    platform: Platform, alice: Tenant
) -> None:
    sid = alice.create(memory_mb=256)
    try:
        r = alice.w(
            "POST", f"/v1/sandboxes/{sid}/exec", {"cmd": "python3", "args": ["-c", TREE], "user": "nobody"}
        )
        assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
        with PeakRss(platform) as rss:
            made = [
                alice.w("POST", f"/v1/sandboxes/{sid}/watchers", {"path": "/tmp/w", "recursive": True})
                for _ in range(WATCHERS)
            ]
            assert [r.status_code for r in made] == [201] * WATCHERS, made[-1].text
            r = alice.w("POST", f"/v1/sandboxes/{sid}/exec", _as_nobody(WATCHED_LINKS), timeout=360)
            assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
            # Until the agent's growth stops for 5 s (the guest handed every event on).
            peak, still_since, deadline = -1, time.monotonic(), time.monotonic() + 120
            while time.monotonic() - still_since < 5 and time.monotonic() < deadline:
                if rss.grown_mib[1] > peak:
                    peak, still_since = rss.grown_mib[1], time.monotonic()
                time.sleep(0.2)
        print(f"{WATCHERS} unpolled watchers: agent +{rss.grown_mib[1]} MiB, CP +{rss.grown_mib[0]} MiB")
        assert rss.grown_mib[1] <= BOUND_MIB, rss.grown_mib
        # A poll still answers the oldest events, and says some were dropped.
        wid = made[0].json()["watcher_id"]
        polled = alice.w("GET", f"/v1/sandboxes/{sid}/watchers/{wid}/events")
        assert polled.status_code == 200, polled.text
        body = polled.json()
        assert body["events"] and body["overflowed"], (len(body["events"]), body["overflowed"])
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sid}")
