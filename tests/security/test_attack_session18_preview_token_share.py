"""Session 18: a request with the traffic token to a public port counts as credentialed.

Session 17 held connections without a credential (a public port's visitors) to half of a team's
and an owner's preview share (``cp/proxy/bounds.py``), so that anyone could not take the whole
share through one public sandbox. But the proxy counted every request to a public port as
anonymous, the ones that carried the sandbox's own traffic token too: Eve fills the anonymous
half through Bob's public port, and Bob's own clients, which send his token to that port (his
app's backend, his monitoring), get 429 ``too_many_connections`` "without credentials" while
the credentialed half sits empty. Fixed: a valid token makes the request credentialed. Eve
cannot claim the same with a token she made up: a wrong token on a public port is still a
visit without a credential (and still admitted, as before).

The platform's proxy has a small team share (16: 8 without credentials), so one address fills it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.harness.platform import Platform, running_platform
from tests.harness.tenant import Tenant, signup
from tests.security.test_attack_session13_transfers import _addr
from tests.security.test_attack_session16_bounds import _answer
from tests.security.test_attack_session17_preview_revocation import PUBLIC, _start_server

pytestmark = pytest.mark.root

PER_TEAM = 16
EVE = "127.0.0.53"


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    async with running_platform(
        db_url, platform_dir, {"WARREN_PROXY_MAX_CONNS_PER_TEAM": str(PER_TEAM)}
    ) as p:
        yield p


@pytest.fixture(scope="module")
def bob(platform: Platform) -> Iterator[tuple[Tenant, str, str]]:
    """Bob's sandbox serving endless responses on its public port: (tenant, id, traffic token)."""
    t = signup(platform.url, "bob-s18share")
    r = t.w("POST", "/v1/sandboxes", {"template": "minimal", "memory_mb": 128})
    assert r.status_code == 201, r.text
    sid, token = r.json()["id"], r.json()["traffic_token"]
    _start_server(t, sid)
    r = t.w("PATCH", f"/v1/sandboxes/{sid}", {"public_ports": [PUBLIC]})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60
    while httpx.get(f"{platform.url}/v1/sandboxes/{sid}/ports/{PUBLIC}/", timeout=60).status_code != 200:
        assert time.monotonic() < deadline, "the sandbox's server did not start"
        time.sleep(0.3)
    yield t, sid, token
    t.w("DELETE", f"/v1/sandboxes/{sid}")


def _open(stack: ExitStack, url: str, sid: str, source: str, token: str | None) -> socket.socket:
    """An endless response from the public port, held open, from ``source``, with ``token``."""
    s = stack.enter_context(socket.socket())
    s.bind((source, 0))
    s.connect(_addr(url))
    host, port = _addr(url)
    header = f"X-Warren-Traffic-Token: {token}\r\n" if token is not None else ""
    path = f"/v1/sandboxes/{sid}/ports/{PUBLIC}/stream"
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{header}\r\n".encode())
    return s


def test_the_sandboxs_own_token_is_not_held_to_the_anonymous_share(
    platform: Platform, bob: tuple[Tenant, str, str]
) -> None:
    _, sid, token = bob
    url = platform.url
    with ExitStack() as stack:
        # Eve: no credential, the anonymous half of Bob's team share.
        eve = [_answer(_open(stack, url, sid, EVE, None)) for _ in range(PER_TEAM // 2)]
        assert all(status == 200 for status, _ in eve), eve
        # Eve with a token she made up: still without a credential, so refused.
        forged = _answer(_open(stack, url, sid, EVE, "wtt_" + "A" * 43))
        assert forged[0] == 429 and "without credentials" in forged[1], forged
        # Bob's own client with his token, to the same public port.
        mine = _answer(_open(stack, url, sid, "127.0.0.1", token))
        assert mine[0] == 200, f"Bob's token request to his public port was counted as anonymous: {mine}"
