"""Session 29: a client that loops on requests the CP refuses (docs/security.md §24).

Before, the CP answered an anonymous client's bad API keys, or a team's requests past its own
rate limit, as fast as the client asked: ~1450 refusals a second per connection, each a head
parsed and routed (and a well-formed key looked up in the database), ~0.5 core per connection
up to the address's connection cap. Now an address's refusals past its budget are held before
they go out, so a flood gets a bounded number of answers, whatever it sends; requests that are
served, and other addresses, never wait.

The CP is the real app behind uvicorn on loopback; each case floods from a loopback source
address of its own (``127.0.0.x``), so each starts with a full budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import websockets

from tests.harness.cp import InProcessCP, User
from tests.harness.flood import flood
from tests.harness.machine import free_port
from warren.cp.e2b.app import create_e2b_app
from warren.cp.security.api_keys import generate_api_key

pytestmark = pytest.mark.timeout(120)

BURST = 40
RATE_PER_S = 2.0
HOLD_S = 5.0
CONNECTIONS = 8
FLOOD_S = 2.0
# What a flood of FLOOD_S may be answered at most: the burst, its refill, and each
# connection's one answer per hold (plus the one in flight when its hold began), with slack.
# Before the hold the same flood got thousands of answers.
BOUND = BURST + int(RATE_PER_S * FLOOD_S) + CONNECTIONS * (int(FLOOD_S / HOLD_S) + 2) + 20


@pytest.fixture(scope="module")
async def cp(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessCP]:
    async with InProcessCP(
        db_url,
        Path(tmp_path_factory.mktemp("cp")),
        refusal_hold_s=HOLD_S,
        refusal_burst_per_address=BURST,
        refusal_rate_per_address_s=RATE_PER_S,
        team_rate_limit_per_s=1,
        team_rate_burst=3,
    ) as server:
        yield server


@pytest.fixture(scope="module")
async def e2b_url(cp: InProcessCP) -> AsyncIterator[str]:
    """The CP's E2B-compatible listener, over the same state."""
    port = free_port()
    app = create_e2b_app(cp.app.state)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def _from(source: str, cp: InProcessCP, timeout: float = 30, *, base_url: str = "") -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    return httpx.AsyncClient(transport=transport, base_url=base_url or cp.url, timeout=timeout)


async def test_an_anonymous_flood_of_bad_keys_gets_a_bounded_number_of_answers(cp: InProcessCP) -> None:
    bad = {"X-API-Key": generate_api_key().plaintext}  # well formed: each one is a database lookup
    async with _from("127.0.0.11", cp) as attacker:

        async def guess() -> int:
            return (await attacker.get("/v1/sandboxes", headers=bad)).status_code

        statuses = await flood(guess, connections=CONNECTIONS, seconds=FLOOD_S)
    assert set(statuses) == {401}
    assert BURST <= len(statuses) <= BOUND, len(statuses)


async def test_forged_forwarded_for_does_not_make_a_new_address(cp: InProcessCP) -> None:
    # The CP trusts no proxy: X-Forwarded-For from the socket's peer names nobody.
    counter = iter(range(10**6))
    async with _from("127.0.0.12", cp) as attacker:

        async def guess() -> int:
            forged = {"X-API-Key": "wk_nope", "X-Forwarded-For": f"203.0.113.{next(counter) % 250}"}
            return (await attacker.get("/v1/sandboxes", headers=forged)).status_code

        statuses = await flood(guess, connections=CONNECTIONS, seconds=FLOOD_S)
    assert set(statuses) == {401}
    assert len(statuses) <= BOUND, len(statuses)


async def test_a_team_looping_past_its_own_rate_limit_is_held_too(cp: InProcessCP) -> None:
    owner = await cp.signup()
    key = {"X-API-Key": await owner.api_key()}
    async with _from("127.0.0.13", cp) as team_client:

        async def read() -> int:
            return (await team_client.get("/v1/sandboxes", headers=key)).status_code

        statuses = await flood(read, connections=CONNECTIONS, seconds=FLOOD_S)
    assert statuses.count(429) > statuses.count(200) > 0
    assert len(statuses) <= BOUND, len(statuses)


async def test_refused_websocket_handshakes_count_too(cp: InProcessCP) -> None:
    url = cp.url.replace("http://", "ws://") + "/v1/sandboxes/sb_nope/exec/stream"

    async def handshake() -> int:
        try:
            async with websockets.connect(
                url, additional_headers={"X-API-Key": "wk_nope"}, local_addr=("127.0.0.14", 0)
            ):
                return 101
        except websockets.InvalidStatus as e:
            return e.response.status_code

    statuses = await flood(handshake, connections=CONNECTIONS, seconds=FLOOD_S)
    assert set(statuses) == {401}
    assert len(statuses) <= BOUND, len(statuses)


async def test_the_e2b_listener_holds_its_refusals_too(cp: InProcessCP, e2b_url: str) -> None:
    async with _from("127.0.0.17", cp, base_url=e2b_url) as attacker:

        async def guess() -> int:
            return (await attacker.get("/sandboxes", headers={"X-API-Key": "e2b_nope"})).status_code

        statuses = await flood(guess, connections=CONNECTIONS, seconds=FLOOD_S)
    assert set(statuses) == {401}
    assert len(statuses) <= BOUND, len(statuses)


async def test_served_requests_and_other_addresses_do_not_wait(cp: InProcessCP) -> None:
    owner: User = await cp.signup()
    key = {"X-API-Key": await owner.api_key()}
    async with _from("127.0.0.15", cp) as same:
        # Refused until a refusal is held: the budget is spent.
        for _ in range(BURST + 20):
            started = time.monotonic()
            r = await same.get("/v1/sandboxes", headers={"X-API-Key": "wk_nope"})
            assert r.status_code == 401
            if time.monotonic() - started >= HOLD_S * 0.9:
                break
        else:
            raise AssertionError("no refusal was held")
        # A request the same address is served is answered at once (well inside a hold).
        r = await same.get("/v1/sandboxes", headers=key, timeout=HOLD_S * 0.8)
        assert r.status_code == 200, r.text
    # Another address's refusal is answered at once.
    async with _from("127.0.0.16", cp, timeout=HOLD_S * 0.8) as other:
        r = await other.get("/v1/sandboxes", headers={"X-API-Key": "wk_nope"})
        assert r.status_code == 401
