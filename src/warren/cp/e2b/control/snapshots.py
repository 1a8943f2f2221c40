"""E2B's snapshot routes (docs/e2b.md §2): thin translations to ``services/e2b_snapshots.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.responses import JSONResponse, Response

from warren.cp.e2b.control import models
from warren.cp.services import e2b_snapshots, sandbox_list
from warren.errors import InvalidRequest

if TYPE_CHECKING:
    from warren.cp.e2b.control.app import Call


async def create(call: Call) -> Response:
    body = await call.body()  # memory: Warren's snapshots are of the filesystem (docs/e2b.md §6)
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidRequest("name must be a string")
    s = call.state
    made = await e2b_snapshots.create(
        s.engine, s.pool, call.ctx, call.sandbox_id, name, settings=s.settings, store=s.store
    )
    return JSONResponse(models.snapshot(made), status_code=201)


async def list_(call: Call) -> Response:
    page = await e2b_snapshots.list_page(
        call.state.engine,
        call.ctx,
        sandbox_id=call.query("sandboxID") or "",
        name=call.query("name") or "",
        limit=sandbox_list.parse_limit(call.query("limit")),
        cursor=call.query("nextToken") or "",
    )
    headers = {"x-next-token": page.next_token} if page.next_token else {}
    return JSONResponse([models.snapshot(n) for n in page.names], headers=headers)


async def delete(call: Call) -> Response:
    template_id = str(call.request.path_params["template_id"])
    await e2b_snapshots.delete(call.state.engine, call.state.pool, call.ctx, template_id)
    return Response(status_code=204)
