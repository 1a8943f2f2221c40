"""Session 23: streamed watches nobody reads, of long names, against the agent and the CP.

A streamed watch (the WebSocket ``/v1/sandboxes/{id}/watch``, E2B's envd ``WatchDir``) is a
gRPC stream from the sandbox's agent to the CP per watch. Session 22 bounded what the agent's
polling watchers hold (512 KiB a watcher), not the streamed ones, whose events carry paths and
a symlink's target the tenant chooses: measured here with the longest.

As the attacker runs it: in her sandbox, as ``nobody``, a tree of 15 directories with
240-character names under ``/tmp/w``; ``WS`` Warren watch WebSockets and ``E2B`` envd
``WatchDir`` streams on it, none of them read after their first bytes (small receive buffers);
then 1100 symlinks with 247-character names and 4000-byte targets at the bottom, in batches so
the guest hands every event on (each event ~12 KiB on the wire). Before, a fast download on the
same host (any tenant's: gRPC's bandwidth probes on the host's shared channel grow every
stream's window).

Measured on the tree before the fix, 16 WebSockets + 16 ``WatchDir`` streams of one sandbox (a
team may hold 64 streams per CP process, a sandbox 32 watches): CP +128 MiB, agent +107 MiB
(each stream ~4 MiB of the CP, its gRPC window, and ~3 MiB of the agent, 2 MiB of it the guest
connection's read-ahead); with the download first, 16 WebSockets alone held the CP +116 MiB.
After: CP +0-8 MiB, agent +13-18 MiB.

Fixed: the CP's streamed watches go over the host's narrow-window channel (cp/services/watch.py,
the DialPort channel: no bandwidth probes, 64 KiB a stream), and the agent reads a watch from
the guest 64 KiB ahead, not 1 MiB (agent/guest_client.py ``WATCH_READ_AHEAD``).
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_session12_tenants import _watchdir
from tests.security.test_attack_session22_watchers import DEEP, LINKS, _as_nobody
from tests.security.test_attack_websocket_memory import watching
from tests.security.test_what_held_api import raw_websocket

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

WS = 16
E2B = 16
# 32 streams at ~64 KiB of gRPC window and ~128 KiB of read-ahead each, the events being
# converted, and slack; before the fix each held MiBs (the probes' window, a 2 MiB read-ahead).
BOUND_MIB = 40
DOWNLOAD = 128 << 20

TREE = DEEP + "os.makedirs(p)\nprint(p)\n"


def _download(t: Tenant, sid: str) -> None:
    """A fast 128 MiB download first: gRPC's bandwidth probes on the host's channel grow every
    stream's window with it (any tenant's transfer does). It was 1 GiB; on the tree before the
    fix, with 128 MiB: CP +118 MiB, agent +96; with none: +130, +84 (the unread streams' own
    events grow that channel's windows as well)."""
    t.sh(sid, f"truncate -s {DOWNLOAD >> 20}M /tmp/big")
    path = f"/v1/sandboxes/{sid}/files/stream/read"
    with t.client(300) as c, c.stream("POST", path, json={"path": "/tmp/big"}) as resp:
        assert resp.status_code == 200, resp.read()
        got = sum(len(b) for b in resp.iter_bytes(1 << 20))
    assert got == DOWNLOAD, got
    t.sh(sid, "rm /tmp/big")


def test_unread_watch_streams_of_long_names_hold_a_bounded_share(platform: Platform, alice: Tenant) -> None:
    sid = alice.create(memory_mb=256)
    socks: list[socket.socket] = []
    try:
        r = alice.w("POST", f"/v1/sandboxes/{sid}/exec", _as_nobody(TREE))
        assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
        _download(alice, sid)
        rss = watching(platform)
        with rss:
            for _ in range(WS):
                socks.append(
                    raw_websocket(
                        platform.url, f"/v1/sandboxes/{sid}/watch?path=/tmp/w", {"X-API-Key": alice.api_key}
                    )
                )
            for _ in range(E2B):
                socks.append(_watchdir(platform, sid, "/tmp/w", 4096, includeEntry=True))
            r = alice.w("POST", f"/v1/sandboxes/{sid}/exec", _as_nobody(LINKS), timeout=360)
            assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
            peak, still_since, deadline = -1, time.monotonic(), time.monotonic() + 120
            while time.monotonic() - still_since < 5 and time.monotonic() < deadline:
                if sum(rss.grown_mib) > peak:
                    peak, still_since = sum(rss.grown_mib), time.monotonic()
                time.sleep(0.2)
        cp, agent = rss.grown_mib
        print(f"{WS} + {E2B} unread watch streams of long names: CP +{cp} MiB, agent +{agent} MiB")
        assert cp < BOUND_MIB and agent < BOUND_MIB, rss.grown_mib
    finally:
        for s in socks:
            s.close()
        alice.w("DELETE", f"/v1/sandboxes/{sid}")
