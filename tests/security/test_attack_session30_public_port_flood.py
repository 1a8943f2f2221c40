"""Session 30: a stranger floods a sandbox's public port that nothing listens on.

A public port (``public_ports``) is anyone's to request, without a credential. When nothing
listens on it, the preview proxy admits the request, claims a connection slot, asks the host's
agent to dial the port (an RPC, and a connect in the sandbox's netns) and answers 502
``port_not_open``; a paused sandbox's public port is 409 ``sandbox_paused``. Neither counted
as a refusal, so one address got them as fast as the proxy answered: 470-1000 a second from 16
connections (502; 2300-5600 for 409), the shared agent at +0.26-0.43 of a core and another
team's exec on the host down from 93-206 to 17-29 a second (63-67 with the flood through
``warren proxy``; ``bench/public_port_flood.py``). Now both
count against the client address's refusal budget when the request is anonymous (grant kind
public), held past it as the proxy's credential refusals are (``cp/refusal_hold.py``), in the
CP and in ``warren proxy``. The hold comes after the request's slot and dial are released: a
held answer keeps no sandbox's slot. A credentialed visitor (the traffic token) is not counted.

The platform is real (a CP process, ``warren proxy`` beside it, a real agent and sandboxes);
each flood comes from a loopback address of its own (``127.0.0.x``): a full budget each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.flood import flood
from tests.harness.platform import Platform, running_platform
from tests.harness.tenant import Tenant, signup
from tests.harness.warren_proxy import running_proxy

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
# Before, the same flood got hundreds (502) to thousands (409) of answers.
BOUND = BURST + int(RATE_PER_S * FLOOD_S) + CONNECTIONS * (int(FLOOD_S / HOLD_S) + 2) + 20
ENV = {
    "WARREN_REFUSAL_HOLD_S": str(HOLD_S),
    "WARREN_REFUSAL_BURST_PER_ADDRESS": str(BURST),
    "WARREN_REFUSAL_RATE_PER_ADDRESS_S": str(RATE_PER_S),
    "WARREN_PROXY_MAX_CONNS_PER_SANDBOX": str(SANDBOX_CAP),
}
PORT = 8000  # public, nothing listening


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
def victim(platform: Platform) -> Iterator[tuple[Tenant, dict[str, str], str]]:
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
    yield bob, paths, token
    for path in paths.values():
        bob.w("DELETE", path.removesuffix(f"/ports/{PORT}/"))


_sources = iter(range(60, 250))


def _source() -> str:
    """A loopback address no other flood of this module used: a full budget."""
    return f"127.0.0.{next(_sources)}"


def _from(source: str, base_url: str, timeout: float = 30) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    return httpx.AsyncClient(transport=transport, base_url=base_url, timeout=timeout)


def _answer(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


# The CP for both answers; `warren proxy` runs the same code, so one flood shows it is wired.
FLOODS = [
    ("cp", "running", (502, "port_not_open")),
    ("cp", "paused", (409, "sandbox_paused")),
    ("warren proxy", "running", (502, "port_not_open")),
]


@pytest.mark.parametrize(("where", "state", "answer"), FLOODS)
async def test_an_anonymous_flood_of_a_public_port_gets_a_bounded_number_of_answers(
    platform: Platform, proxy_url: str, victim: tuple[Tenant, dict[str, str], str],
    where: str, state: str, answer: tuple[int, str],
) -> None:  # fmt: skip
    path = victim[1][state]
    async with _from(_source(), platform.url if where == "cp" else proxy_url) as attacker:

        async def visit() -> tuple[int, str]:
            return _answer(await attacker.get(path))

        answers = await flood(visit, connections=CONNECTIONS, seconds=FLOOD_S)
    assert set(answers) == {answer}
    assert BURST <= len(answers) <= BOUND, f"{state} via {where}: {len(answers)} answers in {FLOOD_S:g} s"


async def test_a_held_answer_keeps_no_slot_and_waits_for_no_one_else(
    platform: Platform, victim: tuple[Tenant, dict[str, str], str]
) -> None:
    _, paths, token = victim
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
