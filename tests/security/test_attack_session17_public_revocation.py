"""Session 17: a visitor's open connections to a public port end when the port stops being public.

Session 17 ended open preview connections with the credential that admitted them (a traffic
token, a signed URL, its cookie), but a public port's visitors carry none: the proxy did not
register their connections, so Eve, anyone on the internet, kept a WebSocket and an endless
response to Bob's server after Bob made its port private (``PATCH /v1/sandboxes/{id}`` without
it in ``public_ports``): exactly what Bob closed it to stop. Each must end within
``ENDS_WITHIN_S``; what Bob still allows goes on: Eve's connections to the port left public,
and Bob's own traffic-token connections to the same sandbox. A sandbox deleted or paused ends
them too (paused in memory, the sandbox is frozen with its connections open: without this they
hung there, and went on after a resume). ``all_ports_public`` (E2B's allowPublicTraffic) is set at
creation and no API changes it afterwards, so only ``public_ports`` is exercised here.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup
from tests.security.test_attack_session17_preview_revocation import (
    SERVER,
    Tap,
    _stopping,
    assert_flowing,
    http_tap,
    ws_tap,
)

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

PRIVATE, CLOSED, KEPT = 8000, 8001, 8002  # CLOSED is public until Bob makes it private
# The CP re-reads open connections' grants every 5 s, and at once after a change it made itself.
ENDS_WITHIN_S = 20.0

assert "for p in (8000, 8001):" in SERVER
_SERVER3 = SERVER.replace("for p in (8000, 8001):", "for p in (8000, 8001, 8002):")


def _bobs_sandbox(platform: Platform, bob: Tenant) -> tuple[str, str]:
    """Bob's sandbox, its server on three ports, two of them public: (id, traffic token)."""
    r = bob.w("POST", "/v1/sandboxes", {"template": "minimal", "memory_mb": 128})
    assert r.status_code == 201, r.text
    sid, token = r.json()["id"], r.json()["traffic_token"]
    bob.sh(sid, f"cat > /tmp/srv.py <<'EOF'\n{_SERVER3}\nEOF\n(setsid python3 /tmp/srv.py >/dev/null 2>&1 &)")
    r = bob.w("PATCH", f"/v1/sandboxes/{sid}", {"public_ports": [CLOSED, KEPT]})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60
    while httpx.get(f"{platform.url}/v1/sandboxes/{sid}/ports/{CLOSED}/", timeout=60).status_code != 200:
        assert time.monotonic() < deadline, "the sandbox's server did not start"
        time.sleep(0.3)
    return sid, token


def _eve(platform: Platform, sid: str, port: int, stop: threading.Event) -> list[Tap]:
    """Eve's connections, without any credential."""
    base = f"{platform.url}/v1/sandboxes/{sid}/ports/{port}"
    return [
        ws_tap(f"eve ws :{port}", f"{base}/ws", {}, stop),
        http_tap(f"eve http :{port}", f"{base}/stream", {}, stop),
    ]


def _wait_ended(cut: list[Tap], after: str) -> None:
    deadline = time.monotonic() + ENDS_WITHIN_S
    for tap in cut:
        tap.ended.wait(max(deadline - time.monotonic(), 0.01))
    going = [t.name for t in cut if not t.ended.is_set()]
    assert not going, f"still open {ENDS_WITHIN_S:.0f} s after {after}: {going}"
    # Ended by the proxy, not by the reader giving up on a frozen sandbox (http_tap reads with a
    # 10 s timeout: a paused sandbox's response just stops coming).
    timed_out = [t.name for t in cut if "Timeout" in t.how]
    assert not timed_out, f"not ended by the proxy after {after}, the reader timed out: {timed_out}"


def test_making_a_port_private_ends_its_visitors(platform: Platform) -> None:
    bob = signup(platform.url, "bob-s17pub")
    sid, token = _bobs_sandbox(platform, bob)
    base = f"{platform.url}/v1/sandboxes/{sid}/ports/{PRIVATE}"
    by_token = {"X-Warren-Traffic-Token": token}
    with _stopping() as stop:
        cut = _eve(platform, sid, CLOSED, stop)
        kept = [
            *_eve(platform, sid, KEPT, stop),
            ws_tap("bob ws token", f"{base}/ws", by_token, stop),
            http_tap("bob http token", f"{base}/stream", by_token, stop),
        ]
        assert_flowing(cut + kept, "never flowed")
        r = bob.w("PATCH", f"/v1/sandboxes/{sid}", {"public_ports": [KEPT]})
        assert r.status_code == 200, r.text
        _wait_ended(cut, f"port {CLOSED} was made private")
        assert_flowing(kept, "was cut though its access holds")
    # And a new visit is refused, as before.
    r = httpx.get(f"{platform.url}/v1/sandboxes/{sid}/ports/{CLOSED}/", timeout=60)
    assert r.status_code == 401, r.text


@pytest.mark.parametrize("how", ["deleted", "paused"])
def test_a_sandbox_deleted_or_paused_ends_its_visitors(platform: Platform, how: str) -> None:
    bob = signup(platform.url, f"bob-s17pub-{how}")
    sid, _ = _bobs_sandbox(platform, bob)
    with _stopping() as stop:
        cut = _eve(platform, sid, CLOSED, stop)
        assert_flowing(cut, "never flowed")
        if how == "deleted":
            r = bob.w("DELETE", f"/v1/sandboxes/{sid}")
        else:
            r = bob.w("POST", f"/v1/sandboxes/{sid}/pause")
        assert r.status_code in (200, 202, 204), r.text
        _wait_ended(cut, f"the sandbox was {how}")
