"""``TeamContext`` in one dependency resolution, for the routes on every create and every command
(``POST /v1/sandboxes``, ``POST /v1/sandboxes/{id}/exec``; issue 17, a cheaper create).

``deps.team_context`` declares the two credential schemes as dependencies of its own so that
FastAPI writes them into the OpenAPI document; FastAPI then resolves three dependencies per
request, ~80 Python calls each beyond the work they do. Here the same schemes are called
directly (their exact header rules, the same ``team_context`` after them), and the operation
states the security FastAPI would have derived (:data:`TEAM_SECURITY`, in ``openapi_extra``;
``tests/unit/cp/api/test_hot_auth.py`` checks it is what a ``TeamContext`` route gets).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from warren.cp.api.deps import _api_key_scheme, _bearer_scheme, team_context
from warren.cp.services.context import AuthContext


async def team_context_direct(request: Request) -> AuthContext:
    """What ``TeamContext`` resolves to, the schemes called in its place (bearer, then key)."""
    overrides = request.app.dependency_overrides
    if overrides and team_context in overrides:
        # ``dependency_overrides[team_context]`` replaces it here too, as on every TeamContext
        # route (tests give a context that way); the override takes no parameters.
        return await overrides[team_context]()  # type: ignore[no-any-return]
    bearer = await _bearer_scheme(request)
    api_key = await _api_key_scheme(request)
    return await team_context(request, bearer, api_key)


TeamContextDirect = Annotated[AuthContext, Depends(team_context_direct)]

# The operation's security as FastAPI writes it for a TeamContext route (the schemes' names).
TEAM_SECURITY: dict[str, Any] = {"security": [{"HTTPBearer": []}, {"APIKeyHeader": []}]}
