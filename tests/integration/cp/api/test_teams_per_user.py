"""The teams one user may own (``Settings.max_teams_per_user``, 10 by default): every quota is per
team and each team brings the whole default quota, so the number of teams bounds one account.
The signup team counts; teams the user only joined do not; a deleted team frees its place;
concurrent creates by one user never overshoot; platform admins are bounded alike."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness.invitations import join_team_async
from warren import ids

from .conftest import User, add_member, assert_error, make_admin, signup, switch

CAP = 10  # WARREN_MAX_TEAMS_PER_USER's default, which this module's app runs with


async def _create(client: httpx.AsyncClient, u: User, name: str) -> httpx.Response:
    return await client.post("/v1/teams", json={"name": name}, headers=u.h)


async def _fill(client: httpx.AsyncClient, u: User) -> list[str]:
    """Teams up to the cap (the signup team is the first); their ids."""
    made = []
    for i in range(CAP - 1):
        r = await _create(client, u, f"team {i}")
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
    return made


async def _owned_live(engine: AsyncEngine, u: User) -> int:
    async with engine.connect() as conn:
        n = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM users_teams ut JOIN teams t ON t.id = ut.team_id"
                    " WHERE ut.user_id = :u AND ut.role = 'owner' AND t.deleted_at IS NULL"
                ),
                {"u": ids.parse_id(ids.Kind.USER, u.user_id)},
            )
        ).scalar_one()
    return int(n)


async def test_past_the_cap_is_429_quota_exceeded_naming_the_limit(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    u = await signup(client, name="Capped")
    await _fill(client, u)
    r = await _create(client, u, "one too many")
    assert_error(r, 429, "quota_exceeded", f"at most {CAP} per user")
    assert "Retry-After" not in r.headers  # not a rate limit: waiting does not help
    assert len((await client.get("/v1/teams", headers=u.h)).json()) == CAP
    assert await _owned_live(engine, u) == CAP


async def test_concurrent_creates_never_overshoot(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    u = await signup(client, name="Racer")
    tries = 3 * CAP
    results = await asyncio.gather(*(_create(client, u, f"race {i}") for i in range(tries)))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] * (CAP - 1) + [429] * (tries - CAP + 1), statuses
    assert await _owned_live(engine, u) == CAP


async def test_a_deleted_team_frees_a_place(client: httpx.AsyncClient) -> None:
    u = await signup(client, name="Deleter")
    made = await _fill(client, u)
    assert_error(await _create(client, u, "refused"), 429, "quota_exceeded")
    in_doomed = await switch(client, u, made[0])
    assert (await client.delete(f"/v1/teams/{made[0]}", headers=in_doomed.h)).status_code == 204
    assert (await _create(client, u, "in the freed place")).status_code == 201
    assert_error(await _create(client, u, "refused again"), 429, "quota_exceeded")


async def test_other_users_and_joined_teams_are_unaffected(client: httpx.AsyncClient) -> None:
    full = await signup(client, name="Full")
    made = await _fill(client, full)
    other = await signup(client, name="Other")
    assert (await _create(client, other, "mine")).status_code == 201
    # A member of the full user's teams still creates teams of their own: only owned teams count,
    # and the full user's teams are none of theirs.
    joiner = await signup(client, name="Joiner")
    await add_member(client, full, joiner)
    for team_id in made[:3]:
        owner_in = await switch(client, full, team_id)
        await join_team_async(client, team_id, joiner.email, inviter=owner_in.h, invitee=joiner.h)
    assert len((await client.get("/v1/teams", headers=joiner.h)).json()) == 5
    assert (await _create(client, joiner, "joiner's own")).status_code == 201
    # The full user is still refused, whichever team their token is for.
    assert_error(await _create(client, await switch(client, full, made[-1]), "x"), 429, "quota_exceeded")


async def test_platform_admins_are_bounded_alike(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    admin = await signup(client, name="Admin")
    await make_admin(engine, admin)
    await _fill(client, admin)
    assert_error(await _create(client, admin, "refused"), 429, "quota_exceeded")
