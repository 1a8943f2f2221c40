"""Reading and changing a sandbox's egress rules while it exists (``/v1/sandboxes/{id}/network``).

A change replaces the lists it names (a list left out stays as it was), is checked like a
create's (``warren.egress_rules``: 400 naming the bad entry), goes to the sandbox's agent
(``UpdateNetwork``, applied there in one transaction) and then to the row, with an audit entry.
A running or paused sandbox may change; one made with ``internet=false`` may not (409: nothing
leaves it anyway). One change per sandbox at a time across CP replicas (an advisory try-lock:
a second concurrent change is a 409 to retry), so the agent and the row never disagree.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from warren.cp.db import locks
from warren.cp.db.engine import transaction
from warren.cp.db.tables import sandboxes
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.services import audit
from warren.cp.services import sandboxes as sandbox_svc
from warren.cp.services.context import AuthContext
from warren.cp.services.egress_rules import NetworkRules, model, stored, to_pb
from warren.egress_rules import parse
from warren.errors import Conflict, InvalidState, ServiceUnavailable
from warren.rpc import hostagent_pb2 as pb

_LIVE = ("running", "paused")
UPDATE_TIMEOUT_S = 30


async def get_network(engine: AsyncEngine, ctx: AuthContext, sandbox_id: str) -> NetworkRules:
    found = await sandbox_svc.find(engine, ctx, sandbox_id)
    return model(stored(_json(found.row["egress"])))


def _json(value: object) -> object:
    # The lookup runs on asyncpg's own connection, which hands jsonb over as text.
    return json.loads(value) if isinstance(value, str) else value


async def update_network(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    allow_out: list[str] | None,
    deny_out: list[str] | None,
) -> NetworkRules:
    found = await sandbox_svc.find(engine, ctx, sandbox_id, states=_LIVE)
    old = stored(_json(found.row["egress"])).to_json()
    rules = parse(
        old["allow_out"] if allow_out is None else allow_out,
        old["deny_out"] if deny_out is None else deny_out,
    )
    if not found.row["internet"]:
        raise InvalidState("sandbox has no internet access (internet=false): no egress rules to change")
    if not found.host_known or not found.host_address:
        raise ServiceUnavailable("sandbox host is not reachable", code="host_unavailable")
    sid = found.sandbox.id
    async with locks.held(engine, locks.EGRESS_NS, found.sb_uuid) as got:
        if not got:
            raise Conflict("another change of this sandbox's network rules is under way; retry", code="busy")
        await found.host_client(pool).stub.UpdateNetwork(
            pb.UpdateNetworkRequest(sandbox_id=sid, egress=to_pb(rules)), timeout=UPDATE_TIMEOUT_S
        )
        async with transaction(engine) as conn:
            await conn.execute(
                sa.update(sandboxes).where(sandboxes.c.id == found.sb_uuid).values(egress=rules.to_json())
            )
            await audit.record(
                conn, ctx, team_id=found.row["team_id"], action="update", resource_type="sandbox_network",
                resource_id=sid, metadata=rules.to_json(),
            )  # fmt: skip
    return model(rules)
