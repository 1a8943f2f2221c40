"""E2B's sandbox routes (docs/e2b.md §2): thin translations to ``cp/services``."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from warren.cp.e2b.control import models
from warren.cp.services import e2b_sandboxes, envd_rotation, lifetimes, sandbox_list, sandbox_network
from warren.errors import InvalidRequest

if TYPE_CHECKING:
    from warren.cp.e2b.control.app import Call

V2_DEFAULT_TIMEOUT_S = 300  # NewSandboxV2's default
V1_DEFAULT_TIMEOUT_S = 15  # NewSandbox's (older SDKs)
CONNECT_DEFAULT_TIMEOUT_S = 300  # ConnectSandbox's


async def _create(call: Call, default_timeout: int) -> Response:
    req = models.new_sandbox(await call.body(), default_timeout=default_timeout)
    s = call.state
    view = await e2b_sandboxes.create(
        s.engine, s.pool, s.scheduler, call.ctx, req, settings=s.settings, store=s.store
    )
    token = None if req.public_traffic else view.traffic_token
    # The envd token at the epoch the create finished with (a member removed meanwhile bumped
    # it), and none for a caller whose own key was revoked meanwhile (401).
    epoch = await envd_rotation.created_epoch(s.engine, call.ctx, view.id)
    body = models.created(
        sandbox_id=view.id, template=view.template, settings=s.settings, traffic_token=token,
        token_epoch=epoch,
    )  # fmt: skip
    return JSONResponse(body, status_code=201)


async def create_v2(call: Call) -> Response:
    return await _create(call, V2_DEFAULT_TIMEOUT_S)


async def create_v1(call: Call) -> Response:
    return await _create(call, V1_DEFAULT_TIMEOUT_S)


def _started_after(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as e:
        raise InvalidRequest("startedAfter must be an RFC 3339 time") from e
    return sandbox_list.in_utc(at, "startedAfter")


def _query(call: Call, *, states: tuple[str, ...] | None = None) -> sandbox_list.ListQuery:
    order = call.query("order") or "desc"
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be asc or desc")
    return sandbox_list.ListQuery(
        metadata=sandbox_list.parse_metadata_filter(call.query("metadata")),
        states=states or sandbox_list.parse_states(call.request.query_params.getlist("state")),
        template=call.query("template") or "",
        started_after=_started_after(call.query("startedAfter")),
        order="asc" if order == "asc" else "desc",
        limit=sandbox_list.parse_limit(call.query("limit")),
        cursor=call.query("nextToken") or "",
    )


async def list_v2(call: Call) -> Response:
    page = await sandbox_list.list_page(call.state.engine, call.ctx, _query(call))
    headers = {"x-next-token": page.next_token} if page.next_token else {}
    return JSONResponse([models.listed(dict(r)) for r in page.rows], headers=headers)


async def list_v1(call: Call) -> Response:
    """Older SDKs' list: every running sandbox matching ``metadata``, unpaginated (the team's
    sandbox quota bounds it)."""
    query = _query(call, states=("running",))
    out: list[dict[str, Any]] = []
    while True:
        page = await sandbox_list.list_page(call.state.engine, call.ctx, query)
        out += [models.listed(dict(r)) for r in page.rows]
        if page.next_token is None:
            return JSONResponse(out)
        query = sandbox_list.ListQuery(**{**query.__dict__, "cursor": page.next_token})


async def get(call: Call) -> Response:
    found = await lifetimes.live(call.state.engine, call.ctx, call.sandbox_id)
    return JSONResponse(models.detail(dict(found.row), call.state.settings))


async def kill(call: Call) -> Response:
    await e2b_sandboxes.kill(call.state.engine, call.state.pool, call.ctx, call.sandbox_id)
    return Response(status_code=204)


async def set_timeout(call: Call) -> Response:
    seconds = models.timeout_of(await call.body())
    await lifetimes.set_timeout(
        call.state.engine, call.ctx, call.sandbox_id, seconds, settings=call.state.settings
    )
    return Response(status_code=204)


async def pause(call: Call) -> Response:
    await call.body()  # memory / requireHealthyGuest: Warren's pause always keeps memory
    await e2b_sandboxes.pause(call.state.engine, call.state.pool, call.ctx, call.sandbox_id)
    return Response(status_code=204)


async def _connected(call: Call, c: lifetimes.Connected) -> Response:
    # A resume can take seconds: the token is read after it, and not handed to a caller whose
    # own credentials were revoked meanwhile (as create, envd_rotation.created_epoch).
    epoch = await envd_rotation.created_epoch(call.state.engine, call.ctx, call.sandbox_id)
    body = models.created(
        sandbox_id=call.sandbox_id,
        template=c.row["template"],
        settings=call.state.settings,
        traffic_token=None,
        token_epoch=epoch,
    )
    return JSONResponse(body, status_code=201 if c.resumed else 200)


async def connect(call: Call) -> Response:
    seconds = models.timeout_of(await call.body(), CONNECT_DEFAULT_TIMEOUT_S)
    s = call.state
    c = await lifetimes.connect(s.engine, s.pool, call.ctx, call.sandbox_id, seconds, settings=s.settings)
    return await _connected(call, c)


async def resume(call: Call) -> Response:
    """Older SDKs' resume: 201 with the sandbox, 409 when it is running."""
    body = await call.body()
    seconds = models.timeout_of(body, V1_DEFAULT_TIMEOUT_S)
    s = call.state
    c = await lifetimes.resume(s.engine, s.pool, call.ctx, call.sandbox_id, seconds, settings=s.settings)
    return await _connected(call, c)


async def metrics(call: Call) -> Response:
    s = call.state
    w = await e2b_sandboxes.metrics_window(
        s.engine, s.pool, call.ctx, call.sandbox_id, call.query("start"), call.query("end")
    )
    sb = w.sandbox
    return JSONResponse([models.metric(p, sb.vcpus, sb.memory_mb, sb.disk_size_mb) for p in w.points])


async def update_network(call: Call) -> Response:
    """E2B's network update onto Warren's egress rules (E2B's semantics), replaced whole."""
    allow_out, deny_out = models.network_update(await call.body())
    s = call.state
    await sandbox_network.update_network(s.engine, s.pool, call.ctx, call.sandbox_id, allow_out, deny_out)
    return Response(status_code=204)
