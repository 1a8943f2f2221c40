"""The sandbox a snapshot is taken of: marked ``paused`` before its agent freezes it, and
running again when the snapshot fails (``services/snapshots.py`` takes the snapshot itself).

A snapshot the caller resumes afterwards (E2B's snapshot and fork: ``transient``) is marked
paused for its snapshot, so commands looked up after the mark wait in the CP
(``services/snapshot_hold.py``). Those looked up just before it may still be on their way to
the agent: the CP has the agent pause the sandbox itself with ``resume_after``, so that they
wait there for the resume too instead of being refused (``agent/resume_holds.py``; session
35). Until then the CP waited 100 ms between the mark and the pause for them, which every E2B
snapshot and fork paid. A snapshot that is not resumed (Warren's own, docs/api.md §5) has its
agent pause the sandbox as part of the export.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.services import sandbox_access, sandbox_power
from warren.cp.services.context import AuthContext
from warren.cp.services.snapshot_hold import TRANSIENT, settle
from warren.errors import AgentError
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.snapshots")

PAUSE_TIMEOUT_S = 120  # as a pause's (sandbox_power.pause_sandbox): gVisor's goes to disk


async def pre_mark_paused(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, tgt: sandbox_access.Target, sandbox_id: str,
    transient: bool,
) -> tuple[sandbox_access.Target, bool]:  # fmt: skip
    """Mark a running sandbox ``paused`` before the agent freezes it, so the monitor does not
    take it for gone (and ``transient``: paused for its snapshot, and by its agent now, holding
    the calls that still come); returns the sandbox as it now is and whether it was marked (and
    must be reverted on failure)."""
    if tgt.sandbox.status != "running":
        return tgt, False
    mark = TRANSIENT if transient else None
    if await sandbox_power.move_status(engine, tgt.uuid, "running", "paused", paused_state=mark):
        if transient:
            await _pause_holding_calls(engine, tgt)
        return tgt, True
    # Changed under us (paused or stopped meanwhile): judge it afresh.
    return await sandbox_access.target(engine, pool, ctx, sandbox_id, states=("running", "paused")), False


async def _pause_holding_calls(engine: AsyncEngine, tgt: sandbox_access.Target) -> None:
    client = tgt.client()
    req = pb.PauseSandboxRequest(sandbox_id=tgt.sid, resume_after=True)
    try:
        await client.stub.PauseSandbox(req, timeout=PAUSE_TIMEOUT_S)
    except BaseException:
        await asyncio.shield(revert_running(engine, client, tgt.sid, tgt.uuid))
        raise


async def revert_running(engine: AsyncEngine, client: HostClient, sid: str, sb_uuid: uuid.UUID) -> None:
    """Undo the pre-mark after a failed snapshot. The agent pauses a sandbox before it copies
    anything, so it may be paused there now: resume it, and only then say ``running`` — if it
    cannot be resumed, the row stays ``paused``, which is the truth."""
    try:
        await client.stub.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=sid, timeout_sec=-1), timeout=60)
    except AgentError as e:
        if e.rpc_code != "FAILED_PRECONDITION":  # FAILED_PRECONDITION: it was never paused
            log.warning("snapshot failed and the sandbox could not be resumed sandbox=%s: %s", sid, e)
            await settle(engine, sb_uuid, None)  # paused: no longer for its snapshot
            return
    await sandbox_power.move_status(engine, sb_uuid, "paused", "running")
