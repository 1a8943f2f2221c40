"""E2B's fork route (docs/e2b.md §5.1): a thin translation to ``services/e2b_forks.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from warren.cp.e2b.control import models
from warren.cp.http_errors import status_and_code
from warren.cp.services import e2b_forks, envd_rotation

if TYPE_CHECKING:
    from warren.cp.e2b.control.app import Call


async def fork(call: Call) -> Response:
    """201 with one ``SandboxForkResult`` per fork (E2B's SDK reads a 201 only); a request
    refused before any fork (404, 409, the snapshot's 429) is an ordinary error answer."""
    req = models.fork_request(await call.body())
    s = call.state
    forks = await e2b_forks.fork(
        s.engine, s.pool, s.scheduler, call.ctx, call.sandbox_id, req,
        settings=s.settings, store=s.store, limiter=s.team_limiter,
    )  # fmt: skip
    out: list[dict[str, Any]] = []
    for f in forks:
        if f.view is None:
            error = f.error
            status = status_and_code(error)[0] if error is not None else 500
            out.append({"error": {"code": status, "message": error.message if error else "fork failed"}})
            continue
        token = None if f.public else f.view.traffic_token
        epoch = await envd_rotation.created_epoch(s.engine, call.ctx, f.view.id)
        body = models.created(
            sandbox_id=f.view.id, template=f.view.template, settings=s.settings, traffic_token=token,
            token_epoch=epoch,
        )  # fmt: skip
        out.append({"sandbox": body})
    return JSONResponse(out, status_code=201)
