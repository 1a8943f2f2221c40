"""Session 17's attack on session 16's per-team and per-owner preview bounds (cp/proxy/bounds.py):
another tenant, or anyone, spends a team's share through its public ports.

The bounds count a connection against the team (and the owner) of the sandbox it goes to,
whoever opens it. A public port (``public_ports``, E2B's default ``allowPublicTraffic``) takes
connections from anyone who knows the sandbox's id; the per-sandbox bound (128, a quarter per
client address) always let such a client fill that one sandbox. Since session 16, the same
connections fill the *team's* share (and the owner's): Eve holds Bob's public sandbox's
connections and Bob's other sandboxes, private ports through his own traffic token included,
were 429 ``too_many_connections``. Fixed (session 17): connections without a credential hold at
most half of the team's and the owner's shares; the team's credentialed ones keep the rest.

The platform's proxy has smaller bounds than the defaults (48 per team, 96 per owner), so the
attack needs one public sandbox and two client addresses (the defaults: two sandboxes, eight).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.harness.platform import Platform, running_platform
from tests.harness.tenant import Tenant, signup
from tests.security.test_attack_session13_transfers import _addr
from tests.security.test_attack_session16_bounds import PORT, START, _answer, _count, _open

pytestmark = pytest.mark.root

PER_TEAM = 48
PER_OWNER = 96
EVE = ["127.0.0.51", "127.0.0.52"]  # 32 + 16: a sandbox's share per address is 32


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    env = {
        "WARREN_PROXY_MAX_CONNS_PER_TEAM": str(PER_TEAM),
        "WARREN_PROXY_MAX_CONNS_PER_OWNER": str(PER_OWNER),
    }
    async with running_platform(db_url, platform_dir, env) as p:
        yield p


@pytest.fixture(scope="module")
def bob(platform: Platform) -> Iterator[tuple[Tenant, str, str]]:
    """Bob's public sandbox (a web app: its id is in every link to it) and another of his."""
    t = signup(platform.url, "bob")
    made = []
    for public in (True, False):
        sid = t.create(memory_mb=512)
        if public:
            r = t.w("PATCH", f"/v1/sandboxes/{sid}", {"public_ports": [PORT]})
            assert r.status_code == 200, r.text
        t.sh(sid, START, timeout_sec=120)
        made.append(sid)
    yield t, made[0], made[1]
    for sid in made:
        t.w("DELETE", f"/v1/sandboxes/{sid}")


def test_anyone_holding_a_public_port_leaves_the_team_its_other_previews(
    platform: Platform, bob: tuple[Tenant, str, str]
) -> None:
    t, public, private = bob
    r = t.w("POST", f"/v1/sandboxes/{private}/traffic-token", {})
    assert r.status_code in (200, 201), r.text
    token = r.json()["traffic_token"]
    url = platform.url
    with ExitStack() as stack:
        # Eve: no account, no credentials, two addresses, Bob's public sandbox.
        eve = [_open(stack, url, public, "/hold", EVE[i % 2]) for i in range(PER_TEAM)]
        got = [_answer(s) for s in eve]
        print(f"Eve's connections to Bob's public port: {_count(got)}")
        assert _count(got).get(200, 0) <= PER_TEAM // 2, _count(got)
        # Bob, with his own traffic token, to his private sandbox.
        s = stack.enter_context(socket.socket())
        s.connect(_addr(url))
        host, port = _addr(url)
        s.sendall(
            f"GET /v1/sandboxes/{private}/ports/{PORT}/hold HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"X-Warren-Traffic-Token: {token}\r\n\r\n".encode()
        )
        mine = _answer(s)
        print(f"Bob's own preview of his private sandbox: {mine}")
        assert mine[0] == 200, (
            f"Eve's anonymous connections to one public port took Bob's team's share: {mine}"
        )
