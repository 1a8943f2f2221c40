"""Sign in, sign up, sign out and the GitHub sign-in landing page (docs/spec.md §8.1, §8.3).

These are plain HTML forms (they work without JavaScript), CSRF-protected like every other
state-changing request: the login form carries the anonymous session's token. A successful
login, signup or OAuth sign-in replaces the whole session (SEED: every login starts from a clean
team list; the team list itself is always read fresh from the database).
"""

from __future__ import annotations

import math
from typing import Annotated
from urllib.parse import unquote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from warren.cp.dashboard import csrf
from warren.cp.dashboard import session as sessions
from warren.cp.dashboard.web import (
    apply_security_headers,
    check_csrf,
    render,
    session_auth,
)
from warren.cp.security.credentials import Credentials
from warren.cp.services import auth as auth_svc
from warren.cp.services import email_verification
from warren.cp.services import oauth as oauth_svc
from warren.cp.services.authn import authenticate
from warren.cp.services.context import AuthContext
from warren.cp.state import sign_in_attempt, state_of
from warren.errors import Forbidden, InvalidRequest, TooManyRequests, Unauthorized, WarrenError

router = APIRouter(include_in_schema=False)

HOME = "/dashboard/sandboxes"
# Where a sign-in with no live team lands: the user's invitations and "create a team".
WELCOME = "/dashboard/welcome"

# ``?error=`` codes from the OAuth callback (docs/spec.md §2.1) and the landing page, in words.
OAUTH_ERRORS = {
    "access_denied": "GitHub sign-in was cancelled.",
    "invalid_state": "The GitHub sign-in expired or did not match this browser. Please try again.",
    "missing_code": "GitHub did not return an authorization code. Please try again.",
    "exchange_failed": "Could not complete sign-in with GitHub. Please try again.",
    "email_taken": "An account with this email already exists. Sign in with your password instead.",
    "invalid_email": "Your GitHub email is not accepted here (invisible characters or mixed scripts).",
    "db_error": "Sign-in failed because of a server error. Please try again.",
    "internal_error": "Something went wrong",
    "missing_token": "GitHub sign-in did not complete. Please try again.",
    "session_expired": "Your session has ended. Please sign in again.",
}


def _login_page(
    request: Request,
    sess: sessions.Session,
    *,
    mode: str,
    error: str | None = None,
    email: str = "",
    name: str = "",
    status_code: int = 200,
    write_cookie: bool = False,
) -> HTMLResponse:
    resp = render(
        request,
        "login.html",
        csrf_token=sess.csrf,
        status_code=status_code,
        mode="signup" if mode == "signup" else "login",
        error=error,
        form={"email": email, "name": name},
    )
    if write_cookie:
        sessions.write(resp, request, state_of(request).settings.jwt_secret, sess)
    return resp


def _home_of(found: tuple[sessions.Session, AuthContext]) -> str:
    """Where a signed-in visitor goes: their team's sandboxes, or the teamless landing page."""
    return HOME if found[1].team_id is not None else WELCOME


@router.get("/")
async def root(request: Request) -> Response:
    found = await session_auth(request)
    if found is not None:
        return RedirectResponse(_home_of(found), status_code=303)
    return RedirectResponse("/login", status_code=303)


@router.get("/dashboard")
async def dashboard_root() -> Response:
    return RedirectResponse(HOME, status_code=303)


@router.get("/login")
async def login_page(request: Request, mode: str = "login", error: str | None = None) -> Response:
    found = await session_auth(request)
    if found is not None:
        return RedirectResponse(_home_of(found), status_code=303)
    secret = state_of(request).settings.jwt_secret
    sess = sessions.read(request, secret)
    fresh = sess is None or sess.signed_in
    if sess is None or sess.signed_in:
        sess = sessions.anonymous()
    message = OAUTH_ERRORS.get(error or "", "Something went wrong") if error else None
    return _login_page(request, sess, mode=mode, error=message, write_cookie=fresh)


@router.post("/login")
async def login_submit(
    request: Request,
    mode: Annotated[str, Form()] = "login",
    email: Annotated[str, Form(max_length=1024)] = "",
    password: Annotated[str, Form(max_length=4096)] = "",
    name: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    try:
        await check_csrf(request)
    except Forbidden:
        # A stale tab (its anonymous session expired) fails the token check but passes the Origin
        # check; give it a fresh form. A cross-site post gets a plain refusal.
        try:
            csrf.check_origin(request, state_of(request).settings.public_url)
        except csrf.CsrfError:
            return apply_security_headers(
                HTMLResponse("Cross-site request refused.", status_code=403, media_type="text/plain")
            )
        return _login_page(
            request,
            sessions.anonymous(),
            mode=mode,
            error="Your sign-in form expired. Please try again.",
            email=email,
            name=name,
            status_code=403,
            write_cookie=True,
        )

    engine = state_of(request).engine
    secret = state_of(request).settings.jwt_secret
    sess = sessions.read(request, secret) or sessions.anonymous()
    # The same sign-in rate limits as the API's routes: the form is another door to them.
    attempt = sign_in_attempt(request)
    try:
        if mode == "signup":
            result = await auth_svc.signup(
                engine, secret, email=email, password=password, name=name, attempt=attempt,
                settings=state_of(request).settings,
            )  # fmt: skip
        else:
            result = await auth_svc.login(engine, secret, email=email, password=password, attempt=attempt)
    except WarrenError as e:
        status = 409 if e.code == "email_taken" else 401 if isinstance(e, Unauthorized) else 400
        if isinstance(e, Forbidden):
            status = 403
        if isinstance(e, TooManyRequests):
            status = 429
        page = _login_page(
            request, sess, mode=mode, error=e.message, email=email, name=name, status_code=status
        )
        if isinstance(e, TooManyRequests) and e.retry_after is not None:
            page.headers["Retry-After"] = str(max(1, math.ceil(e.retry_after)))
        return page
    resp = RedirectResponse(HOME if result.team_id else WELCOME, status_code=303)
    sessions.write(resp, request, secret, sessions.for_login(result.token))
    return resp


@router.post("/logout")
async def logout(request: Request) -> Response:
    try:
        await check_csrf(request)
    except Forbidden:
        return apply_security_headers(
            HTMLResponse("Cross-site request refused.", status_code=403, media_type="text/plain")
        )
    resp = RedirectResponse("/login", status_code=303)
    # Not just cleared: replaced by a fresh anonymous session, so nothing of the old one remains.
    sessions.write(resp, request, state_of(request).settings.jwt_secret, sessions.anonymous())
    return resp


@router.get("/auth/{provider}/callback")
async def oauth_landing(request: Request, provider: str, error: str | None = None) -> Response:
    """Where the OAuth callback sends the browser (docs/spec.md §8.3): turn the short-lived
    ``warren_oauth_*`` cookies into a dashboard session, or show the error on the login page."""
    names = ("token", "user_id", "team_id", "email", "name")

    def clear_oauth_cookies(resp: Response) -> Response:
        for n in names:
            resp.delete_cookie(oauth_svc.RESULT_COOKIE_PREFIX + n, path=oauth_svc.RESULT_COOKIE_PATH)
        for secure in (True, False):
            resp.delete_cookie(oauth_svc.bind_cookie_name(secure), path="/", secure=secure)
        return resp

    if provider not in oauth_svc.PROVIDERS:
        return clear_oauth_cookies(RedirectResponse("/login?error=internal_error", status_code=303))
    if error:
        code = error if error in OAUTH_ERRORS else "internal_error"
        return clear_oauth_cookies(RedirectResponse(f"/login?error={code}", status_code=303))
    raw = request.cookies.get(oauth_svc.RESULT_COOKIE_PREFIX + "token")
    if not raw:
        return clear_oauth_cookies(RedirectResponse("/login?error=missing_token", status_code=303))
    token = unquote(raw)
    settings = state_of(request).settings
    bind = request.cookies.get(oauth_svc.bind_cookie_name(True)) or request.cookies.get(
        oauth_svc.bind_cookie_name(False)
    )
    if not oauth_svc.landing_bound(settings.jwt_secret or "", token, bind):
        # A token this browser's own flow did not receive (planted by a sibling host): nobody
        # is signed in by it.
        return clear_oauth_cookies(RedirectResponse("/login?error=missing_token", status_code=303))
    try:
        # The cookie is only a carrier: the token must be a valid JWT for a live user.
        ctx = await authenticate(
            state_of(request).engine,
            Credentials(bearer=token),
            require_user=True,
            jwt_secret=settings.jwt_secret,
            allow_teamless=True,
        )
    except (Unauthorized, Forbidden):
        return clear_oauth_cookies(RedirectResponse("/login?error=missing_token", status_code=303))
    resp = RedirectResponse(HOME if ctx.team_id else WELCOME, status_code=303)
    sessions.write(resp, request, settings.jwt_secret, sessions.for_login(token))
    return clear_oauth_cookies(resp)


@router.get("/verify-email")
async def verify_email(request: Request, token: str = "") -> Response:
    """A verification email's link (docs/auth.md "Verified emails"): the account is verified
    once; an expired, used or foreign link says so. No session needed: the link is the proof."""
    state = state_of(request)
    try:
        email = await email_verification.verify(state.engine, state.settings, token[:256])
    except InvalidRequest as e:
        return render(request, "verify_email.html", title="Verification failed", ok=False,
                      message=e.message, status_code=400)  # fmt: skip
    message = f"{email} is verified: you can now accept team invitations."
    return render(request, "verify_email.html", title="Email verified", ok=True, message=message)
