"""Audit log writes (docs/spec.md §9.1). Best effort: a failed write is logged and never fails the
request that caused it, because the action it describes has already happened.

Every record made inside a request also carries the client's address (``metadata.ip``) and the
request's id (``metadata.request_id``), from ``warren.request_context``; reads are
``services/audit_log.py``."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import clock, ids
from warren.cp.db.tables import audit_logs
from warren.cp.services.context import AuthContext
from warren.request_context import client_ip, request_id

log = logging.getLogger("warren.audit")


def actor_of(ctx: AuthContext | None) -> tuple[str, str, str]:
    """(actor_type, actor_id, actor_name) for an auth context; None is the system."""
    if ctx is None:
        return "system", "", "system"
    if ctx.kind == "sandbox_token" and ctx.only_sandbox is not None:
        return "sandbox_token", ctx.only_sandbox, ctx.only_sandbox
    if ctx.kind == "api_key" and ctx.api_key_id is not None:
        return "api_key", ids.api_key_id(ctx.api_key_id), ctx.api_key_name
    if ctx.user_id is not None:
        return "user", ids.user_id(ctx.user_id), ctx.name or ctx.email
    return "system", "", "system"


# A state-changing call that fails is recorded too (result `warning` for 4xx, `error` for 5xx),
# when its caller authenticated: on the API and the dashboard's actions, except the sandbox data
# plane (commands, files, watchers, terminals, ports: no success record either), sign-in, 429s
# (a flood would only grow the table) and 503s (a busy database must not get more writes).
_CHANGES = ("POST", "PUT", "PATCH", "DELETE")
_AUDITED_PREFIXES = ("/v1/", "/dashboard/actions/")
_NOT_AUDITED = (
    "/v1/auth/",
    "/exec",
    "/processes",
    "/files",
    "/watchers",
    "/pty",
    "/ping",
    "/ports/",
    "/signed",
)
MAX_RESOURCE_ID = 200
# One record's metadata, as JSON (session 14: a sandbox's egress rules went whole into each
# change's record, ~64 KiB a PATCH kept 90 days: at the team rate limit a tenant grew the table
# by GBs an hour). Past it, a value longer than MAX_METADATA_VALUE is replaced by its size (and
# its entry count), keys past the 16th are dropped, and the record keeps the whole metadata's sha256.
MAX_METADATA_BYTES = 4096
MAX_METADATA_VALUE = 256


def audits_failure(method: str, route: str, status: int) -> bool:
    """Whether a call that ended with ``status`` on ``route`` (its template) gets a failure record."""
    if method not in _CHANGES or status < 400 or status in (429, 503):
        return False
    return route.startswith(_AUDITED_PREFIXES) and not any(part in route for part in _NOT_AUDITED)


# Failure records one team writes in a CP process: a burst, then one every FAILURE_EVERY_S
# (session 14: a flood of requests that fail, ``DELETE`` of a sandbox that does not exist, was a
# row a request, at the team rate limit millions a day kept 90 days). Past it they are counted,
# and the team's next failure record says how many it stands for (``suppressed_before``).
FAILURE_BURST = 20
FAILURE_EVERY_S = 6.0
_FAILURE_TEAMS = 4096  # teams whose budget a process remembers; past it, full budgets are forgotten


@dataclass
class _Budget:
    tokens: float
    at: float
    suppressed: int = 0


_failure_budgets: dict[uuid.UUID | None, _Budget] = {}


def _failure_slot(team: uuid.UUID | None) -> int | None:
    """None when the team's failure records are over budget (counted); else how many were left
    out since its last one."""
    now = clock.monotonic()
    b = _failure_budgets.get(team)
    if b is None:
        if len(_failure_budgets) >= _FAILURE_TEAMS:
            _forget_full_budgets(now)
        b = _failure_budgets[team] = _Budget(float(FAILURE_BURST), now)
    b.tokens = min(float(FAILURE_BURST), b.tokens + (now - b.at) / FAILURE_EVERY_S)
    b.at = now
    if b.tokens < 1:
        b.suppressed += 1
        if b.suppressed == 1:
            log.warning("audit: team %s's failed requests past the budget are counted, not recorded", team)
        return None
    b.tokens -= 1
    left_out, b.suppressed = b.suppressed, 0
    return left_out


def _forget_full_budgets(now: float) -> None:
    for team, b in list(_failure_budgets.items()):
        if b.tokens + (now - b.at) / FAILURE_EVERY_S >= FAILURE_BURST and not b.suppressed:
            del _failure_budgets[team]
    if len(_failure_budgets) >= _FAILURE_TEAMS:  # all busy: start over (loses their counts)
        _failure_budgets.clear()


async def record_failure(
    engine: AsyncEngine, ctx: AuthContext, *, method: str, route: str, status: int, resource_id: str
) -> None:
    """The record of a failed change: what was asked (method and route) and the HTTP status,
    within the team's budget of failure records."""
    left_out = _failure_slot(ctx.team_id)
    if left_out is None:
        return
    meta: dict[str, Any] = {"method": method, "route": route, "http_status": status}
    if left_out:
        meta["suppressed_before"] = left_out
    await record(
        engine, ctx, team_id=ctx.team_id, action="failed", resource_type="request",
        resource_id=resource_id[:MAX_RESOURCE_ID], status="error" if status >= 500 else "warning",
        metadata=meta,
    )  # fmt: skip


def bounded_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` itself when its JSON is at most MAX_METADATA_BYTES; else its short values, a
    summary of each long one and the digest of the whole (what was recorded can still be matched
    against a copy kept elsewhere)."""
    text = json.dumps(meta, sort_keys=True, default=str)
    if len(text.encode()) <= MAX_METADATA_BYTES:
        return meta
    out: dict[str, Any] = {}
    for key, value in list(meta.items())[:16]:
        size = len(json.dumps(value, default=str).encode())
        if size <= MAX_METADATA_VALUE and len(str(key)) <= MAX_METADATA_VALUE:
            out[str(key)] = value
        else:
            summary: dict[str, Any] = {"omitted_bytes": size}
            if isinstance(value, list | dict):
                summary["count"] = len(value)
            out[str(key)[:MAX_METADATA_VALUE]] = summary
    raw = text.encode()
    out["metadata_truncated"] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    return out


def request_metadata() -> dict[str, str]:
    """The current request's ``ip`` and ``request_id`` (none outside a request), for audit rows
    written by SQL of their own (``cp/db/queries/sandboxes.py``'s create and destroy)."""
    out: dict[str, str] = {}
    if (ip := client_ip.get()) is not None:
        out["ip"] = ip
    if (rid := request_id.get()) is not None:
        out["request_id"] = rid
    return out


async def record(
    db: AsyncEngine | AsyncConnection,
    ctx: AuthContext | None,
    *,
    team_id: uuid.UUID | None,
    action: str,
    resource_type: str,
    resource_id: str = "",
    scope: Literal["team", "admin"] = "team",
    status: Literal["success", "info", "warning", "error"] = "success",
    metadata: dict[str, Any] | None = None,
) -> None:
    actor_type, actor_id, actor_name = actor_of(ctx)
    meta = bounded_metadata({**request_metadata(), **(metadata or {})})
    stmt = audit_logs.insert().values(
        id=ids.new_uuid(),
        team_id=team_id,
        actor_type=actor_type,
        actor_id=actor_id,
        actor_name=actor_name,
        resource_type=resource_type,
        resource_id=resource_id,
        action=action,
        scope=scope,
        status=status,
        metadata=meta,
        created_at=clock.now(),
    )
    try:
        if isinstance(db, AsyncConnection):
            # Inside the caller's transaction: a savepoint keeps a failed insert from poisoning it.
            async with db.begin_nested():
                await db.execute(stmt)
        else:
            async with db.begin() as conn:
                await conn.execute(stmt)
    except Exception:
        log.exception(
            "audit write failed: action=%s resource=%s/%s team=%s",
            action,
            resource_type,
            resource_id,
            team_id,
        )
