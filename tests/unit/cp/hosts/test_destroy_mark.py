"""A team's destroy and a host monitor pass that lands between its RPC and its mark (seen in CI:
``e2b/test_sdk_sandbox.py::test_create_get_info_kill`` read ``gone_from_host`` after a kill).

The destroy reads the sandbox as not ended, destroys it on its host, then marks it
(``queries.sandboxes.MARK_DESTROYED``). A monitor pass in between finds it gone from its host and
ends it ``gone_from_host``; the destroy's mark then names the destroy's reason instead, while an
end the monitor gave for another reason (a lost host) stands.
"""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock, ids
from warren.cp.db import end_reasons
from warren.cp.db.engine import driver
from warren.cp.db.queries.sandboxes import MARK_DESTROYED

from .conftest import Rows


async def _mark_destroyed(engine: AsyncEngine, sandbox: uuid.UUID, team: uuid.UUID) -> None:
    async with driver(engine) as conn:
        await conn.fetchval(
            MARK_DESTROYED,
            sandbox, clock.now(), False, ids.new_uuid(), team, "user", "u", "u",
            ids.sandbox_id(sandbox), json.dumps({}), end_reasons.DELETED,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("ended_meanwhile", "reason"),
    [
        (None, end_reasons.DELETED),  # no pass in between: the destroy's reason
        (end_reasons.GONE_FROM_HOST, end_reasons.DELETED),  # the pass saw the destroy's own work
        (end_reasons.HOST_LOST, end_reasons.HOST_LOST),  # its host stopped beating: that stands
        (end_reasons.LIFETIME_ENDED, end_reasons.LIFETIME_ENDED),
    ],
)
async def test_a_destroy_names_its_reason_over_a_pass_that_saw_its_rpc(
    engine: AsyncEngine, rows: Rows, ended_meanwhile: str | None, reason: str
) -> None:
    admin = await rows.user(admin=True)
    team = await rows.team()
    host = await rows.host(admin)
    if ended_meanwhile is None:
        sandbox = await rows.sandbox(team, host)
    else:
        sandbox = await rows.sandbox(team, host, status="stopped", end_reason=ended_meanwhile)
    await _mark_destroyed(engine, sandbox, team)
    assert await rows.status(sandbox) == "stopped"
    assert await rows.end_reason(sandbox) == reason
