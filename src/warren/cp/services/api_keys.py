"""Team API keys (docs/spec.md §2.2, §7.8). Any member may manage the keys of the JWT's team."""

from __future__ import annotations

import uuid

from pydantic import BaseModel
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock, ids
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.tables import team_api_keys, teams, users, users_teams
from warren.cp.security.api_keys import generate_api_key
from warren.cp.services import Timestamp, audit, envd_rotation, stream_revocation
from warren.cp.services.context import AuthContext
from warren.errors import Forbidden, InvalidRequest, TooManyRequests

DEFAULT_NAME = "Unnamed API Key"
MAX_NAME = 200
# A team's keys are listed in one response (the API and the dashboard's Keys page): without a
# bound, a member creating keys at the team's request rate made that response gigabytes.
MAX_KEYS_PER_TEAM = 1000


class ApiKey(BaseModel):
    id: str
    team_id: str
    name: str
    key_prefix: str
    created_by: str
    creator_email: str | None = None
    created_at: Timestamp
    last_used: Timestamp | None = None
    # The plaintext, present only in the create response.
    key: str | None = None


class KeyRef(BaseModel):
    """A key named in a member's removal: what an admin recognises it by."""

    id: str
    name: str
    key_prefix: str


def _scope(ctx: AuthContext) -> tuple[uuid.UUID, uuid.UUID]:
    if ctx.user_id is None or ctx.team_id is None:
        raise Forbidden("API keys are managed with a user token for a team")
    return ctx.user_id, ctx.team_id


def parse_key_id(text: str) -> uuid.UUID:
    return ids.parse_id(ids.Kind.API_KEY, text, what="API key ID")


async def create_key(engine: AsyncEngine, ctx: AuthContext, name: str | None) -> ApiKey:
    user_id, team_id = _scope(ctx)
    clean = (name or "").strip() or DEFAULT_NAME
    if len(clean) > MAX_NAME:
        raise InvalidRequest(f"name must be at most {MAX_NAME} characters")
    if "\x00" in clean:
        raise InvalidRequest("invalid characters in name")
    gen = generate_api_key()
    key_uuid = ids.new_uuid()
    now = clock.now()
    async with transaction(engine) as conn:
        # The team's row locked: two creates at the bound cannot both pass the count.
        await conn.execute(select(teams.c.id).where(teams.c.id == team_id).with_for_update())
        # Still a member under the lock: a removal with ``revoke_keys`` (teams.remove_member, which
        # takes the same lock) committed while this request was authenticated must not be
        # followed by a new key of the removed member.
        member = await conn.execute(
            select(users_teams.c.role).where(
                users_teams.c.team_id == team_id, users_teams.c.user_id == user_id
            )
        )
        if member.first() is None:
            raise Forbidden("not a member of this team")
        held = (
            await conn.execute(
                select(func.count()).select_from(team_api_keys).where(team_api_keys.c.team_id == team_id)
            )
        ).scalar_one()
        if held >= MAX_KEYS_PER_TEAM:
            raise TooManyRequests(
                f"the team has {held} API keys (at most {MAX_KEYS_PER_TEAM}); delete one first",
                code="quota_exceeded",
            )
        await conn.execute(
            team_api_keys.insert().values(
                id=key_uuid,
                team_id=team_id,
                name=clean,
                key_hash=gen.key_hash,
                key_prefix=gen.key_prefix,
                created_by=user_id,
                created_at=now,
            )
        )
    out = ApiKey(
        id=ids.api_key_id(key_uuid),
        team_id=ids.team_id(team_id),
        name=clean,
        key_prefix=gen.key_prefix,
        created_by=ids.user_id(user_id),
        creator_email=ctx.email or None,
        created_at=now,
        key=gen.plaintext,
    )
    await audit.record(
        engine,
        ctx,
        team_id=team_id,
        action="create",
        resource_type="api_key",
        resource_id=out.id,
        metadata={"name": clean, "key_prefix": gen.key_prefix},
    )
    return out


async def list_keys(engine: AsyncEngine, ctx: AuthContext) -> list[ApiKey]:
    _, team_id = _scope(ctx)
    k = team_api_keys
    async with autocommit(engine) as conn:
        rows = await conn.execute(
            select(k, users.c.email.label("creator_email"))
            .outerjoin(users, users.c.id == k.c.created_by)
            .where(k.c.team_id == team_id)
            .order_by(k.c.created_at.desc(), k.c.id.desc())
        )
        return [
            ApiKey(
                id=ids.api_key_id(r.id),
                team_id=ids.team_id(r.team_id),
                name=r.name,
                key_prefix=r.key_prefix,
                created_by=ids.user_id(r.created_by),
                creator_email=r.creator_email,
                created_at=r.created_at,
                last_used=r.last_used,
            )
            for r in rows
        ]


async def delete_key(engine: AsyncEngine, ctx: AuthContext, key_id: uuid.UUID) -> None:
    """Delete a key of the caller's team. Deleting nothing is not an error (docs/spec.md §2.2)."""
    _, team_id = _scope(ctx)
    async with transaction(engine) as conn:
        res = await conn.execute(
            delete(team_api_keys)
            .where(team_api_keys.c.id == key_id, team_api_keys.c.team_id == team_id)
            .returning(team_api_keys.c.name)
        )
        name = res.scalar()
        if name is not None:
            # The key could read every envd token of the team's sandboxes (E2B's get/connect).
            await envd_rotation.revoke_team_tokens(conn, team_id)
    if name is not None:
        stream_revocation.kick()  # the key's open streams end (committed now)
        await _audit_revoke(engine, ctx, team_id, ids.api_key_id(key_id), {"name": name})


async def _audit_revoke(
    db: AsyncEngine | AsyncConnection, ctx: AuthContext, team_id: uuid.UUID, key_id: str, meta: dict[str, str]
) -> None:
    await audit.record(
        db, ctx, team_id=team_id, action="revoke", resource_type="api_key", resource_id=key_id, metadata=meta
    )


async def keys_created_by(
    conn: AsyncConnection, ctx: AuthContext, team_id: uuid.UUID, creator: uuid.UUID, *, revoke: bool
) -> list[KeyRef]:
    """The team's keys ``creator`` made, oldest first; with ``revoke`` they are deleted, each
    with the audit row ``delete_key`` writes (``reason`` ``member_removed``). The caller's
    transaction, which holds the team row (``FOR UPDATE``) and, as ``delete_key``, voids the
    team's envd tokens (``envd_rotation.revoke_team_tokens``) and calls
    ``stream_revocation.kick`` once it commits: the key's requests and streams end with it."""
    k = team_api_keys
    where = (k.c.team_id == team_id, k.c.created_by == creator)
    cols = (k.c.id, k.c.name, k.c.key_prefix, k.c.created_at)
    if revoke:
        rows = list(await conn.execute(delete(k).where(*where).returning(*cols)))
        rows.sort(key=lambda r: (r.created_at, r.id))
    else:
        rows = list(await conn.execute(select(*cols).where(*where).order_by(k.c.created_at, k.c.id)))
    refs = [KeyRef(id=ids.api_key_id(r.id), name=r.name, key_prefix=r.key_prefix) for r in rows]
    if revoke:
        for ref in refs:
            meta = {"name": ref.name, "key_prefix": ref.key_prefix, "reason": "member_removed"}
            await _audit_revoke(conn, ctx, team_id, ref.id, meta)
    return refs


async def counts_by_creator(engine: AsyncEngine, team_id: uuid.UUID) -> dict[str, int]:
    """How many of the team's keys each member made (user id → count): the dashboard's
    "Also revoke the N API keys they created"."""
    k = team_api_keys
    async with autocommit(engine) as conn:
        rows = await conn.execute(
            select(k.c.created_by, func.count()).where(k.c.team_id == team_id).group_by(k.c.created_by)
        )
        return {ids.user_id(r[0]): int(r[1]) for r in rows}
