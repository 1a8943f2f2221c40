"""GitHub OAuth (SPEC §2.1) against a local server that speaks GitHub's real endpoints:
``GET /login/oauth/authorize``, ``POST /login/oauth/access_token``, ``GET /user``,
``GET /user/emails``. It runs in uvicorn on 127.0.0.1; the CP reaches it over real HTTP."""

from __future__ import annotations

import asyncio
import secrets
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import httpx
import jwt
import pytest
import uvicorn
from fastapi import FastAPI, Form, Header, Query
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from warren.cp.app import create_app
from warren.cp.services import oauth as oauth_svc

from .conftest import JWT_SECRET, PUBLIC_URL, assert_error, make_settings, signup

CLIENT_ID = "Iv1.testclient"
CLIENT_SECRET = "gh-secret-" + "s" * 20
DASHBOARD = "http://dash.test"


@dataclass
class FakeGitHub:
    """The fake provider's state: pending codes and issued tokens map to a profile."""

    profiles_by_code: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    next_profile: dict[str, Any] | None = None

    def app(self) -> FastAPI:
        gh = FastAPI()

        @gh.get("/login/oauth/authorize")
        async def authorize(client_id: str, redirect_uri: str, scope: str, state: str) -> RedirectResponse:
            self.authorize_requests.append(
                {"client_id": client_id, "redirect_uri": redirect_uri, "scope": scope, "state": state}
            )
            code = secrets.token_hex(10)
            assert self.next_profile is not None
            self.profiles_by_code[code] = self.next_profile
            return RedirectResponse(
                f"{redirect_uri}?{urlencode({'code': code, 'state': state})}", status_code=302
            )

        @gh.post("/login/oauth/access_token")
        async def access_token(
            client_id: str = Form(), client_secret: str = Form(), code: str = Form(), accept: str = Header("")
        ) -> JSONResponse:
            profile = self.profiles_by_code.pop(code, None)
            if client_id != CLIENT_ID or client_secret != CLIENT_SECRET or profile is None:
                # GitHub answers 200 with an error object for a bad code.
                return JSONResponse({"error": "bad_verification_code"})
            assert "application/json" in accept
            token = "gho_" + secrets.token_hex(16)
            self.tokens[token] = profile
            return JSONResponse({"access_token": token, "token_type": "bearer", "scope": "user:email"})

        def who(authorization: str) -> dict[str, Any] | None:
            return self.tokens.get(authorization.removeprefix("Bearer ").removeprefix("token "))

        @gh.get("/user")
        async def user(authorization: str = Header("")) -> JSONResponse:
            p = who(authorization)
            if p is None:
                return JSONResponse({"message": "Bad credentials"}, status_code=401)
            return JSONResponse(
                {"id": p["id"], "login": p["login"], "name": p.get("name"), "email": p.get("email")}
            )

        @gh.get("/user/emails")
        async def emails(authorization: str = Header(""), per_page: int = Query(30)) -> JSONResponse:
            p = who(authorization)
            if p is None:
                return JSONResponse({"message": "Bad credentials"}, status_code=401)
            return JSONResponse(p.get("emails", []))

        return gh


@pytest.fixture(scope="module")
async def github() -> AsyncIterator[tuple[FakeGitHub, str]]:
    fake = FakeGitHub()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake.app(), log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield fake, f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task
    sock.close()


@pytest.fixture(scope="module")
async def app(db_url: str, github: tuple[FakeGitHub, str]) -> AsyncIterator[FastAPI]:
    _, base = github
    settings = make_settings(
        db_url,
        github_client_id=CLIENT_ID,
        github_client_secret=CLIENT_SECRET,
        github_authorize_url=f"{base}/login/oauth/authorize",
        github_token_url=f"{base}/login/oauth/access_token",
        github_api_url=base,
        oauth_redirect_url=DASHBOARD,
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def profile(**kw: Any) -> dict[str, Any]:
    n = uuid.uuid4().int % 10**9
    base: dict[str, Any] = {"id": n, "login": f"octo{n}", "name": f"Octo {n}", "email": f"octo{n}@gh.test"}
    base.update(kw)
    return base


async def start(cp: httpx.AsyncClient) -> tuple[str, str]:
    """Step 1: the CP redirects to GitHub and sets the state cookie. Returns (authorize URL, cookie)."""
    r = await cp.get("/v1/auth/oauth/github")
    assert r.status_code == 302
    set_cookie = r.headers["set-cookie"]
    assert set_cookie.startswith("warren_oauth_state=")
    lower = set_cookie.lower()
    assert "httponly" in lower and "max-age=600" in lower and "path=/" in lower and "samesite=lax" in lower
    assert "secure" not in lower  # plain http here
    return r.headers["location"], r.cookies["warren_oauth_state"]


async def run_flow(app: FastAPI, fake: FakeGitHub, prof: dict[str, Any]) -> httpx.Response:
    fake.next_profile = prof
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as cp,
        httpx.AsyncClient() as browser,
    ):
        authorize_url, _ = await start(cp)
        gh = await browser.get(authorize_url)  # the real provider endpoint over HTTP
        assert gh.status_code == 302
        callback = urlsplit(gh.headers["location"])
        assert f"{callback.scheme}://{callback.netloc}" == PUBLIC_URL
        return await cp.get(f"{callback.path}?{callback.query}")


def result_cookies(r: httpx.Response) -> dict[str, str]:
    out: dict[str, str] = {}
    for header in r.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        value = rest.split(";", 1)[0]
        attrs = header.lower()
        if name.startswith("warren_oauth_") and name != "warren_oauth_state":
            assert "path=/auth/" in attrs and "max-age=60" in attrs and "samesite=lax" in attrs
            assert "httponly" not in attrs
            out[name.removeprefix("warren_oauth_")] = unquote(value.strip('"'))
    return out


def state_expired(r: httpx.Response) -> bool:
    return any(
        h.startswith("warren_oauth_state=")
        and ("max-age=0" in h.lower() or "expires=thu, 01 jan 1970" in h.lower())
        for h in r.headers.get_list("set-cookie")
    )


async def test_authorize_redirect(app: FastAPI, github: tuple[FakeGitHub, str]) -> None:
    _, base = github
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as cp:
        url, cookie = await start(cp)
        parts = urlsplit(url)
        assert url.startswith(f"{base}/login/oauth/authorize?")
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert q["client_id"] == CLIENT_ID and q["scope"] == "user:email"
        assert q["redirect_uri"] == f"{PUBLIC_URL}/v1/auth/oauth/github/callback"
        nonce, mac = cookie.split(":")
        assert q["state"] == nonce and len(nonce) == 32 and len(mac) == 64
        r = await cp.get("/v1/auth/oauth/github", headers={"X-Forwarded-Proto": "https"})
        assert "secure" in r.headers["set-cookie"].lower()
        assert_error(await cp.get("/v1/auth/oauth/gitlab"), 404, "provider_not_found")
        assert_error(await cp.get("/v1/auth/oauth/gitlab/callback?code=x&state=y"), 404, "provider_not_found")


async def test_new_user_signup_and_relogin(
    app: FastAPI, github: tuple[FakeGitHub, str], engine: AsyncEngine
) -> None:
    fake, _ = github
    prof = profile()
    r = await run_flow(app, fake, prof)
    assert r.status_code == 302 and r.headers["location"] == f"{DASHBOARD}/auth/github/callback", r.headers
    assert state_expired(r)
    got = result_cookies(r)
    assert set(got) == {"token", "user_id", "team_id", "email", "name"}
    assert got["email"] == prof["email"] and got["name"] == prof["name"]
    claims = jwt.decode(got["token"], JWT_SECRET, algorithms=["HS256"])
    assert (
        claims["sub"] == got["user_id"] and claims["team_id"] == got["team_id"] and claims["role"] == "owner"
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as cp:
        teams = (await cp.get("/v1/teams", headers={"Authorization": f"Bearer {got['token']}"})).json()
    assert [t["name"] for t in teams] == [f"{prof['name']}'s Team"]
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT u.password_hash, o.provider_id, o.email, ut.is_default FROM users u "
                    "JOIN oauth_providers o ON o.user_id = u.id JOIN users_teams ut ON ut.user_id = u.id "
                    "WHERE u.email = :e"
                ),
                {"e": prof["email"]},
            )
        ).one()
    assert row.password_hash is None and row.provider_id == str(prof["id"]) and row.is_default is True

    # the same GitHub identity signs in again: same user, no new account
    again = await run_flow(app, fake, prof)
    got2 = result_cookies(again)
    assert got2["user_id"] == got["user_id"] and got2["team_id"] == got["team_id"]


async def test_private_email_and_missing_name(app: FastAPI, github: tuple[FakeGitHub, str]) -> None:
    fake, _ = github
    n = uuid.uuid4().hex[:8]
    prof = profile(
        name=None,
        email=None,
        login=f"ghost{n}",
        emails=[
            {"email": f"old{n}@gh.test", "primary": False, "verified": True},
            {"email": f"Main{n}@GH.test", "primary": True, "verified": True},
        ],
    )
    got = result_cookies(await run_flow(app, fake, prof))
    assert got["email"] == f"main{n}@gh.test" and got["name"] == f"ghost{n}"


async def test_email_taken_is_not_linked(app: FastAPI, github: tuple[FakeGitHub, str]) -> None:
    fake, _ = github
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as cp:
        existing = await signup(cp, name="Pw")
    r = await run_flow(app, fake, profile(email=existing.email))
    assert r.headers["location"] == f"{DASHBOARD}/auth/github/callback?error=email_taken"
    assert result_cookies(r) == {} and state_expired(r)


async def test_known_identity_without_team_signs_in_teamless(
    app: FastAPI, github: tuple[FakeGitHub, str]
) -> None:
    """Session 14 (docs/spec.md §2.1): a known identity with no live team signs in, to a teamless
    token (team_id null, an empty team_id cookie) that may answer invitations but nothing
    team-scoped (it was ``db_error`` before: such a user could never get back in)."""
    fake, _ = github
    prof = profile()
    got = result_cookies(await run_flow(app, fake, prof))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as cp:
        r = await cp.delete(
            f"/v1/teams/{got['team_id']}", headers={"Authorization": f"Bearer {got['token']}"}
        )
        assert r.status_code == 204
        r = await run_flow(app, fake, prof)
        assert r.headers["location"] == f"{DASHBOARD}/auth/github/callback", r.headers
        again = result_cookies(r)
        assert again["user_id"] == got["user_id"] and again["team_id"] == ""
        claims = jwt.decode(again["token"], JWT_SECRET, algorithms=["HS256"])
        assert claims["team_id"] is None and claims["role"] is None
        h = {"Authorization": f"Bearer {again['token']}"}
        assert (await cp.get("/v1/invitations", headers=h)).json() == []
        assert_error(await cp.get("/v1/api-keys", headers=h), 403, "no_team")


async def test_callback_failures(app: FastAPI, github: tuple[FakeGitHub, str]) -> None:
    fake, _ = github
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    target = f"{DASHBOARD}/auth/github/callback?error="
    cb = "/v1/auth/oauth/github/callback"
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as cp:
        # provider error
        r = await cp.get(f"{cb}?error=access_denied&state=x")
        assert r.status_code == 302 and r.headers["location"] == target + "access_denied" and state_expired(r)
        # no state cookie
        r = await cp.get(f"{cb}?code=abc&state=abc")
        assert r.headers["location"] == target + "invalid_state" and state_expired(r)
        _, cookie = await start(cp)
        nonce, mac = cookie.split(":")
        cases = {
            "wrong state": (f"{nonce}:{mac}", "other"),
            "tampered mac": (f"{nonce}:{'0' * 64}", nonce),
            "forged pair": (f"{'a' * 32}:{mac}", "a" * 32),
            "malformed": ("no-colon", "no-colon"),
            "extra colon": (f"{nonce}:{mac}:x", nonce),
        }
        for label, (cookie_value, state) in cases.items():
            cp.cookies.clear()
            r = await cp.get(
                f"{cb}?code=abc&state={state}", headers={"Cookie": f"warren_oauth_state={cookie_value}"}
            )
            assert r.headers["location"] == target + "invalid_state", label
        # valid state, no code
        r = await cp.get(f"{cb}?state={nonce}", headers={"Cookie": f"warren_oauth_state={cookie}"})
        assert r.headers["location"] == target + "missing_code"
        # valid state, code GitHub does not know
        r = await cp.get(f"{cb}?state={nonce}&code=bogus", headers={"Cookie": f"warren_oauth_state={cookie}"})
        assert r.headers["location"] == target + "exchange_failed" and state_expired(r)
    del fake


async def test_unreachable_provider_is_exchange_failed(db_url: str) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens here now
    application = create_app(
        make_settings(
            db_url,
            github_client_id=CLIENT_ID,
            github_client_secret=CLIENT_SECRET,
            github_token_url=f"http://127.0.0.1:{port}/login/oauth/access_token",
            github_api_url=f"http://127.0.0.1:{port}",
            oauth_redirect_url=DASHBOARD,
        )
    )
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as cp:
            _, cookie = await start(cp)
            nonce = cookie.split(":")[0]
            r = await cp.get(
                f"/v1/auth/oauth/github/callback?state={nonce}&code=x",
                headers={"Cookie": f"warren_oauth_state={cookie}"},
            )
    assert r.headers["location"].endswith("?error=exchange_failed")


async def test_not_configured_is_404(db_url: str) -> None:
    application = create_app(make_settings(db_url))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as cp:
            assert_error(await cp.get("/v1/auth/oauth/github"), 404, "provider_not_found")


async def test_github_verified_email_verifies_the_account(
    app: FastAPI, github: tuple[FakeGitHub, str]
) -> None:
    """Session 14: an address GitHub's /user/emails lists as verified is verified here (it may
    accept invitations); a public profile email GitHub does not list as verified is not; the
    callback sets the HttpOnly binding cookie the landing needs beside the token."""
    fake, _ = github
    n = uuid.uuid4().hex[:8]
    ok = profile(
        email=f"ok{n}@gh.test", emails=[{"email": f"ok{n}@gh.test", "primary": True, "verified": True}]
    )
    r = await run_flow(app, fake, ok)
    bind = [
        h for h in r.headers.get_list("set-cookie") if h.startswith(oauth_svc.bind_cookie_name(False) + "=")
    ]
    assert len(bind) == 1 and "httponly" in bind[0].lower() and "path=/;" in bind[0].lower(), bind
    got = result_cookies(r)
    unverified = profile(email=f"no{n}@gh.test", emails=[{"email": f"no{n}@gh.test", "primary": True}])
    got_no = result_cookies(await run_flow(app, fake, unverified))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as cp:
        h = {"Authorization": f"Bearer {got['token']}"}
        found = (await cp.get("/v1/users/search", params={"email": f"ok{n}@"}, headers=h)).json()
        assert [m["verified"] for m in found] == [True], found
        found = (await cp.get("/v1/users/search", params={"email": f"no{n}@"}, headers=h)).json()
        assert [m["verified"] for m in found] == [False], found
    assert got_no["email"] == f"no{n}@gh.test"
