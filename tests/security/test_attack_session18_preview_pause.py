"""Session 18: pausing a sandbox ends every open preview connection to it.

A paused sandbox serves nothing, but the connections open through the preview proxy when it was
paused stayed open: its processes frozen, they held the proxy's per-sandbox, per-client,
per-team and per-owner slots while the sandbox slept, and went on after a resume as if the
pause had not happened. Session 17 ended a public port's anonymous visitors within the 5 s
re-check; the credentialed ones (a traffic token, a signed URL, its cookie: Mallory's, say,
handed a link) not at all. Bob pauses his sandbox to stop its traffic: every connection, both
kinds, must end, a WebSocket with 1008 ``409 sandbox_paused`` (what a new request gets), at
once in the process that paused it and within the re-check in another one (``warren proxy``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import signup
from tests.security.test_attack_session17_preview_revocation import (
    PRIVATE,
    PUBLIC,
    Tap,
    _cookie,
    _sandbox,
    _stopping,
    _warren_proxy,
    _with_query,
    assert_flowing,
    http_tap,
)
from tests.security.test_attack_session18_preview_expiry import WsTap, wait_ended

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

# At once here (the pause kicks the re-check), within 5 s on another process; generous for a
# loaded machine.
ENDS_WITHIN_S = 30.0


def _taps(
    via: str, sid: str, token: str, signed: str, stop: threading.Event
) -> tuple[list[WsTap], list[Tap]]:
    """Every kind of connection to the sandbox through the proxy at ``via``: WebSockets and
    endless responses with the token, the signed URL, its cookie, and to the public port."""
    base = f"{via}/v1/sandboxes/{sid}/ports/{PRIVATE}"
    public = f"{via}/v1/sandboxes/{sid}/ports/{PUBLIC}"
    by_token = {"X-Warren-Traffic-Token": token}
    by_cookie = {"Cookie": f"warren_preview={_cookie(signed)}"}
    ws = [
        WsTap("ws token", f"{base}/ws", by_token, stop),
        WsTap("ws signed url", _with_query(f"{base}/ws", signed), {}, stop),
        WsTap("ws cookie", f"{base}/ws", by_cookie, stop),
        WsTap("public ws", f"{public}/ws", {}, stop),
    ]
    http = [
        http_tap("http token", f"{base}/stream", by_token, stop),
        http_tap("http signed url", _with_query(f"{base}/stream", signed), {}, stop),
        http_tap("http cookie", f"{base}/stream", by_cookie, stop),
        http_tap("public http", f"{public}/stream", {}, stop),
    ]
    return ws, [*ws, *http]


@contextlib.contextmanager
def _via(platform: Platform, where: str) -> Iterator[str]:
    if where == "cp":
        yield platform.url
    else:
        with _warren_proxy(platform) as url:
            yield url


@pytest.mark.parametrize("where", ["cp", "warren_proxy"])
def test_pausing_a_sandbox_ends_its_preview_connections(platform: Platform, where: str) -> None:
    bob = signup(platform.url, f"bob-s18pause-{where}")
    sid, token, signed = _sandbox(platform, bob, {"X-API-Key": bob.api_key})
    with _via(platform, where) as via, _stopping() as stop:
        ws, every = _taps(via, sid, token, signed, stop)
        assert_flowing(every, "never flowed")
        r = bob.w("POST", f"/v1/sandboxes/{sid}/pause")
        assert r.status_code == 200, r.text
        wait_ended(every, time.time() + ENDS_WITHIN_S, f"the sandbox was paused (+{ENDS_WITHIN_S:.0f} s)")
        for tap in ws:
            assert tap.close == (1008, "409 sandbox_paused"), f"{tap.name}: {tap.close}"


def test_a_snapshot_ends_its_preview_connections(platform: Platform) -> None:
    """A snapshot marks the sandbox paused before its agent freezes it and leaves it paused: the
    same end as a pause (kicked at the mark in this process)."""
    bob = signup(platform.url, "bob-s18snap")
    sid, token, signed = _sandbox(platform, bob, {"X-API-Key": bob.api_key})
    with _stopping() as stop:
        ws, every = _taps(platform.url, sid, token, signed, stop)
        assert_flowing(every, "never flowed")
        r = bob.w("POST", "/v1/snapshots", {"sandbox_id": sid, "name": "s18-snap"}, timeout=600)
        assert r.status_code == 201, r.text
        wait_ended(every, time.time() + ENDS_WITHIN_S, "the sandbox was snapshotted")
        for tap in ws:
            assert tap.close == (1008, "409 sandbox_paused"), f"{tap.name}: {tap.close}"
