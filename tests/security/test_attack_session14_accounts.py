"""Session 14: who owns an email address, and a sign-in nobody can plant.

1. Anyone could register someone else's address (no verification; only an '@' and a length
   were checked), and an invitation goes to whoever holds the address: Mallory signs up as the
   new hire's address before the new hire does, Bob's owner invites that address, and Mallory
   accepted and was in Bob's team. Now accepting needs a verified email (403
   ``email_unverified``), so the squatter gains nothing.
2. The same with an address that only looks the same: a zero-width space, a bidi control or a
   Cyrillic letter made a second account the invite picker could not tell from the first. Now
   such addresses are refused at signup and at invite (400, ``services/emails.py``).
3. The dashboard's OAuth landing turned any ``warren_oauth_token`` cookie holding a valid JWT
   into a session: script on a sibling subdomain could plant the attacker's token and send the
   victim there. Now the landing also needs the HttpOnly binding cookie the callback set beside
   it (``__Host-`` over HTTPS), a MAC of that very token.

Attacked through the public API and the dashboard's routes, each party with its own
credentials; the real app on a real PostgreSQL over httpx's ASGI transport.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI

from tests.harness.invitations import verify_email_async
from warren import ids
from warren.config import Settings
from warren.cp.app import create_app
from warren.cp.services import oauth as oauth_svc

SECRET = "accounts-test-secret-" + "a" * 40
PASSWORD = "correct horse battery"
URL = "http://cp.test"


@pytest.fixture(scope="module")
async def app(db_url: str) -> AsyncIterator[FastAPI]:
    settings = Settings(database_url=db_url, jwt_secret=SECRET, public_url=URL, run_workers=False)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def c(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("198.51.100.14", 40000))
    async with httpx.AsyncClient(transport=transport, base_url=URL) as client:
        yield client


async def _signup(c: httpx.AsyncClient, email: str, name: str = "x") -> httpx.Response:
    return await c.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": name})


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_squatted_address_accepts_no_invitation(c: httpx.AsyncClient) -> None:
    tag = uuid.uuid4().hex[:8]
    hire = f"newhire-{tag}@corp.example"
    r = await _signup(c, hire, "Mallory")  # Mallory, before the new hire
    assert r.status_code == 201, r.text
    mallory = r.json()["token"]
    r = await _signup(c, hire, "New Hire")
    assert r.status_code == 409 and r.json()["error"]["code"] == "email_taken", r.text
    r = await _signup(c, f"bob-{tag}@corp.example", "Bob")
    bob = r.json()
    await verify_email_async(c, bob["token"])
    # The picker shows the account's id and that its address is unverified.
    r = await c.get("/v1/users/search", params={"email": f"newhire-{tag}@"}, headers=_h(bob["token"]))
    assert r.status_code == 200 and [(m["email"], m["verified"]) for m in r.json()] == [(hire, False)], r.text
    assert r.json()[0]["user_id"].startswith("usr")
    r = await c.post(f"/v1/teams/{bob['team_id']}/members", json={"email": hire}, headers=_h(bob["token"]))
    assert r.status_code == 201, r.text
    inv = r.json()["id"]
    r = await c.post(f"/v1/invitations/{inv}/accept", headers=_h(mallory))
    assert r.status_code == 403 and r.json()["error"]["code"] == "email_unverified", r.text
    assert "warren admin user verify" in r.json()["error"]["message"]
    members = (await c.get(f"/v1/teams/{bob['team_id']}/members", headers=_h(bob["token"]))).json()
    assert [m["email"] for m in members] == [bob["email"]], members
    # No mail server here: she cannot have a link sent either, nor forge one.
    r = await c.post("/v1/users/me/verify-email", headers=_h(mallory))
    assert r.status_code == 409 and r.json()["error"]["code"] == "email_not_configured", r.text
    me = (await c.get("/v1/users/me", headers=_h(mallory))).json()
    uid = ids.parse_id(ids.Kind.USER, me["user_id"]).hex
    for token in (f"{uid}.9999999999.{'0' * 64}", f"{uid}.1.{'0' * 64}", "x", ""):
        r = await c.get("/verify-email", params={"token": token})
        assert r.status_code == 400, r.text
    # Nor can she verify through the admin route.
    r = await c.post("/v1/admin/users/verify-email", json={"email": hire}, headers=_h(mallory))
    assert r.status_code == 403, r.text
    r = await c.post(f"/v1/invitations/{inv}/accept", headers=_h(mallory))
    assert r.status_code == 403, r.text


# Each looks like (or is shown as) an address someone else holds. Ids are fixed strings.
DECEPTIVE = {
    "zero-width-space-after": "newhire-{t}@corp.example\u200b",
    "zero-width-joiner-inside": "new\u200dhire-{t}@corp.example",
    "bidi-override": "\u202enewhire-{t}@corp.example",
    "byte-order-mark": "\ufeffnewhire-{t}@corp.example",
    "no-break-space-inside": "newhire-{t}\u00a0@corp.example",
    "cyrillic-o-in-local-part": "newhire-{t}-b\u043eb@corp.example",
    "cyrillic-o-in-domain": "newhire-{t}@c\u043erp.example",
    "greek-omicron-in-local-part": "newhire-{t}-b\u03bfb@corp.example",
    "tab-inside": "newhire-{t}\t@corp.example",
    "soft-hyphen": "new\u00adhire-{t}@corp.example",
}


@pytest.mark.parametrize("variant", sorted(DECEPTIVE))
async def test_invisible_and_look_alike_addresses_are_refused(c: httpx.AsyncClient, variant: str) -> None:
    tag = uuid.uuid4().hex[:8]
    address = DECEPTIVE[variant].format(t=tag)
    r = await _signup(c, address)
    assert r.status_code == 400, (variant, r.status_code, r.text)
    assert r.json()["error"]["message"].startswith("invalid email:"), r.text
    # Nor can an owner be made to invite one (or find it).
    owner = (await _signup(c, f"owner-{tag}@corp.example")).json()
    r = await c.post(
        f"/v1/teams/{owner['team_id']}/members", json={"email": address}, headers=_h(owner["token"])
    )
    assert r.status_code == 400, r.text
    # The dashboard's sign-up form refuses it as well.
    page = await c.get("/login?mode=signup")
    csrf = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    r = await c.post(
        "/login",
        data={"mode": "signup", "email": address, "password": PASSWORD, "name": "x", "csrf_token": csrf},
        headers={"Origin": URL},
    )
    assert r.status_code == 400 and "invalid email" in r.text, (r.status_code, r.text[:300])


async def _attacker_cookies(c: httpx.AsyncClient) -> dict[str, str]:
    """The five result cookies of the attacker's own account, as the callback would set them."""
    r = await _signup(c, f"attacker-{uuid.uuid4().hex[:8]}@corp.example", "Attacker")
    b = r.json()
    values = {"token": b["token"], "user_id": b["user_id"], "team_id": b["team_id"], "email": b["email"],
              "name": b["name"]}  # fmt: skip
    return {f"warren_oauth_{k}": quote(v, safe="") for k, v in values.items()}


def _cookie_header(cookies: dict[str, str]) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}


PLANTS = ("token-alone", "forged-binding", "another-tokens-binding", "binding-in-a-result-cookie")


@pytest.mark.parametrize("plant", PLANTS)
async def test_a_planted_oauth_result_signs_nobody_in(c: httpx.AsyncClient, plant: str) -> None:
    cookies = await _attacker_cookies(c)
    token = cookies["warren_oauth_token"]
    if plant == "forged-binding":
        cookies[oauth_svc.bind_cookie_name(False)] = "0" * 64
        cookies[oauth_svc.bind_cookie_name(True)] = "0" * 64
    elif plant == "another-tokens-binding":
        # A binding the attacker got from a flow of theirs, for a different token.
        other = (await _attacker_cookies(c))["warren_oauth_token"]
        cookies[oauth_svc.bind_cookie_name(False)] = oauth_svc.landing_cookie_value(SECRET, other)
    elif plant == "binding-in-a-result-cookie":
        cookies["warren_oauth_bind"] = oauth_svc.landing_cookie_value(SECRET, token)
    c.cookies.clear()
    r = await c.get("/auth/github/callback", headers=_cookie_header(cookies))
    assert r.status_code == 303 and r.headers["location"] == "/login?error=missing_token", r.headers
    session = [h for h in r.headers.get_list("set-cookie") if h.startswith("warren_session=")]
    assert session == [], session


async def test_the_flows_own_binding_signs_in(c: httpx.AsyncClient) -> None:
    """The control: with the binding the callback sets beside the token, the landing signs in
    (so the refusals above are the binding's, not a broken landing)."""
    cookies = await _attacker_cookies(c)
    cookies[oauth_svc.bind_cookie_name(False)] = oauth_svc.landing_cookie_value(
        SECRET, cookies["warren_oauth_token"]
    )
    c.cookies.clear()
    r = await c.get("/auth/github/callback", headers=_cookie_header(cookies))
    assert r.status_code == 303 and r.headers["location"] in ("/dashboard/sandboxes", "/dashboard/welcome"), (
        r.headers
    )
