"""GitHub OAuth routes (docs/spec.md §2.1; docs/design.md §4 mounts them under /v1)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse

from warren.cp.api.deps import Db, SettingsDep, sign_in_attempt
from warren.cp.http_errors import error_responses
from warren.cp.services import oauth as oauth_service
from warren.cp.services import rate_limits

router = APIRouter(prefix="/v1/auth/oauth", tags=["auth"])


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


def _redirect(result: oauth_service.OAuthRedirect) -> RedirectResponse:
    resp = RedirectResponse(result.location, status_code=302)
    for name, path in result.expire:
        resp.delete_cookie(name, path=path)
    for c in result.cookies:
        resp.set_cookie(
            c.name,
            c.value,
            max_age=c.max_age,
            path=c.path,
            httponly=c.httponly,
            secure=c.secure,
            samesite="lax",
        )
    return resp


_REDIRECT: dict[int | str, dict[str, Any]] = {
    302: {"description": "Redirect (to the provider, or back to the dashboard)"}
}


@router.get(
    "/{provider}",
    status_code=302,
    response_class=RedirectResponse,
    responses={**_REDIRECT, **error_responses(404)},
)
async def oauth_start(provider: str, request: Request, settings: SettingsDep) -> RedirectResponse:
    """Start sign-in with a provider (only `github`): sets the signed state cookie."""
    return _redirect(oauth_service.begin(settings, provider, secure=_secure(request)))


@router.get(
    "/{provider}/callback",
    status_code=302,
    response_class=RedirectResponse,
    responses={**_REDIRECT, **error_responses(404, 429)},
)
async def oauth_callback(
    provider: str,
    request: Request,
    engine: Db,
    settings: SettingsDep,
    code: Annotated[str | None, Query(max_length=4096)] = None,
    state: Annotated[str | None, Query(max_length=512)] = None,
    error: Annotated[str | None, Query(max_length=512)] = None,
) -> RedirectResponse:
    """The provider's redirect back. Redirects to the dashboard's callback page, unless the client
    address is past its sign-in rate limit (429): each callback costs calls to the provider."""
    await rate_limits.count_sign_in(engine, sign_in_attempt(request))
    result = await oauth_service.complete(
        engine,
        settings,
        provider,
        code=code,
        state=state,
        error=error,
        state_cookie=request.cookies.get(oauth_service.STATE_COOKIE),
        secure=_secure(request),
    )
    return _redirect(result)
