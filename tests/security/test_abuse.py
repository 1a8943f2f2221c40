"""D14 and issue 11's abuse limits, attacked the way a stranger on the internet would: password
guessing against one account (from one address and from many), password spraying and signup
spam from one address (and from a rotated IPv6 /64, and behind forged X-Forwarded-For), and a
team flooding the API.

The control plane is the real app on a real PostgreSQL, driven over HTTP through httpx's ASGI
transport (so the client's socket address is ours to choose); the fake clock moves time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from warren.config import Settings
from warren.cp.app import create_app
from warren.cp.dashboard import session as sessions
from warren.cp.services import rate_limits

SECRET = "abuse-test-secret-" + "s" * 40
PUBLIC_URL = "http://cp.test"
PASSWORD = "correct horse battery"
ATTACKER = "198.51.100.66"
VICTIM_HOME = "192.0.2.10"


def _settings(db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "jwt_secret": SECRET,
        "public_url": PUBLIC_URL,
        "run_workers": False,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def _running(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


Client = Callable[[str], AbstractAsyncContextManager[httpx.AsyncClient]]


def _client_for(app: FastAPI) -> Client:
    @asynccontextmanager
    async def client(address: str) -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as c:
            yield c

    return client


@pytest.fixture(scope="module")
async def default_app(db_url: str) -> AsyncIterator[FastAPI]:
    """The CP with the shipped defaults."""
    async with _running(_settings(db_url)) as app:
        yield app


@pytest.fixture(scope="module")
async def tight_app(db_url: str) -> AsyncIterator[FastAPI]:
    """A second replica on the same database, with small limits so the spraying, spam and flood
    tests need a few requests instead of hundreds."""
    settings = _settings(
        db_url,
        login_limit_per_account=5,
        login_limit_per_address=8,
        signup_limit_per_address=3,
        team_rate_limit_per_s=5,
        team_rate_burst=10,
        trusted_proxies="10.0.0.0/8",
    )
    async with _running(settings) as app:
        yield app


@pytest.fixture
def cp(default_app: FastAPI) -> Client:
    return _client_for(default_app)


@pytest.fixture
def tight(tight_app: FastAPI) -> Client:
    return _client_for(tight_app)


def _email(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.test"


async def _signup(c: httpx.AsyncClient, tag: str = "victim") -> dict[str, Any]:
    r = await c.post("/v1/auth/signup", json={"email": _email(tag), "password": PASSWORD, "name": tag})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def _login(c: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await c.post("/v1/auth/login", json={"email": email, "password": password})


def _assert_rate_limited(r: httpx.Response, at_most: float) -> int:
    assert r.status_code == 429, (r.status_code, r.text)
    assert r.json()["error"]["code"] == "rate_limited", r.text
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= at_most, retry_after
    return retry_after


# ----------------------------------------------------------------------------- D14: login


async def test_61st_login_within_a_minute_is_429_and_the_real_user_gets_in_after_it(
    cp: Client, fake_clock: Any
) -> None:
    async with cp(VICTIM_HOME) as home:
        victim = await _signup(home)
    # The findings' probe, a bit harder: 80 concurrent guesses for one account.
    async with cp(ATTACKER) as c:
        answers = await asyncio.gather(*(_login(c, victim["email"], f"guess-{i}") for i in range(80)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [401] * 60 + [429] * 20, statuses
    for r in answers:
        if r.status_code == 429:
            _assert_rate_limited(r, 60)

    # The real user, from their own address, with the right password: refused during the backoff...
    async with cp(VICTIM_HOME) as home:
        wait = _assert_rate_limited(await _login(home, victim["email"], PASSWORD), 60)
        fake_clock.advance(wait / 2)
        assert (await _login(home, victim["email"], PASSWORD)).status_code == 429
        # ...and let in once it is over (Retry-After is an upper bound of the wait).
        fake_clock.advance(wait / 2 + 1)
        r = await _login(home, victim["email"], PASSWORD)
        assert r.status_code == 200, r.text
        assert r.json()["user_id"] == victim["user_id"]


async def test_the_account_limit_holds_across_addresses_and_replicas(cp: Client, tight: Client) -> None:
    """A distributed guesser: one guess per address, spread over two CP replicas sharing the
    database (the second one allows 5 per account)."""
    async with cp(VICTIM_HOME) as home:
        victim = await _signup(home)
    for i in range(5):
        via = cp if i < 3 else tight
        async with via(f"203.0.113.{i + 1}") as c:
            assert (await _login(c, victim["email"], f"guess-{i}")).status_code == 401
    async with tight("203.0.113.200") as c:
        _assert_rate_limited(await _login(c, victim["email"], PASSWORD), 60)


async def test_unknown_accounts_are_limited_like_real_ones(tight: Client) -> None:
    """The 429 must not tell an attacker which emails exist."""
    ghost = _email("ghost")
    for i in range(5):
        async with tight(f"203.0.113.{50 + i}") as c:
            assert (await _login(c, ghost, "whatever1")).status_code == 401
    async with tight("203.0.113.250") as c:
        _assert_rate_limited(await _login(c, ghost, "whatever1"), 60)


async def test_password_spraying_from_one_address_is_limited(tight: Client, fake_clock: Any) -> None:
    """Few guesses per account, many accounts: the per-address limit (8/min here) stops it,
    and the attacker's own successful logins do not reset their address's counter."""
    async with tight("192.0.2.77") as home:
        own = await _signup(home, "attacker")
    async with tight("198.51.100.67") as c:
        for i in range(7):
            assert (await _login(c, _email(f"spray{i}"), "Summer2026!")).status_code == 401
        assert (await _login(c, own["email"], PASSWORD)).status_code == 200  # the 8th attempt
        _assert_rate_limited(await _login(c, own["email"], PASSWORD), 60)
        _assert_rate_limited(await _login(c, _email("spray"), "Summer2026!"), 60)
        fake_clock.advance(61)
        assert (await _login(c, _email("spray"), "Summer2026!")).status_code == 401


async def test_forged_forwarded_for_does_not_dodge_the_address_limit(tight: Client) -> None:
    """X-Forwarded-For is the client's word: believed only from a trusted proxy (10/8 here), and
    then only its right-most untrusted hop."""
    async with tight("198.51.100.99") as c:
        for i in range(8):
            r = await c.post(
                "/v1/auth/login",
                json={"email": _email("xff"), "password": "x-password"},
                headers={"X-Forwarded-For": f"192.0.2.{i}"},
            )
            assert r.status_code == 401
        r = await c.post(
            "/v1/auth/login",
            json={"email": _email("xff"), "password": "x-password"},
            headers={"X-Forwarded-For": "192.0.2.200"},
        )
        _assert_rate_limited(r, 60)
    # Behind the trusted proxy, the client's own left-most entries change nothing either.
    async with tight("10.1.2.3") as proxy:
        for i in range(8):
            r = await proxy.post(
                "/v1/auth/login",
                json={"email": _email("xff"), "password": "x-password"},
                headers={"X-Forwarded-For": f"192.0.2.{i}, 198.51.100.123"},
            )
            assert r.status_code == 401
        r = await proxy.post(
            "/v1/auth/login",
            json={"email": _email("xff"), "password": "x-password"},
            headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.123"},
        )
        _assert_rate_limited(r, 60)
        # A different client behind the same proxy has its own budget.
        r = await proxy.post(
            "/v1/auth/login",
            json={"email": _email("xff"), "password": "x-password"},
            headers={"X-Forwarded-For": "198.51.100.124"},
        )
        assert r.status_code == 401


# ---------------------------------------------------------------------------- signup spam


async def test_signup_spam_from_one_address_is_429_until_the_window_ends(
    tight: Client, fake_clock: Any
) -> None:
    async with tight("198.51.100.7") as c:
        for i in range(3):
            await _signup(c, f"spam{i}")
        r = await c.post("/v1/auth/signup", json={"email": _email("spam"), "password": PASSWORD, "name": "s"})
        wait = _assert_rate_limited(r, 3600)
        # Probing which emails are registered is counted too.
        r = await c.post(
            "/v1/auth/signup", json={"email": _email("probe"), "password": PASSWORD, "name": "p"}
        )
        assert r.status_code == 429
        fake_clock.advance(wait + 1)
        await _signup(c, "after")


async def test_signup_spam_from_a_rotated_ipv6_prefix_is_one_address(tight: Client) -> None:
    for i in range(3):
        async with tight(f"2001:db8:77:1::{i + 1:x}") as c:
            await _signup(c, f"v6spam{i}")
    async with tight("2001:db8:77:1:ffff:1:2:3") as c:
        r = await c.post("/v1/auth/signup", json={"email": _email("v6"), "password": PASSWORD, "name": "v"})
        _assert_rate_limited(r, 3600)
    async with tight("2001:db8:77:2::1") as c:  # another /64: another subscriber
        await _signup(c, "v6other")


async def test_the_dashboard_form_shares_the_login_limit(cp: Client, tight: Client) -> None:
    async with cp(VICTIM_HOME) as home:
        victim = await _signup(home)
    async with tight("198.51.100.150") as c:
        for i in range(5):
            assert (await _login(c, victim["email"], f"guess-{i}")).status_code == 401
        anon = sessions.Session(csrf="c" * 43)
        cookie, _ = sessions.encode(SECRET, anon)
        r = await c.post(
            "/login",
            data={"mode": "login", "email": victim["email"], "password": PASSWORD, "csrf_token": anon.csrf},
            headers={"Origin": PUBLIC_URL, "Cookie": f"{sessions.COOKIE_NAME}={cookie}"},
        )
        assert r.status_code == 429, r.text
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert "too many login attempts" in r.text


async def test_old_counters_are_deleted(
    cp: Client, default_app: FastAPI, fake_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The next sweep is due by the process's monotonic clock, which the fake clock's reset
    # between tests moves backwards (a real one never does): start from "due now".
    monkeypatch.setattr(rate_limits, "_next_cleanup", 0.0)
    async with cp("198.51.100.201") as c:
        await _login(c, _email("old"), "whatever1")
    old_at = fake_clock.now()  # the old attempt's counters started at or before this
    engine = default_app.state.engine
    at_or_before = text("SELECT count(*) FROM rate_limits WHERE window_start <= :t")
    async with engine.connect() as conn:
        assert (await conn.execute(at_or_before, {"t": old_at})).scalar_one() >= 2
    # Past every window, and past the next clean-up whatever earlier tests did to the clock.
    fake_clock.advance(2 * (rate_limits.SIGNUP_WINDOW_S + rate_limits.CLEANUP_EVERY_S))
    async with cp("198.51.100.202") as c:
        await _login(c, _email("new"), "whatever1")
    async with engine.connect() as conn:
        dead = (await conn.execute(at_or_before, {"t": old_at})).scalar_one()
        later = text("SELECT count(*) FROM rate_limits WHERE window_start > :t")
        counted = (await conn.execute(later, {"t": old_at})).scalar_one()
    # Every counter of the old attempt's time or before is gone; the new attempt's account and
    # address are counted. (Rows other tests wrote under a later fake clock, reset between
    # tests, are not this test's business.)
    assert dead == 0
    assert counted >= 2


# ------------------------------------------------------------------------ per-team requests


async def test_a_team_flooding_the_api_gets_429_and_other_teams_do_not(
    tight: Client, fake_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tight("192.0.2.30") as c:
        flooder, neighbour = await _signup(c, "flood"), await _signup(c, "calm")
        key = (
            await c.post(
                "/v1/api-keys", json={"name": "k"}, headers={"Authorization": f"Bearer {flooder['token']}"}
            )
        ).json()["key"]
        as_key = {"X-API-Key": key}
        as_member = {"Authorization": f"Bearer {flooder['token']}"}
        # The buckets' clock stands still while the team floods: on a loaded machine requests
        # slower than the refill rate (5/s) would never be refused, and the member's request
        # below would find a token refilled since the last 429.
        now = [fake_clock.monotonic()]
        monkeypatch.setattr(fake_clock, "monotonic", lambda: now[0])
        answers = [await c.get("/v1/sandboxes", headers=as_key) for _ in range(30)]
        ok = [r for r in answers if r.status_code == 200]
        limited = [r for r in answers if r.status_code == 429]
        # The burst (10, one of which made the key; what refilled since is at most what it took).
        assert 9 <= len(ok) <= 10 and len(limited) == 30 - len(ok), [r.status_code for r in answers]
        _assert_rate_limited(limited[-1], 1)
        # The team's members share the team's budget; another team has its own.
        assert (await c.get("/v1/teams", headers=as_member)).status_code == 429
        r = await c.get("/v1/sandboxes", headers={"Authorization": f"Bearer {neighbour['token']}"})
        assert r.status_code == 200, r.text
        now[0] += 1  # a second later the bucket has refilled
        assert (await c.get("/v1/sandboxes", headers=as_key)).status_code == 200


async def test_the_default_team_limit_does_not_throttle_normal_use(cp: Client) -> None:
    async with cp("192.0.2.31") as c:
        u = await _signup(c, "normal")
        h = {"Authorization": f"Bearer {u['token']}"}
        answers = await asyncio.gather(*(c.get("/v1/sandboxes", headers=h) for _ in range(100)))
    assert {r.status_code for r in answers} == {200}
