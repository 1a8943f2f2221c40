"""Session 30: floods of a sandbox's preview that the proxy refuses or cannot serve.

Bad credentials. Session 29 held the CP's own 401s and 429s past an address's refusal budget
(``cp/refusal_hold.py``), but the preview proxy sits outside that middleware, and ``warren
proxy`` had none: a preview's credential refusals were answered as fast as a client asked.
``bench/preview_refusals.py`` measured ~4000-4800 refusals a second from 16 connections of one
address (a forged or expired signed URL, a wrong or missing traffic token), ~1700-1900 for
sandbox ids that name none (a database read each), the process at 0.7-0.95 of a core and
another tenant's preview reads down from ~1000 to ~95 a second, in the CP and in ``warren
proxy`` alike. Now the proxy's own refusals (401, 403, 404, 429 it decides) are counted against
the client's address and held past its budget, in the CP against the same budget as the API's,
in ``warren proxy`` against its own. What the sandbox's server answers (its own 401s) is never
counted, and a valid credential never waits.

A public port nothing listens on. A public port (``public_ports``) is anyone's to request,
without a credential. When nothing listens on it, the preview proxy admits the request, claims
a connection slot, asks the host's agent to dial the port (an RPC, and a connect in the
sandbox's netns) and answers 502 ``port_not_open``; a paused sandbox's public port is 409
``sandbox_paused``. Neither counted as a refusal, so one address got them as fast as the proxy
answered: 470-1000 a second from 16 connections (502; 2300-5600 for 409), the shared agent at
+0.26-0.43 of a core and another team's exec on the host down from 93-206 to 17-29 a second
(63-67 with the flood through ``warren proxy``; ``bench/public_port_flood.py``). Now both count
against the client address's refusal budget when the request is anonymous (grant kind public),
held past it as the proxy's credential refusals are, in the CP and in ``warren proxy``. The
hold comes after the request's slot and dial are released: a held answer keeps no sandbox's
slot. A credentialed visitor (the traffic token) is not counted.

Both kinds share one platform (a CP process, ``warren proxy`` beside it, a real agent and
sandboxes: a platform start is ~5 CPU-s); each flood comes from a loopback source address of
its own (``127.0.0.x``), so each starts with a full budget.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import websockets

from tests.harness.flood import flood
from tests.harness.platform import Platform, running_platform
from tests.harness.tenant import Tenant, signup
from tests.harness.warren_proxy import running_proxy
from warren import ids

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]

BURST = 40
RATE_PER_S = 2.0
HOLD_S = 3.0
CONNECTIONS = 8
FLOOD_S = 1.5
# A sandbox's connections at most: one address may hold them all (the per-client share is the
# whole cap when it is under 32), so held answers that kept their slots would fill it.
SANDBOX_CAP = CONNECTIONS
# What a flood of FLOOD_S may be answered at most: the burst, its refill, and each
# connection's one answer per hold (plus the one in flight when its hold began), with slack.
# Before, the same floods got hundreds (502) to thousands (bad credentials, 409) of answers.
BOUND = BURST + int(RATE_PER_S * FLOOD_S) + CONNECTIONS * (int(FLOOD_S / HOLD_S) + 2) + 20
ENV = {
    "WARREN_REFUSAL_HOLD_S": str(HOLD_S),
    "WARREN_REFUSAL_BURST_PER_ADDRESS": str(BURST),
    "WARREN_REFUSAL_RATE_PER_ADDRESS_S": str(RATE_PER_S),
    "WARREN_PROXY_MAX_CONNS_PER_SANDBOX": str(SANDBOX_CAP),
}
PORT = 8000  # private on the victim's sandbox; public, nothing listening, on public_ports'

# The sandbox's server: 401 (its own refusal) at /mine, 200 "ok" elsewhere.
SERVER = r"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(401 if self.path.startswith("/mine") else 200)
        self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
"""


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    async with running_platform(db_url, platform_dir, ENV) as p:
        yield p


@pytest.fixture(scope="module")
def proxy_url(platform: Platform) -> Iterator[str]:
    """``warren proxy`` as a process of its own on the platform's database, with the same hold."""
    with running_proxy(platform, env=ENV) as proxy:
        yield proxy.url


@pytest.fixture(scope="module")
def victim(platform: Platform) -> Iterator[tuple[Tenant, str, str, str]]:
    """Bob's sandbox serving SERVER on its private port: (tenant, id, traffic token, the query
    of a signed URL to it that has expired)."""
    bob = signup(platform.url, "bob-s30refusals")
    r = bob.w("POST", "/v1/sandboxes", {"template": "minimal", "memory_mb": 128})
    assert r.status_code == 201, r.text
    sid, token = r.json()["id"], r.json()["traffic_token"]
    bob.sh(sid, f"cat > /tmp/srv.py <<'EOF'\n{SERVER}\nEOF\n(setsid python3 /tmp/srv.py >/dev/null 2>&1 &)")
    r = bob.w("POST", f"/v1/sandboxes/{sid}/preview/signed-url", {"port": PORT, "expires": 1})
    assert r.status_code == 200, r.text
    expired, signed_at = urlsplit(r.json()["url"]).query, time.monotonic()
    deadline = time.monotonic() + 60
    url = f"{platform.url}/v1/sandboxes/{sid}/ports/{PORT}/"
    while httpx.get(url, headers={"X-Warren-Traffic-Token": token}, timeout=60).status_code != 200:
        assert time.monotonic() < deadline, "the sandbox's server did not start"
        time.sleep(0.3)
    time.sleep(max(0.0, signed_at + 2.5 - time.monotonic()))  # past the signed URL's 1 s
    yield bob, sid, token, expired
    bob.w("DELETE", f"/v1/sandboxes/{sid}")


@pytest.fixture(scope="module")
def public_ports(platform: Platform) -> Iterator[tuple[dict[str, str], str]]:
    """Bob's two sandboxes with PORT public and nothing on it, one running and one paused:
    ({"running": path, "paused": path}, the running one's traffic token)."""
    bob = signup(platform.url, "bob-s30public")
    paths, token = {}, ""
    for state in ("running", "paused"):
        r = bob.w("POST", "/v1/sandboxes", {"template": "minimal", "memory_mb": 128})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        token = token or r.json()["traffic_token"]
        r = bob.w("PATCH", f"/v1/sandboxes/{sid}", {"public_ports": [PORT]})
        assert r.status_code == 200, r.text
        if state == "paused":
            r = bob.w("POST", f"/v1/sandboxes/{sid}/pause")
            assert r.status_code == 200, r.text
        paths[state] = f"/v1/sandboxes/{sid}/ports/{PORT}/"
    yield paths, token
    for path in paths.values():
        bob.w("DELETE", path.removesuffix(f"/ports/{PORT}/"))


def _kinds(sid: str, expired: str) -> dict[str, tuple[str, dict[str, str], int, str]]:
    """Each kind of bad credential: (path, headers, status, code)."""
    base = f"/v1/sandboxes/{sid}/ports/{PORT}/"
    forged = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    unknown = f"/v1/sandboxes/{ids.sandbox_id(uuid.uuid4())}/ports/{PORT}/"  # a database read each
    return {
        "forged signature": (
            f"{base}?warren_sig={forged}&exp={int(time.time()) + 3600}", {}, 403, "signed_url_invalid"
        ),
        "expired signed URL": (f"{base}?{expired}", {}, 403, "signed_url_expired"),
        "wrong token": (base, {"X-Warren-Traffic-Token": "wtt_" + secrets.token_urlsafe(32)}, 403,
                        "traffic_token_invalid"),
        "no credential": (base, {}, 401, "traffic_token_required"),
        "unknown sandbox": (unknown, {}, 404, "not_found"),
    }  # fmt: skip


KINDS = ["forged signature", "expired signed URL", "wrong token", "no credential", "unknown sandbox"]
_sources = iter(range(60, 250))


def _source() -> str:
    """A loopback address no other flood of this module used: a full budget."""
    return f"127.0.0.{next(_sources)}"


def _from(source: str, base_url: str, timeout: float = 30) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    return httpx.AsyncClient(transport=transport, base_url=base_url, timeout=timeout)


def _answer(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


# Every kind in the CP; `warren proxy` runs the same refusal code, so two kinds show its own
# budget is wired (the suite's time is short).
FLOODS = [("cp", kind) for kind in KINDS] + [
    ("warren proxy", "forged signature"),
    ("warren proxy", "no credential"),
]


@pytest.mark.parametrize(("where", "kind"), FLOODS)
async def test_a_flood_of_bad_preview_credentials_gets_a_bounded_number_of_answers(
    platform: Platform, proxy_url: str, victim: tuple[Tenant, str, str, str], where: str, kind: str
) -> None:
    _, sid, _, expired = victim
    path, headers, status, code = _kinds(sid, expired)[kind]
    async with _from(_source(), platform.url if where == "cp" else proxy_url) as attacker:
        first = await attacker.get(path, headers=headers)
        assert (first.status_code, first.json()["error"]["code"]) == (status, code), first.text

        async def guess() -> int:
            return (await attacker.get(path, headers=headers)).status_code

        statuses = await flood(guess, connections=CONNECTIONS, seconds=FLOOD_S)
    assert set(statuses) == {status}
    answered = 1 + len(statuses)  # the first one's too
    assert BURST <= answered <= BOUND, f"{kind} via {where}: {answered} answers in {FLOOD_S:g} s"


async def test_refused_preview_websocket_handshakes_count_too(
    platform: Platform, victim: tuple[Tenant, str, str, str]
) -> None:
    _, sid, _, _ = victim
    url = platform.url.replace("http://", "ws://") + f"/v1/sandboxes/{sid}/ports/{PORT}/"
    source = _source()

    async def handshake() -> int:
        try:
            async with websockets.connect(
                url, additional_headers={"X-Warren-Traffic-Token": "wtt_nope"}, local_addr=(source, 0)
            ):
                return 101
        except websockets.InvalidStatus as e:
            return e.response.status_code

    statuses = await flood(handshake, connections=CONNECTIONS, seconds=FLOOD_S)
    assert set(statuses) == {403}
    assert len(statuses) <= BOUND, len(statuses)


@pytest.mark.parametrize("where", ["cp", "warren proxy"])
async def test_a_valid_credential_and_other_addresses_do_not_wait(
    platform: Platform, proxy_url: str, victim: tuple[Tenant, str, str, str], where: str
) -> None:
    _, sid, token, _ = victim
    base = platform.url if where == "cp" else proxy_url
    path = f"/v1/sandboxes/{sid}/ports/{PORT}/"
    async with _from(_source(), base) as same:
        # Refused until a refusal is held: the budget is spent.
        for _ in range(BURST + 20):
            started = time.monotonic()
            r = await same.get(path, headers={"X-Warren-Traffic-Token": "wtt_nope"})
            assert r.status_code == 403
            if time.monotonic() - started >= HOLD_S * 0.9:
                break
        else:
            raise AssertionError("no preview refusal was held")
        # The same address with the sandbox's token is answered at once (well inside a hold).
        r = await same.get(path, headers={"X-Warren-Traffic-Token": token}, timeout=HOLD_S * 0.8)
        assert r.status_code == 200, r.text
    # Another address's refusal is answered at once.
    async with _from(_source(), base, timeout=HOLD_S * 0.8) as other:
        r = await other.get(path, headers={"X-Warren-Traffic-Token": "wtt_nope"})
        assert r.status_code == 403


@pytest.mark.parametrize("where", ["cp", "warren proxy"])
async def test_the_sandboxs_own_401s_are_not_counted(
    platform: Platform, proxy_url: str, victim: tuple[Tenant, str, str, str], where: str
) -> None:
    _, sid, token, _ = victim
    base = platform.url if where == "cp" else proxy_url
    path = f"/v1/sandboxes/{sid}/ports/{PORT}/"
    async with _from(_source(), base) as client:

        async def mine() -> int:
            return (await client.get(path + "mine", headers={"X-Warren-Traffic-Token": token})).status_code

        # The sandbox's server refuses every one: answered as fast as it answers, none held.
        own = await flood(mine, connections=CONNECTIONS, seconds=FLOOD_S)
        assert set(own) == {401}
        assert len(own) > BOUND, len(own)

        async def bad() -> int:
            return (await client.get(path, headers={"X-Warren-Traffic-Token": "wtt_nope"})).status_code

        # The address's budget is whole: its first BURST refusals go out at once (were the
        # sandbox's 401s counted, it would be spent and a flood get a few answers a connection).
        refused = await flood(bad, connections=CONNECTIONS, seconds=FLOOD_S)
    assert set(refused) == {403}
    assert len(refused) >= BURST, len(refused)


# Public ports: the CP for both answers; `warren proxy` runs the same code, so one flood shows
# it is wired.
PUBLIC_FLOODS = [
    ("cp", "running", (502, "port_not_open")),
    ("cp", "paused", (409, "sandbox_paused")),
    ("warren proxy", "running", (502, "port_not_open")),
]


@pytest.mark.parametrize(("where", "state", "answer"), PUBLIC_FLOODS)
async def test_an_anonymous_flood_of_a_public_port_gets_a_bounded_number_of_answers(
    platform: Platform, proxy_url: str, public_ports: tuple[dict[str, str], str],
    where: str, state: str, answer: tuple[int, str],
) -> None:  # fmt: skip
    path = public_ports[0][state]
    async with _from(_source(), platform.url if where == "cp" else proxy_url) as attacker:

        async def visit() -> tuple[int, str]:
            return _answer(await attacker.get(path))

        answers = await flood(visit, connections=CONNECTIONS, seconds=FLOOD_S)
    assert set(answers) == {answer}
    assert BURST <= len(answers) <= BOUND, f"{state} via {where}: {len(answers)} answers in {FLOOD_S:g} s"


async def test_a_held_answer_keeps_no_slot_and_waits_for_no_one_else(
    platform: Platform, public_ports: tuple[dict[str, str], str]
) -> None:
    paths, token = public_ports
    path = paths["running"]
    async with _from(_source(), platform.url) as attacker:
        # Answered until one is held: the address's budget is spent.
        for _ in range(BURST + 20):
            started = time.monotonic()
            assert _answer(await attacker.get(path)) == (502, "port_not_open")
            if time.monotonic() - started >= HOLD_S * 0.9:
                break
        else:
            raise AssertionError("no port_not_open answer was held")
        # More held requests than the sandbox has slots, from this address at once (what the
        # budget refilled during that hold is answered at once).
        refilled = int(RATE_PER_S * HOLD_S) + 2
        held = [asyncio.create_task(attacker.get(path)) for _ in range(SANDBOX_CAP + refilled)]
        await asyncio.sleep(0.5)  # all of them in their hold
        # Another address's anonymous request is admitted (dialled: the port is not open), not
        # 429 too_many_connections: the held ones keep no slot.
        async with _from(_source(), platform.url, timeout=HOLD_S * 0.8) as other:
            assert _answer(await other.get(path)) == (502, "port_not_open")
        # The same address with the sandbox's token (the owner's tooling) is not held.
        r = await attacker.get(path, headers={"X-Warren-Traffic-Token": token}, timeout=HOLD_S * 0.8)
        assert _answer(r) == (502, "port_not_open")
        # Each was a refusal the budget holds: its dial's 502, or, where more of them were
        # dialling at once than the sandbox has slots (a loaded machine's slow dials), the 429
        # of the slot cap (also held: refused before admission).
        answers = {_answer(r) for r in await asyncio.gather(*held)}
        assert (502, "port_not_open") in answers, answers
        assert answers <= {(502, "port_not_open"), (429, "too_many_connections")}, answers
