"""envd's ``GET /envs`` (docs/e2b.md §3.1): the sandbox's environment as a JSON object, which
E2B's code interpreter server reads from inside the sandbox."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from warren import errors
from warren.cp.e2b.envd.call import envd_call
from warren.cp.e2b.errors import e2b_error_for, sandbox_not_found
from warren.cp.services import envd_process as svc


async def get_envs(request: Request) -> Response:
    try:
        call = await envd_call(request)
        env = await svc.sandbox_env(svc.EnvdSandbox(call.state.engine, call.state.pool, call.sandbox))
    except (errors.NotFound, svc.SandboxGone):
        return sandbox_not_found(request.scope["e2b"][0])
    except errors.WarrenError as exc:
        return e2b_error_for(exc)
    return JSONResponse(env)


ROUTES = [Route("/envs", get_envs, methods=["GET"])]
