"""Session 13: a user joins a team only by accepting an invitation.

Until now an owner or admin adding a registered email made that user a member at once, asking
them nothing: Mallory could put Alice into a team Mallory controls and reads (shown in Alice's
dashboard and team list, where Alice might work in it), or fill Alice's team list. Now the add
is an invitation that only Alice can accept (services/team_invitations.py).

Attacked through the public API with each tenant's own credentials: Mallory adds Alice, then
tries to make the membership real without her (switch-team, a JWT for the team, accepting or
declining for her, Bob's help), guesses invitation ids and reaches for other teams'
invitations, keeps an expired invitation alive, floods the team's pending list, and has an
admin invite before being removed. The control plane is the real app on a real PostgreSQL,
driven through httpx's ASGI transport; the fake clock moves time past an invitation's expiry.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.harness.invitations import join_team_async, verify_email_async
from warren import ids
from warren.config import Settings
from warren.cp.app import create_app
from warren.cp.security.tokens import issue_user_jwt
from warren.cp.services import team_invitations

SECRET = "invitations-test-secret-" + "s" * 40
PASSWORD = "correct horse battery"


@dataclass
class Account:
    email: str
    user_id: str
    team_id: str  # the team its token is for
    token: str

    @property
    def h(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
async def app(db_url: str) -> AsyncIterator[FastAPI]:
    settings = Settings(
        database_url=db_url, jwt_secret=SECRET, public_url="http://cp.test", run_workers=False
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def c(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # The module signs up ~20 accounts from this address, within its limit (60 a window).
    transport = httpx.ASGITransport(app=app, client=("198.51.100.13", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://cp.test") as client:
        yield client


async def _signup(c: httpx.AsyncClient, name: str) -> Account:
    email = f"{name}-{uuid.uuid4().hex[:10]}@example.test"
    r = await c.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": name})
    assert r.status_code == 201, r.text
    b = r.json()
    await verify_email_async(c, b["token"])  # session 14: only a verified email accepts
    return Account(email, b["user_id"], b["team_id"], b["token"])


async def _login(c: httpx.AsyncClient, who: Account) -> Account:
    r = await c.post("/v1/auth/login", json={"email": who.email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return Account(who.email, who.user_id, r.json()["team_id"], r.json()["token"])


async def _invite(c: httpx.AsyncClient, by: Account, email: str, **extra: Any) -> httpx.Response:
    return await c.post(f"/v1/teams/{by.team_id}/members", json={"email": email, **extra}, headers=by.h)


def _err(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.json()["error"]["code"] == code, r.text


async def _team_ids(c: httpx.AsyncClient, who: Account) -> list[str]:
    r = await c.get("/v1/teams", headers=who.h)
    assert r.status_code == 200, r.text
    return [t["id"] for t in r.json()]


async def _member_ids(c: httpx.AsyncClient, owner: Account) -> list[str]:
    r = await c.get(f"/v1/teams/{owner.team_id}/members", headers=owner.h)
    assert r.status_code == 200, r.text
    return [m["user_id"] for m in r.json()]


async def test_an_added_user_is_no_member_until_they_accept(c: httpx.AsyncClient) -> None:
    mallory, alice, bob = [await _signup(c, n) for n in ("mallory", "alice", "bob")]
    r = await _invite(c, mallory, alice.email, role="admin")
    assert r.status_code == 201, r.text
    inv = r.json()["id"]
    # Nothing of the team is Alice's yet: not in her list, nor in the team's members.
    assert mallory.team_id not in await _team_ids(c, alice)
    assert alice.user_id not in await _member_ids(c, mallory)
    r = await c.post("/v1/auth/switch-team", json={"team_id": mallory.team_id}, headers=alice.h)
    assert r.status_code in (403, 404), r.text
    # A validly signed JWT naming the team (what switch-team would have issued) is refused too:
    # membership is read from the database on every request.
    forged = issue_user_jwt(
        SECRET, user_id=ids.parse_id(ids.Kind.USER, alice.user_id),
        team_id=ids.parse_id(ids.Kind.TEAM, mallory.team_id), role="admin", email=alice.email, name="alice",
    )  # fmt: skip
    for path in ("/v1/sandboxes", "/v1/api-keys", f"/v1/teams/{mallory.team_id}/members"):
        r = await c.get(path, headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code in (401, 403), (path, r.status_code, r.text)
    # Only Alice answers it: Mallory and Bob accepting or declining it is the unknown-id 404.
    for who in (mallory, bob):
        _err(await c.post(f"/v1/invitations/{inv}/accept", headers=who.h), 404, "not_found")
        _err(await c.post(f"/v1/invitations/{inv}/decline", headers=who.h), 404, "not_found")
        assert (await c.get("/v1/invitations", headers=who.h)).json() == []
    # An API key of Alice's team is no user: it cannot accept for her.
    r = await c.post("/v1/api-keys", json={"name": "k"}, headers=alice.h)
    key = {"X-API-Key": r.json()["key"]}
    assert (await c.post(f"/v1/invitations/{inv}/accept", headers=key)).status_code in (401, 403)
    assert alice.user_id not in await _member_ids(c, mallory)
    # Alice declines: she never joined, and the invitation is gone for good.
    listed = (await c.get("/v1/invitations", headers=alice.h)).json()
    assert [i["id"] for i in listed] == [inv] and listed[0]["invited_by"] == mallory.email
    assert (await c.post(f"/v1/invitations/{inv}/decline", headers=alice.h)).status_code == 204
    _err(await c.post(f"/v1/invitations/{inv}/accept", headers=alice.h), 404, "not_found")
    assert mallory.team_id not in await _team_ids(c, alice)
    assert alice.user_id not in await _member_ids(c, mallory)


async def test_guessed_and_other_teams_invitations_are_404(c: httpx.AsyncClient) -> None:
    mallory, alice, carol, dave = [await _signup(c, n) for n in ("mallory", "alice", "carol", "dave")]
    theirs = (await _invite(c, carol, dave.email)).json()["id"]
    mine = (await _invite(c, mallory, alice.email)).json()["id"]
    guesses = [
        ids.format_id(ids.Kind.INVITATION, uuid.uuid4()),
        ids.format_id(ids.Kind.INVITATION, uuid.UUID(int=0)),
        ids.format_id(ids.Kind.INVITATION, uuid.UUID(int=ids.parse_id(ids.Kind.INVITATION, theirs).int ^ 1)),
        "inv-", "inv-" + "z" * 25, theirs.replace("inv-", "team-"), "../" + theirs,
    ]  # fmt: skip
    for guess in [*guesses, theirs]:
        for verb in ("accept", "decline"):
            r = await c.post(f"/v1/invitations/{guess}/{verb}", headers=mallory.h)
            assert r.status_code == 404, (guess, verb, r.status_code, r.text)
        r = await c.delete(f"/v1/teams/{mallory.team_id}/invitations/{guess}", headers=mallory.h)
        assert r.status_code == 404, (guess, r.status_code, r.text)
    # Carol's team's invitation through Mallory's team path, and Carol's team path with Mallory's JWT.
    r = await c.get(f"/v1/teams/{carol.team_id}/invitations", headers=mallory.h)
    assert r.status_code == 403, r.text
    r = await c.delete(f"/v1/teams/{carol.team_id}/invitations/{theirs}", headers=mallory.h)
    assert r.status_code == 403, r.text
    listed = (await c.get(f"/v1/teams/{mallory.team_id}/invitations", headers=mallory.h)).json()
    assert [i["id"] for i in listed] == [mine]
    # Dave's invitation is still there for Dave alone.
    assert [i["id"] for i in (await c.get("/v1/invitations", headers=dave.h)).json()] == [theirs]
    joined = await c.post(f"/v1/invitations/{theirs}/accept", headers=dave.h)
    assert joined.status_code == 200 and joined.json()["id"] == carol.team_id, joined.text


async def test_an_expired_invitation_cannot_be_accepted(c: httpx.AsyncClient, fake_clock: Any) -> None:
    mallory, alice = [await _signup(c, n) for n in ("mallory", "alice")]
    inv = (await _invite(c, mallory, alice.email)).json()
    assert inv["expires_at"] > inv["created_at"]
    fake_clock.advance(team_invitations.INVITATION_TTL.total_seconds() + 1)
    alice, mallory = await _login(c, alice), await _login(c, mallory)  # their JWTs lived 6 h
    _err(await c.post(f"/v1/invitations/{inv['id']}/accept", headers=alice.h), 404, "not_found")
    assert (await c.get("/v1/invitations", headers=alice.h)).json() == []
    assert (await c.get(f"/v1/teams/{mallory.team_id}/invitations", headers=mallory.h)).json() == []
    assert mallory.team_id not in await _team_ids(c, alice)
    # A fresh invite is a new invitation with a new life; that one Alice can accept.
    await join_team_async(c, mallory.team_id, alice.email, inviter=mallory.h, invitee=alice.h)
    assert mallory.team_id in await _team_ids(c, alice)


async def test_the_pending_bound_holds(c: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound is 100 in production; 3 here, so the flood needs few accounts."""
    monkeypatch.setattr(team_invitations, "MAX_PENDING_PER_TEAM", 3)
    mallory = await _signup(c, "mallory")
    targets = [await _signup(c, f"t{i}") for i in range(5)]
    sent = [(await _invite(c, mallory, t.email)).json()["id"] for t in targets[:3]]
    _err(await _invite(c, mallory, targets[3].email), 429, "too_many_invitations")
    # Inviting one of the three again replaces theirs (still three), never adds a fourth.
    again = await _invite(c, mallory, targets[0].email)
    assert again.status_code == 201 and again.json()["id"] not in sent, again.text
    _err(await _invite(c, mallory, targets[4].email), 429, "too_many_invitations")
    listed = (await c.get(f"/v1/teams/{mallory.team_id}/invitations", headers=mallory.h)).json()
    assert len(listed) == 3
    # An answer or a revoke frees a place.
    assert (
        await c.delete(f"/v1/teams/{mallory.team_id}/invitations/{sent[1]}", headers=mallory.h)
    ).status_code == 204
    assert (await _invite(c, mallory, targets[3].email)).status_code == 201
    _err(await _invite(c, mallory, targets[4].email), 429, "too_many_invitations")


async def test_an_invitation_dies_with_its_inviters_rights(c: httpx.AsyncClient) -> None:
    """An admin invites an accomplice, then is removed (or demoted): the invitation no longer
    speaks for the team."""
    owner, mal, acc1, acc2 = [await _signup(c, n) for n in ("owner", "mal", "acc1", "acc2")]
    await join_team_async(c, owner.team_id, mal.email, inviter=owner.h, invitee=mal.h, role="admin")
    r = await c.post("/v1/auth/switch-team", json={"team_id": owner.team_id}, headers=mal.h)
    mal_in = Account(mal.email, mal.user_id, owner.team_id, r.json()["token"])
    first = (await _invite(c, mal_in, acc1.email, role="admin")).json()["id"]
    second = (await _invite(c, mal_in, acc2.email)).json()["id"]
    r = await c.patch(
        f"/v1/teams/{owner.team_id}/members/{mal.user_id}", json={"role": "member"}, headers=owner.h
    )
    assert r.status_code == 204, r.text
    _err(await c.post(f"/v1/invitations/{first}/accept", headers=acc1.h), 404, "not_found")
    assert (
        await c.delete(f"/v1/teams/{owner.team_id}/members/{mal.user_id}", headers=owner.h)
    ).status_code == 204
    _err(await c.post(f"/v1/invitations/{second}/accept", headers=acc2.h), 404, "not_found")
    members = await _member_ids(c, owner)
    assert acc1.user_id not in members and acc2.user_id not in members and mal.user_id not in members
    # Nor may a member invite (403), or anyone invite as owner (400).
    r = await c.post(f"/v1/teams/{owner.team_id}/members", json={"email": acc1.email}, headers=mal_in.h)
    assert r.status_code == 403, r.text
    _err(await _invite(c, owner, acc1.email, role="owner"), 400, "invalid_request")
