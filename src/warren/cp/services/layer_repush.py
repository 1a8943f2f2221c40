"""A BYOC host that keeps saying it lacks a layer is not sent it again at once (session 14).

A BYOC host's agent is its owner's and answers ``HasLayers`` as it likes. One that always said
it lacked the layers was sent the whole chain from the store again for every warm-pool size set
through the API, every pool reapplied after its heartbeats and every create: 127 ``PUT
.../warm-pools/...`` in 30 s had the CP send one host 4064 MiB of a 32 MiB layer, at the team
rate limit and over a fleet of up to 1000 hosts a team, the CP's network and the store's reads
for every other team.

So a layer sent to a BYOC host is not sent to it again within ``REPUSH_AFTER_S``: the push
(and the create, pool or build that needed it) fails with 503 ``layer_repush_wait``, which
harms only the host's own team. The time is the ``host_layers`` row's ``fetched_at``, moved to
each push (``note_pushed``); the layer collector drops the row once the host stops listing the
layer, so at most one push per layer and host per ``REPUSH_AFTER_S`` or collector pass. Platform
hosts are trusted: a layer their own GC deleted is sent again at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.cp.db.engine import autocommit
from warren.cp.db.tables import host_layers, hosts
from warren.errors import ServiceUnavailable

REPUSH_AFTER_S = 600.0


async def refuse_repush(engine: AsyncEngine, host_id: uuid.UUID, missing: Sequence[str]) -> None:
    """503 ``layer_repush_wait`` when ``host_id`` is a BYOC host that was sent one of ``missing``
    less than REPUSH_AFTER_S ago."""
    if not missing:
        return
    since = clock.now() - timedelta(seconds=REPUSH_AFTER_S)
    q = (
        sa.select(host_layers.c.digest, host_layers.c.fetched_at)
        .join(hosts, hosts.c.id == host_layers.c.host_id)
        .where(
            hosts.c.type == "byoc",
            host_layers.c.host_id == host_id,
            host_layers.c.digest.in_(list(missing)),
            host_layers.c.fetched_at > since,
        )
        .limit(1)
    )
    async with autocommit(engine) as conn:
        recent = (await conn.execute(q)).first()
    if recent is not None:
        wait = int((recent.fetched_at - since).total_seconds()) + 1
        raise ServiceUnavailable(
            f"BYOC host {ids.host_id(host_id)} says it lacks layer {recent.digest[:12]}, which it was "
            f"sent less than {int(REPUSH_AFTER_S)} s ago; it is sent again in {wait} s",
            code="layer_repush_wait",
        )


async def note_pushed(engine: AsyncEngine, host_id: uuid.UUID, digest: str) -> None:
    """``host_id`` was just sent ``digest``: it holds it, since now."""
    now = clock.now()
    stmt = pg_insert(host_layers).values(host_id=host_id, digest=digest, fetched_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=[host_layers.c.host_id, host_layers.c.digest], set_={"fetched_at": now}
    )
    async with autocommit(engine) as conn:
        await conn.execute(stmt)
