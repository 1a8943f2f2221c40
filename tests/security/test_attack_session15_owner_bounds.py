"""Attack (session 14's open finding): per-team bounds multiply by the teams one account owns.

An account owns up to 10 teams (WARREN_MAX_TEAMS_PER_USER), and the CP's stream cap
(WARREN_MAX_STREAMS_PER_TEAM, 64) was per team only: session 14 held the CP +1018 MiB with six
teams' 64 unread exec streams each. Mallory signs up, makes more teams through the public API
(``POST /v1/teams``, ``switch-team``, an API key each), starts a sandbox in each and opens the
per-team cap of exec streams in every one, at a command that never reads stdin, then floods them
with messages just under the WebSocket limit.

Expected: past WARREN_MAX_STREAMS_PER_OWNER (128 by default, which this module's CP runs with)
the account's streams are refused, 429 ``too_many_streams_per_owner``, whichever of its teams
asks, and whichever way (the API's exec streams, E2B's envd plane with a sandbox's access token,
a signed file URL); the CP's RSS growth stays within what the owner's bound allows (as
test_attack_stream_count.py judges one team's 64: four messages a stream); another account's
streams still open, and Mallory's slots come back when her streams end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, closing

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signed_up, signup
from tests.security.test_attack_e2b_streams import start_sleep
from tests.security.test_attack_stream_count import (
    KILL_COMMANDS,
    MESSAGE,
    SLEEP,
    _echo_stream,
    flood,
    try_websocket,
)
from tests.security.test_attack_websocket_memory import BOUND_MIB, MIB, stdin_message, watching
from tests.security.test_what_held_api import PeakRss, text_frame

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

PER_TEAM = 64  # WARREN_MAX_STREAMS_PER_TEAM's default
PER_OWNER = 128  # WARREN_MAX_STREAMS_PER_OWNER's default
TEAMS = 3  # 3 x 64 streams: a third team's worth past the owner's bound
# The CP's growth bound: the other memory attacks' plus four WebSocket messages a stream the
# owner may hold (test_attack_stream_count.py measured +203-259 MiB for one team's 64).
CP_BOUND_MIB = BOUND_MIB + 4 * PER_OWNER * MESSAGE // MIB


def _team_key(url: str, owner: Tenant, name: str) -> Tenant:
    """A new team of ``owner``'s account and an API key of it, as a user makes them."""
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {owner.token}"}) as c:
        r = c.post("/v1/teams", json={"name": name})
        assert r.status_code == 201, r.text
        team_id = r.json()["id"]
        r = c.post("/v1/auth/switch-team", json={"team_id": team_id})
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        r = c.post("/v1/api-keys", json={"name": name}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
    tenant = Tenant(url, r.json()["key"], team_id, token)
    signed_up(url).append(tenant)  # its sandboxes go when the module ends
    return tenant


@pytest.fixture(scope="module")
def mallory_teams(platform: Platform) -> Iterator[list[tuple[Tenant, str]]]:
    """Mallory's signup team and TEAMS - 1 more, each with a running sandbox."""
    first = signup(platform.url, "mallory")
    teams = [first] + [_team_key(platform.url, first, f"mallory-{i}") for i in range(1, TEAMS)]
    made = [(t, t.create(memory_mb=256)) for t in teams]
    yield made
    for t, sb in made:
        t.w("DELETE", f"/v1/sandboxes/{sb}")


def _open(stack: ExitStack, t: Tenant, sb: str, frames: dict, refused: list) -> None:
    """PER_TEAM exec streams of ``sleep`` in the team's sandbox: the open ones get a flood frame."""
    for _ in range(PER_TEAM):
        got = try_websocket(t.url, f"/v1/sandboxes/{sb}/exec/stream", {"X-API-Key": t.api_key})
        if isinstance(got, tuple):
            refused.append(got)
            continue
        stack.enter_context(closing(got))
        got.sendall(text_frame('{"type": "start", "cmd": "/bin/sleep", "args": ["600"]}'))
        frames[got] = stdin_message(MESSAGE)


def _cp_within(rss: PeakRss) -> bool:
    return rss.grown_mib[0] < CP_BOUND_MIB


def test_one_accounts_teams_share_a_stream_bound(
    platform: Platform, mallory_teams: list[tuple[Tenant, str]], bob: Tenant
) -> None:
    assert SLEEP["cmd"] == "/bin/sleep"  # the command the streams run never reads stdin
    theirs = bob.create(memory_mb=128)
    frames: dict = {}
    refused: list = []
    with ExitStack() as stack, watching(platform) as rss:
        for t, sb in mallory_teams:
            _open(stack, t, sb, frames, refused)
        sent = flood(frames, rss) if _cp_within(rss) else 0
        print(f"{TEAMS} teams of one account: {len(frames)} streams open, {len(refused)} refused, "
              f"{sent // MIB} MiB sent, RSS growth {rss.grown_mib} MiB (CP, agent)")  # fmt: skip
        assert len(frames) <= PER_OWNER, f"one account held {len(frames)} streams over {TEAMS} teams"
        assert _cp_within(rss), f"CP grew {rss.grown_mib[0]} MiB (bound {CP_BOUND_MIB})"
        assert len(refused) == TEAMS * PER_TEAM - PER_OWNER, len(refused)
        assert all(s == 429 and b["error"]["code"] == "too_many_streams_per_owner" for s, b in refused), (
            refused[:3]
        )
        assert "max_streams_per_owner" in refused[0][1]["error"]["message"], refused[0]
        _other_ways_in_count_too(*mallory_teams[-1], platform.cp.e2b_url)
        _echo_stream(bob, theirs)  # the bound is the account's: another account's streams open
    for t, sb in mallory_teams:
        t.sh(sb, KILL_COMMANDS)
    _slots_come_back(*mallory_teams[-1])
    bob.w("DELETE", f"/v1/sandboxes/{theirs}")


def _other_ways_in_count_too(t: Tenant, sb: str, e2b_url: str) -> None:
    """The team the account's bound refuses is refused by every other way to a stream: E2B's
    envd plane with the sandbox's own access token, and a signed file URL."""
    got = start_sleep(e2b_url, sb)
    if not isinstance(got, tuple):
        got.close()
        raise AssertionError("an envd Start stream opened past the owner's bound")
    assert got[0] == 429 and "max_streams_per_owner" in got[1].get("message", ""), got
    r = t.w("GET", f"/v1/sandboxes/{sb}/files/download-url?path=/etc/hostname")
    assert r.status_code == 200, r.text
    r = httpx.get(r.json()["url"], timeout=60)
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_streams_per_owner", r.text


def _slots_come_back(t: Tenant, sb: str) -> None:
    """The last team, refused while the others held the account's bound, opens once they end."""
    deadline = time.monotonic() + 60
    while True:
        got = try_websocket(t.url, f"/v1/sandboxes/{sb}/exec/stream", {"X-API-Key": t.api_key})
        if not isinstance(got, tuple):
            got.close()
            break
        assert time.monotonic() < deadline, f"the account's stream slots did not come back: {got}"
        time.sleep(0.5)
    _echo_stream(t, sb)
