"""Plumbing shared by the dashboard's pages and actions: templates, the signed-in viewer,
CSRF-checked action contexts and response helpers.

Authentication is the REST API's own :func:`warren.cp.services.authn.authenticate`, on the user
JWT held in the session cookie, so the dashboard re-checks the user, the membership and the
team's ``deleted_at`` in the database on every request exactly as the API does. Like the API's
team-finding routes it runs with ``allow_teamless``: a user whose team was deleted (or who left
it) stays signed in with no active team and can still switch to or create one.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import HTTPConnection

from warren import ids
from warren.config import Settings
from warren.cp.dashboard import csrf, format
from warren.cp.dashboard import session as sessions
from warren.cp.dashboard.session import Session
from warren.cp.security.credentials import Credentials
from warren.cp.services import teams as teams_svc
from warren.cp.services.context import AuthContext
from warren.cp.services.teams import TeamWithRole
from warren.cp.state import AppState, state_of
from warren.errors import Forbidden, Unauthorized

log = logging.getLogger("warren.dashboard")

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"

env = Environment(
    loader=FileSystemLoader(str(HERE / "templates")),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters.update(format.FILTERS)
env.globals["host_specs"] = format.host_specs


# The static files a page names with ``?v={{ asset_version }}``: a change to any gives new URLs.
VERSIONED_ASSETS = (
    "app.css",
    "app.js",
    "build_log.js",
    "terminal.js",
    "vendor/xterm/xterm.js",
    "vendor/xterm/xterm.css",
    "vendor/xterm/addon-fit.js",
)


def _asset_version() -> str:
    h = hashlib.sha256()
    for name in VERSIONED_ASSETS:
        p = STATIC_DIR / name
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()[:10]


ASSET_VERSION = _asset_version()


def content_security_policy(nonce: str | None) -> str:
    """Everything a page loads comes from the control plane itself and nothing inline runs.
    Scripts and stylesheets run only from the page's own tags, each carrying this response's
    ``nonce`` (None: none at all): ``'self'`` also admits path-routed previews, a tenant's
    server on the control plane's own origin (``/v1/sandboxes/{id}/ports/{port}/…``), so markup
    injected into a page could have run a sandbox's script as the viewer (session 26)."""
    own = f"'nonce-{nonce}'" if nonce else "'none'"
    return (
        f"default-src 'self'; script-src {own}; style-src {own}; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'; worker-src 'none'"
    )


SECURITY_HEADERS = {
    "Content-Security-Policy": content_security_policy(None),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Viewer:
    """The signed-in user as this request sees them, verified against the database."""

    session: Session
    ctx: AuthContext
    teams: list[TeamWithRole]

    @property
    def team(self) -> TeamWithRole | None:
        if self.ctx.team_id is None:
            return None
        tid = ids.team_id(self.ctx.team_id)
        return next((t for t in self.teams if t.id == tid), None)

    @property
    def role(self) -> str:
        return self.ctx.role or ""

    @property
    def look_alike_team_ids(self) -> set[str]:
        """Teams whose names the switcher would draw like another of the viewer's teams. Anyone
        who owns a team can add any registered user to it, under any name: a team named like
        the victim's own must not pass for it, so these show their id's tail."""
        keys = Counter(format.look_alike_key(t.name) for t in self.teams)
        return {t.id for t in self.teams if keys[format.look_alike_key(t.name)] > 1}

    @property
    def is_manager(self) -> bool:
        return self.ctx.is_manager

    @property
    def is_admin(self) -> bool:
        return self.ctx.is_admin

    @property
    def name(self) -> str:
        return self.ctx.name

    @property
    def email(self) -> str:
        return self.ctx.email

    @property
    def display_name(self) -> str:
        """SEED: the sidebar shows the user's name, falling back to their email."""
        return self.ctx.name.strip() or self.ctx.email


async def session_auth(request: HTTPConnection) -> tuple[Session, AuthContext] | None:
    """The session and a DB-verified auth context, or None when nobody is signed in. Each call
    takes a token from the team's request rate, as a REST call does (TooManyRequests past it:
    the error page, or the terminal's refused handshake)."""
    state = state_of(request)
    settings = state.settings
    sess = sessions.read(request, settings.jwt_secret)
    if sess is None or sess.token is None:
        return None
    try:
        ctx = await state.gate.admit(Credentials(bearer=sess.token), require_user=True, allow_teamless=True)
    except (Unauthorized, Forbidden):
        return None
    return sess, replace(ctx, kind="session")


async def load_viewer(request: Request) -> Viewer | None:
    found = await session_auth(request)
    if found is None:
        return None
    sess, ctx = found
    teams = await teams_svc.list_teams(state_of(request).engine, ctx)
    return Viewer(session=sess, ctx=ctx, teams=teams)


def apply_security_headers(response: Response) -> Response:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    return response


def _page(html: str, nonce: str, status_code: int = 200) -> HTMLResponse:
    """A page whose own scripts and stylesheets carry ``nonce``, with the dashboard's headers."""
    resp = HTMLResponse(html, status_code=status_code)
    resp.headers["Content-Security-Policy"] = content_security_policy(nonce)
    apply_security_headers(resp)
    return resp


def with_page_nonce(html: str) -> HTMLResponse:
    """A page made elsewhere (the API's Swagger UI, on the dashboard's origin), its scripts and
    stylesheets given a nonce and the dashboard's policy and headers."""
    nonce = secrets.token_urlsafe(18)
    html = html.replace("<script", f'<script nonce="{nonce}"').replace(
        'rel="stylesheet"', f'rel="stylesheet" nonce="{nonce}"'
    )
    return _page(html, nonce)


def render(
    request: Request,
    template: str,
    *,
    viewer: Viewer | None = None,
    csrf_token: str | None = None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    token = csrf_token or (viewer.session.csrf if viewer else "")
    nonce = secrets.token_urlsafe(18)
    html = env.get_template(template).render(
        request=request,
        viewer=viewer,
        csrf=token,
        asset_version=ASSET_VERSION,
        csp_nonce=nonce,
        **context,
    )
    return _page(html, nonce, status_code)


def to_login(request: Request) -> RedirectResponse:
    resp = RedirectResponse("/login", status_code=303)
    if request.cookies.get(sessions.COOKIE_NAME):
        sessions.clear(resp, request)
    return resp


def error_page(request: Request, viewer: Viewer | None, status_code: int, message: str) -> HTMLResponse:
    return render(
        request,
        "error.html",
        viewer=viewer,
        status_code=status_code,
        title="Error" if status_code != 404 else "Not found",
        page="error",
        nav="",
        code=status_code,
        message=message or "Something went wrong",
    )


def bare_error_page(request: Request, status_code: int, message: str) -> HTMLResponse:
    """The error page without the signed-in frame, for errors the app's handlers answer (an
    overloaded database, an unknown page): it must not need the database itself."""
    return error_page(request, None, status_code, message)


# ------------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Action:
    """A CSRF-checked, signed-in request to a dashboard action endpoint."""

    request: Request
    session: Session
    ctx: AuthContext

    @property
    def state(self) -> AppState:
        return state_of(self.request)

    @property
    def engine(self) -> AsyncEngine:
        return self.state.engine

    @property
    def settings(self) -> Settings:
        return self.state.settings


async def check_csrf(request: Request) -> Session | None:
    """Run both CSRF checks for an unsafe request; a failure is a 403 ``csrf_failed``."""
    settings = state_of(request).settings
    sess = sessions.read(request, settings.jwt_secret)
    try:
        await csrf.verify(request, sess, settings.public_url)
    except csrf.CsrfError as e:
        log.warning("dashboard: refused %s %s: %s", request.method, request.url.path, e)
        raise Forbidden("cross-site request refused", code="csrf_failed") from e
    return sess


async def action_context(request: Request) -> Action:
    """FastAPI dependency for every dashboard action: CSRF first, then the DB-checked user."""
    await check_csrf(request)
    found = await session_auth(request)
    if found is None:
        raise Unauthorized("your session has ended; sign in again")
    sess, ctx = found
    return Action(request=request, session=sess, ctx=ctx)


async def reader_context(request: Request) -> Action:
    """For the dashboard's read-only JSON/fragment endpoints (GET): signed-in user only."""
    found = await session_auth(request)
    if found is None:
        raise Unauthorized("your session has ended; sign in again")
    sess, ctx = found
    return Action(request=request, session=sess, ctx=ctx)
