"""Session 16: bounds session 15 left per team, as one account's teams multiply them, and preview
relays through an agent without a data port (gRPC ``DialPort``).

- **Previews.** The proxy bounded connections per sandbox only (128): a team's sandboxes (20 by
  default) and an account's teams (10) multiplied it. Mallory makes more teams through the
  public API and opens held preview connections to her private ports, with their traffic
  tokens, from every one (since session 17 connections without a credential hold at most half
  of each share: "Public ports" below). Expected:
  past ``WARREN_PROXY_MAX_CONNS_PER_TEAM`` the team's next connection is 429
  ``too_many_connections``, past ``WARREN_PROXY_MAX_CONNS_PER_OWNER`` every team of the account
  is refused, another account's previews still open, and the account's slots come back.
- **Transfer windows.** A file transfer's grown flow window took from the CP's budget (64 MiB)
  and its team's share (16 MiB): four teams of one account held the whole budget. Expected:
  the account's grown windows stay within ``WARREN_TRANSFER_WINDOW_OWNER_MB`` (32) and another
  account's transfer still grows its window.
- **Unread previews over DialPort.** An agent without a data port relays previews over gRPC:
  up to two 1 MiB messages queued in the CP, one more on its way, and gRPC's window (grown
  by its bandwidth probes) per connection. Expected: ``CONNS`` unread preview responses grow
  the CP and the agent by at most 256 KiB a connection each, plus slack, and a slow reader
  gets every byte in order. The other way, uploads into a sandbox server that reads none of
  them (after a fast upload, as gRPC's probes would grow the agent's window with it): the same
  bound (before: the agent's window held ~4 MiB each).

- **Public ports (session 17).** The bounds count a connection against the team (and the owner)
  of the sandbox it goes to, whoever opens it. A public port (``public_ports``, E2B's default
  ``allowPublicTraffic``) takes connections from anyone who knows the sandbox's id, so since
  session 16 the same connections filled the *team's* share (and the owner's): Eve held Bob's
  public sandbox's connections and Bob's other sandboxes, private ports through his own traffic
  token included, were 429 ``too_many_connections``. Fixed (session 17): connections without a
  credential hold at most half of the team's and the owner's shares; the team's credentialed
  ones keep the rest. With this module's bounds the attack needs one public sandbox and two
  client addresses (with the defaults: two sandboxes, eight). It was a module of its own
  (``test_attack_session17_bounds_public.py``), a platform with the same bounds started for it.

The module runs a platform of its own: its agent has no data port
(``WARREN_AGENT_DIAL_DATA_PORT=-1``: every preview goes over DialPort), and its proxy smaller
team and owner bounds than the defaults (256 and 512), so that the attack needs a sandbox per
team rather than two. Written as the attacker runs it: her teams' keys, her own sandboxes, raw
sockets; what the windows hold is the CP's own figure, scraped by the admin.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.harness.platform import Platform, running_platform
from tests.harness.tenant import Tenant, signup
from tests.security.test_attack_session13_transfers import _addr, _download_heads, _push_until_stalled
from tests.security.test_attack_session14_transfer_window import (
    CAPPED,
    GROWN,
    HELD,
    _metric,
    _read_fast_then_stop,
)
from tests.security.test_attack_session15_owner_bounds import _team_key
from tests.security.test_attack_session15_preview_unread import (
    _settle,
    _status,
)
from tests.security.test_attack_session15_preview_unread import (
    test_a_slow_reader_gets_every_byte_in_order as _slow_reader_gets_every_byte,
)
from tests.security.test_what_held_api import PeakRss

pytestmark = pytest.mark.root

MIB = 1 << 20
PER_TEAM = 48  # the module's WARREN_PROXY_MAX_CONNS_PER_TEAM
PER_OWNER = 96  # the module's WARREN_PROXY_MAX_CONNS_PER_OWNER: two teams' worth
TEAMS = 4  # Mallory's signup team and three more
OWNER_SHARE = 32 * MIB  # WARREN_TRANSFER_WINDOW_OWNER_MB's default
DOWNLOADS = 30  # per team: 120 streams, within the account's 128
FILE = 32 * MIB
CONNS = 48  # unread DialPort previews (one team's bound)
PER_CONN_KIB = 256
SLACK_MIB = 24
BOUND_MIB = CONNS * PER_CONN_KIB // 1024 + SLACK_MIB
PORT = 8000
# One client address holds at most a quarter of a sandbox's 128 connections: four addresses.
ADDRESSES = [f"127.0.0.{i}" for i in (41, 42, 43, 44)]
EVE = ["127.0.0.51", "127.0.0.52"]  # 32 + 16: a sandbox's share per address is 32

# GET /hold answers a head and then nothing (the connection stays open until the client
# leaves); POST /sink reads the body and answers; POST /stall reads nothing; GET /<n> answers
# n bytes, byte i being i % 256, as fast as the client takes them.
SERVER = r"""
import socket, threading
PAT = bytes(range(256)) * 256
def serve(c):
    try:
        f = c.makefile("rb")
        path = f.readline().split()[1]
        if path.endswith(b"/stall"):  # reads none of the body, answers nothing
            threading.Event().wait(600)
            return
        body = 0
        while (line := f.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                body = int(line.split(b":")[1])
        if path.endswith(b"/sink"):  # reads the body as fast as it comes
            while body and (got := f.read(min(body, 1 << 16))):
                body -= len(got)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return
        if path.endswith(b"/hold"):
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
            c.recv(1)
            return
        size = int(path.rsplit(b"/", 1)[1])
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        while size:
            n = min(size, len(PAT)); c.sendall(PAT[:n]); size -= n
    except OSError:
        pass
    finally:
        c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8000)); s.listen(512)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
START = (
    f"head -c {FILE} /dev/urandom > /tmp/big && "
    "cat > /tmp/s.py <<'EOF'\n" + SERVER + "EOF\n(setsid python3 /tmp/s.py >/dev/null 2>&1 &); "
    "for i in $(seq 100); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8000))' "
    "2>/dev/null && exit 0; sleep 0.2; done; exit 1"
)


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    env = {
        "WARREN_AGENT_DIAL_DATA_PORT": "-1",
        "WARREN_PROXY_MAX_CONNS_PER_TEAM": str(PER_TEAM),
        "WARREN_PROXY_MAX_CONNS_PER_OWNER": str(PER_OWNER),
    }
    async with running_platform(db_url, platform_dir, env) as p:
        yield p


# Mallory's sandboxes' traffic tokens: her previews carry them. Since session 17 connections
# without a credential (a public port) hold at most half of a team's and an owner's share.
TOKENS: dict[str, str] = {}


def _serving(t: Tenant, *, public: bool = False) -> str:
    """A sandbox of ``t``'s with the server and /tmp/big: on a public port, or a private one
    reached with the sandbox's traffic token (kept in :data:`TOKENS`)."""
    sid = t.create(memory_mb=512)
    if public:
        r = t.w("PATCH", f"/v1/sandboxes/{sid}", {"public_ports": [PORT]})
        assert r.status_code == 200, r.text
    else:
        r = t.w("POST", f"/v1/sandboxes/{sid}/traffic-token", {})
        assert r.status_code in (200, 201), r.text
        TOKENS[sid] = r.json()["traffic_token"]
    t.sh(sid, START, timeout_sec=120)
    return sid


def _token_header(sid: str) -> str:
    return f"X-Warren-Traffic-Token: {TOKENS[sid]}\r\n" if sid in TOKENS else ""


@pytest.fixture(scope="module")
def mallory(platform: Platform) -> Iterator[list[tuple[Tenant, str]]]:
    """Mallory's TEAMS teams, each with a serving sandbox."""
    first = signup(platform.url, "mallory")
    teams = [first] + [_team_key(platform.url, first, f"mallory-{i}") for i in range(1, TEAMS)]
    made = [(t, _serving(t)) for t in teams]
    yield made
    for t, sb in made:
        t.w("DELETE", f"/v1/sandboxes/{sb}")


@pytest.fixture(scope="module")
def bob(platform: Platform) -> Iterator[tuple[Tenant, str]]:
    t = signup(platform.url, "bob")
    sid = _serving(t, public=True)
    yield t, sid
    t.w("DELETE", f"/v1/sandboxes/{sid}")


def _request(url: str, sid: str, path: str) -> bytes:
    host, port = _addr(url)
    return (
        f"GET /v1/sandboxes/{sid}/ports/{PORT}{path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"{_token_header(sid)}\r\n"
    ).encode()


def _open(stack: ExitStack, url: str, sid: str, path: str, source: str) -> socket.socket:
    """A preview connection from ``source`` that asks and reads nothing yet (a small window)."""
    s = stack.enter_context(socket.socket())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind((source, 0))
    s.connect(_addr(url))
    s.sendall(_request(url, sid, path))
    return s


def _answer(s: socket.socket) -> tuple[int, str]:
    """The response's status, and for a refusal its error message."""
    s.settimeout(60)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return 0, ""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if status == 200:
        return status, ""
    size = int(
        next(
            v
            for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
            if k.lower() == b"content-length"
        )
    )
    while len(body) < size:
        body += s.recv(4096)
    err = json.loads(body)["error"]
    return status, f"{err['code']}: {err['message']}"


def _held(stack: ExitStack, url: str, sid: str, n: int) -> list[tuple[int, str]]:
    socks = [_open(stack, url, sid, "/hold", ADDRESSES[i % len(ADDRESSES)]) for i in range(n)]
    return [_answer(s) for s in socks]


def test_one_accounts_teams_share_a_preview_bound(
    platform: Platform, mallory: list[tuple[Tenant, str]], bob: tuple[Tenant, str]
) -> None:
    url = platform.url
    (_, sb0), (_, sb1), (_, sb2), _ = mallory
    with ExitStack() as stack:
        first = _held(stack, url, sb0, PER_TEAM + 8)
        second = _held(stack, url, sb1, PER_TEAM)
        third = _held(stack, url, sb2, 16)
        theirs = _held(stack, url, bob[1], 4)
        counts = [_count(got) for got in (first, second, third, theirs)]
        print(f"teams 1, 2, 3 and bob's: {counts}")
        assert _count(first) == {200: PER_TEAM, 429: 8}, _count(first)
        assert all("per team" in m for s, m in first if s == 429), first[-1]
        assert _count(second) == {200: PER_TEAM}, _count(second)
        assert _count(third) == {429: 16}, _count(third)
        assert all(m.startswith("too_many_connections") and "owner" in m for _, m in third), third[0]
        assert _count(theirs) == {200: 4}, theirs  # the bound is the account's
    deadline = time.monotonic() + 60
    while True:  # the account's slots come back as its connections end
        with ExitStack() as stack:
            got = _held(stack, url, sb2, 1)
        if got[0][0] == 200:
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.5)


@pytest.fixture(scope="module")
def bob_private(bob: tuple[Tenant, str]) -> Iterator[str]:
    """Bob's other sandbox, its port private, serving as his public one does."""
    t = bob[0]
    sid = t.create(memory_mb=512)
    t.sh(sid, START, timeout_sec=120)
    yield sid
    t.w("DELETE", f"/v1/sandboxes/{sid}")


def test_anyone_holding_a_public_port_leaves_the_team_its_other_previews(
    platform: Platform, bob: tuple[Tenant, str], bob_private: str
) -> None:
    (t, public), private = bob, bob_private
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


def _count(answers: list[tuple[int, str]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for s, _ in answers:
        out[s] = out.get(s, 0) + 1
    return out


@pytest.fixture
def served(platform: Platform, bob: tuple[Tenant, str]) -> tuple[tuple[str, int], str]:
    """A public port's prefix (the slow reader sends no credential)."""
    return _addr(platform.url), f"/v1/sandboxes/{bob[1]}/ports/{PORT}"


def test_unread_dialport_previews_hold_a_bounded_share(
    platform: Platform, mallory: list[tuple[Tenant, str]]
) -> None:
    addr, sid = _addr(platform.url), mallory[0][1]
    request = _request(platform.url, sid, f"/{1 << 34}")
    _settle(platform.cp.pid)
    with ExitStack() as stack, PeakRss(platform) as rss:
        held = []
        for i in range(CONNS):
            s = stack.enter_context(socket.socket())
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.bind((ADDRESSES[i % len(ADDRESSES)], 0))
            s.connect(addr)
            s.sendall(request)
            held.append(s)
        # Until both stop growing for 5 s (the relays have all stalled), or one passes the bound.
        peak, still_since, deadline = [-1, -1], time.monotonic(), time.monotonic() + 90
        while time.monotonic() - still_since < 5 and time.monotonic() < deadline:
            now = rss.grown_mib
            if max(now) > BOUND_MIB:
                break
            if now != peak:
                peak, still_since = list(now), time.monotonic()
            time.sleep(0.2)
        statuses = [_status(s) for s in held]
    cp, agent = rss.grown_mib
    print(f"{CONNS} unread DialPort previews: CP +{cp} MiB, agent +{agent} MiB")
    assert statuses == [200] * CONNS, sorted(set(statuses))
    assert cp <= BOUND_MIB and agent <= BOUND_MIB, (
        f"{CONNS} unread DialPort previews grew the CP by {cp} MiB and the agent by {agent} MiB "
        f"(bound {BOUND_MIB} MiB each: {PER_CONN_KIB} KiB a connection + {SLACK_MIB} MiB)"
    )


def test_a_slow_dialport_reader_gets_every_byte_in_order(served: tuple[tuple[str, int], str]) -> None:
    _slow_reader_gets_every_byte(served)


def _post(url: str, sid: str, path: str, size: int, source: str) -> socket.socket:
    host, port = _addr(url)
    s = socket.socket()
    s.bind((source, 0))
    s.connect((host, port))
    head = f"POST /v1/sandboxes/{sid}/ports/{PORT}{path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    head += _token_header(sid)
    s.sendall(f"{head}Content-Length: {size}\r\n\r\n".encode())
    return s


def test_unread_dialport_uploads_hold_a_bounded_share(
    platform: Platform, mallory: list[tuple[Tenant, str]]
) -> None:
    """A fast upload first (gRPC's window, were it probed, would grow with it), then CONNS
    uploads into a sandbox server that reads none of them, pushed until nothing more is taken:
    the CP and the agent hold a bounded share each (the kernel's socket buffers are not RSS)."""
    url, sid = platform.url, mallory[1][1]
    with _post(url, sid, "/sink", 64 * MIB, ADDRESSES[0]) as s:
        s.sendall(bytes(64 * MIB))
        s.settimeout(60)
        assert s.recv(12) == b"HTTP/1.1 200", "the fast upload was not answered"
    _settle(platform.cp.pid)
    socks: list[socket.socket] = []
    with ExitStack() as stack, PeakRss(platform) as rss:
        for i in range(CONNS):
            socks.append(
                stack.enter_context(_post(url, sid, "/stall", 1 << 34, ADDRESSES[i % len(ADDRESSES)]))
            )
        sent = _push_until_stalled(socks, bytes(1 << 20))
    cp, agent = rss.grown_mib
    print(f"{CONNS} unread DialPort uploads ({sent // MIB} MiB taken): CP +{cp} MiB, agent +{agent} MiB")
    assert cp <= BOUND_MIB and agent <= BOUND_MIB, (
        f"{CONNS} unread DialPort uploads grew the CP by {cp} MiB and the agent by {agent} MiB "
        f"(bound {BOUND_MIB} MiB each)"
    )


def test_one_accounts_grown_transfer_windows_stay_within_its_share(
    platform: Platform, mallory: list[tuple[Tenant, str]], bob: tuple[Tenant, str]
) -> None:
    """DOWNLOADS downloads per team, each read fast (its window grows) and then not at all: the
    account's grown windows together stay within its share, and Bob's download still grows."""
    heads = [_download_heads(t, sb)[0] for t, sb in mallory]
    socks: list[socket.socket] = []
    try:
        for head in heads:
            for _ in range(DOWNLOADS):
                socks.append(_read_fast_then_stop(platform.url, head))
        time.sleep(2)
        held = _metric(platform, HELD)
        capped, grown = _metric(platform, CAPPED), _metric(platform, GROWN)
        bobs = _read_fast_then_stop(platform.url, _download_heads(*bob)[0])
        bob_grew = _metric(platform, GROWN) > grown
        bobs.close()
    finally:
        for s in socks:
            s.close()
    print(f"{TEAMS} teams x {DOWNLOADS} downloads: grown windows hold {held / MIB:.2f} MiB, "
          f"{grown:.0f} grew, {capped:.0f} capped; bob's grew: {bob_grew}")  # fmt: skip
    assert 0 < held <= OWNER_SHARE, f"one account's grown windows hold {held / MIB:.2f} MiB"
    assert capped > 0
    assert bob_grew, "another account's download could not grow its window"
