"""Browser tests: Playwright driving Debian's headless Chromium against a live control plane —
the real app served by uvicorn on a free loopback port, on a real PostgreSQL database.

Everything runs on pytest-asyncio's session event loop: the CP is a uvicorn task on that loop
(so tests can call services and SQL on the app's own engine), and the tests use Playwright's
async API. (Playwright's sync API would install its own running loop in the main thread, which
breaks async fixtures such as ``db_url``.)

Every page a test opens goes through :class:`Web`: it records every request the browser makes
and, when the test ends, asserts that each one went to the control plane's own origin (nothing
from a CDN or anywhere else) and that no page raised a JavaScript error.
``web.shot(page, name)`` saves a screenshot under ``tests/output/screenshots/`` (gitignored).
A failed test's report also shows what its pages saw (requests that failed, answers of 400 and
above, console errors, navigations: ``Web.seen``), and each open page is saved as a screenshot:
a failure under CI's load otherwise leaves only the assertion's text to explain it.
``web.signed_in_page(account)`` opens a page already signed in: the session cookie comes from the
dashboard's own login route (posted without a browser) and is set on the page's context; the tests
of the login form itself drive it with ``web.login(page, account)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Frame,
    Page,
    Playwright,
    Request,
    Response,
    async_playwright,
    expect,
)
from starlette.types import ASGIApp

from tests.harness.agent import AgentProcess
from tests.harness.browser_net import BrowserNet
from tests.harness.cp import JWT_SECRET, InProcessCP
from tests.harness.invitations import join_team_async, verification_path
from tests.harness.machine import free_port, scratch_dir
from warren import ids
from warren.cli.admin import set_admin
from warren.cp.dashboard import session as sessions
from warren.cp.security.tokens import issue_user_jwt
from warren.cp.services import auth as auth_svc
from warren.cp.services import hosts as hosts_svc
from warren.cp.services import teams as teams_svc
from warren.cp.services.context import AuthContext

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PASSWORD = "correct-horse-battery"
HOME = "/dashboard/sandboxes"  # where a sign-in with a team lands
SCREENSHOTS = Path(__file__).resolve().parents[1] / "output" / "screenshots"

# Generous: CI runs these next to other suites on two shared cores (the page's server shares the
# test's event loop, and a busy machine slows both); as long as an action's default timeout.
expect.set_options(timeout=45_000)


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


@dataclass
class Account:
    email: str
    name: str
    user_id: str
    team_id: str
    password: str = PASSWORD

    @property
    def user_uuid(self) -> uuid.UUID:
        return ids.parse_id(ids.Kind.USER, self.user_id)

    @property
    def team_uuid(self) -> uuid.UUID:
        return ids.parse_id(ids.Kind.TEAM, self.team_id)


class LiveCP(InProcessCP):
    """The real control plane served on the test event loop (no background workers), with the
    account helpers the browser tests need, built on the services the API and dashboard use."""

    def __init__(self, db_url: str, home: Path, **overrides: Any) -> None:
        super().__init__(db_url, home, run_workers=False, **overrides)

    # -- helpers built on the services (the same ones the API and dashboard use) ----------
    async def signup(  # type: ignore[override]  # an Account made by the service, not a JWT User
        self, name: str = "Test User", email: str | None = None, password: str = PASSWORD
    ) -> Account:
        email = email or unique_email()
        result = await auth_svc.signup(self.engine, JWT_SECRET, email=email, password=password, name=name)
        # The link a verification email would bring (only a verified email accepts invitations).
        r = await self.http.get(verification_path(JWT_SECRET, result.user_id, result.email))
        assert r.status_code == 200, r.text
        assert result.team_id is not None  # a signup makes the account's first team
        return Account(
            email=email, name=name, user_id=result.user_id, team_id=result.team_id, password=password
        )

    def ctx(self, account: Account, team_id: str | None = None, role: str = "owner") -> AuthContext:
        team = ids.parse_id(ids.Kind.TEAM, team_id or account.team_id)
        return AuthContext(
            kind="jwt",
            team_id=team,
            user_id=account.user_uuid,
            email=account.email,
            name=account.name,
            role=role,
        )

    async def make_admin(self, account: Account) -> None:
        """What an operator does with ``warren admin grant EMAIL``."""
        assert self.settings.database_url
        assert await set_admin(self.settings.database_url, account.email, True)

    async def enable_byoc(self, team_id: str) -> None:
        admin = AuthContext(kind="jwt", team_id=None, is_admin=True)
        await teams_svc.set_byoc(self.engine, admin, ids.parse_id(ids.Kind.TEAM, team_id), True)

    async def create_team(self, account: Account, name: str) -> str:
        team = await teams_svc.create_team(self.engine, self.settings, self.ctx(account), name)
        return team.id

    def token(self, account: Account, team_id: str | None = None) -> str:
        """A JWT of ``account`` for ``team_id`` (its own team when None), as sign-in issues; the
        CP reads the role and the membership from the database, never from it."""
        team = ids.parse_id(ids.Kind.TEAM, team_id or account.team_id)
        return issue_user_jwt(
            JWT_SECRET, user_id=account.user_uuid, team_id=team, role="member", email=account.email,
            name=account.name,
        )  # fmt: skip

    async def add_member(self, owner: Account, team_id: str, member: Account) -> None:
        """``owner`` invites ``member``, who accepts (tests/harness/invitations.py)."""
        inviter, invitee = self.token(owner, team_id), self.token(member)
        await join_team_async(self.http, team_id, member.email, inviter=inviter, invitee=invitee)


@pytest.fixture(scope="module")
async def live(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveCP]:
    server = await LiveCP(db_url, Path(tmp_path_factory.mktemp("cp-home"))).start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def online_agent(live: LiveCP, ip: str, scratch: str) -> AsyncIterator[AgentProcess]:
    """A real agent on ``ip``, registered as a platform host (one-time token, by a platform
    admin) and online before it is yielded; afterwards its sandboxes destroyed, the agent
    stopped and its directory removed."""
    operator = await live.signup("Platform Operator")
    await live.make_admin(operator)
    admin = AuthContext(kind="jwt", team_id=None, user_id=operator.user_uuid, is_admin=True)
    created = await hosts_svc.create_host(live.engine, admin, type="regular")
    run_dir = scratch_dir(scratch)
    proc = AgentProcess.registered(ip, run_dir / "data", live.url, port=free_port(ip))
    await proc.astart(created.registration_token)
    try:
        host_uuid = ids.parse_id(ids.Kind.HOST, created.host.id)
        for _ in range(600):
            rows = await live.sql("SELECT status FROM hosts WHERE id = :id", id=host_uuid)
            if rows and rows[0][0] == "online":
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"agent did not come online:\n{proc.log_tail()}")
        yield proc
    finally:
        # A plain stop keeps its sandboxes (a production restart's rule): a failed test's
        # sandboxes would outlive the run.
        await proc.destroy_all_over(live.app.state.pool)
        await proc.astop()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
async def playwright_instance() -> AsyncIterator[Playwright]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make installs it)")
    async with async_playwright() as p:
        yield p


@pytest.fixture(scope="session")
async def browser_net(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BrowserNet]:
    """The browser's own network namespace (tests/harness/browser_net.py: the host's veths,
    changing all the time under CI, made Chromium drop requests in flight)."""
    net = BrowserNet(CHROMIUM, Path(tmp_path_factory.mktemp("browser-net")))
    try:
        yield net
    finally:
        net.close()


@pytest.fixture(scope="session")
async def browser(playwright_instance: Playwright, browser_net: BrowserNet) -> AsyncIterator[Browser]:
    b = await playwright_instance.chromium.launch(
        executable_path=str(browser_net.executable), args=CHROMIUM_ARGS
    )
    browser_net.attach()
    try:
        yield b
    finally:
        await b.close()


@contextlib.asynccontextmanager
async def other_site(app: ASGIApp, net: BrowserNet) -> AsyncIterator[str]:
    """``app`` served on another loopback port (another origin of the same site, as an
    attacker's page would be), reachable from the browser; its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    net.expose(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


class Web:
    """Opens browser contexts for one test, records every request and takes screenshots."""

    def __init__(self, browser: Browser, net: BrowserNet, live: LiveCP, test_name: str) -> None:
        self.browser = browser
        self.net = net
        self.live = live
        self.test_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
        self.requests: list[str] = []
        self.page_errors: list[str] = []
        self.contexts: list[BrowserContext] = []
        self._shots = 0
        # What the pages saw, for a failed test's report: seconds since the test began, then
        # the event.
        self.seen: list[str] = []
        self._t0 = time.monotonic()

    @property
    def origin(self) -> str:
        return self.live.url

    async def new_page(self, viewport: dict[str, int] | None = None, *, record: bool = True) -> Page:
        """A page in a fresh browser context. With ``record`` (the default) every request it makes
        must go to the control plane; only the CSRF test, which visits an attacker's origin on
        purpose, turns that off."""
        self.net.expose(urlsplit(self.live.url).port or 80)
        ctx = await self.browser.new_context(viewport=viewport or LAPTOP, base_url=self.live.url)  # type: ignore[arg-type]
        if record:
            ctx.on("request", lambda req: self.requests.append(req.url))
        self.contexts.append(ctx)
        ctx.set_default_navigation_timeout(60_000)
        ctx.set_default_timeout(45_000)
        page = await ctx.new_page()
        page.on("pageerror", lambda err: self.page_errors.append(str(err)))
        # The pages' own scripts and styles carry their response's nonce (session 26): anything
        # of ours the policy refuses is an error too.
        page.on("console", lambda m: self._refused(m.type, m.text))
        self._watch(page)
        return page

    def _note(self, event: str) -> None:
        self.seen.append(f"{time.monotonic() - self._t0:8.3f}  {event}")

    def _watch(self, page: Page) -> None:
        def on_response(r: Response) -> None:
            if r.status >= 400:
                self._note(f"{r.status} {r.request.method} {r.url}")

        def on_failed(r: Request) -> None:
            self._note(f"request failed ({r.failure}): {r.method} {r.url}")

        def on_console(m: ConsoleMessage) -> None:
            if m.type in ("error", "warning"):
                self._note(f"console {m.type}: {m.text}")

        def on_navigated(f: Frame) -> None:
            if f.parent_frame is None:
                self._note(f"page {id(page):x} at {f.url}")

        page.on("response", on_response)
        page.on("requestfailed", on_failed)
        page.on("console", on_console)
        page.on("framenavigated", on_navigated)
        page.on("pageerror", lambda err: self._note(f"page error: {err}"))

    async def shoot_open_pages(self) -> None:
        """A screenshot of every page still open (a failed test's last state)."""
        for ctx in self.contexts:
            for page in ctx.pages:
                with contextlib.suppress(Exception):
                    await self.shot(page, "failed", full_page=False)

    def _refused(self, kind: str, text: str) -> None:
        if kind == "error" and "Content Security Policy" in text:
            self.page_errors.append(text)

    async def shot(self, page: Page, name: str, *, full_page: bool = True) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self._shots += 1
        path = SCREENSHOTS / f"{self.test_name}-{self._shots:02d}-{name}.png"
        await page.screenshot(path=str(path), full_page=full_page)
        return path

    async def login(self, page: Page, account: Account) -> None:
        await page.goto("/login")
        await page.fill("#email", account.email)
        await page.fill("#password", account.password)
        await page.click("#login-submit")
        await page.wait_for_url(f"**{HOME}")

    async def session_cookie(self, account: Account) -> str:
        """The session cookie the dashboard's login form sets for ``account``, from its own routes
        (``GET /login`` for the form's CSRF token, then ``POST /login``) without a browser."""
        async with httpx.AsyncClient(base_url=self.live.url, timeout=60) as client:
            form = await client.get("/login")
            found = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert form.status_code == 200 and found, form.text
            fields = {"email": account.email, "password": account.password, "csrf_token": found[1]}
            r = await client.post("/login", data=fields, headers={"Origin": self.live.url})
            assert r.status_code == 303 and r.headers["location"] == HOME, (r.status_code, r.text)
            return r.cookies[sessions.COOKIE_NAME]

    async def signed_in_page(
        self, account: Account, viewport: dict[str, int] | None = None, *, path: str = HOME
    ) -> Page:
        """A page signed in as ``account`` (the cookie the login form sets, on its context), at
        ``path``: the sign-in's own landing page unless told."""
        page = await self.new_page(viewport)
        cookie = await self.session_cookie(account)
        await page.context.add_cookies(
            [
                {
                    "name": sessions.COOKIE_NAME,
                    "value": cookie,
                    "url": self.live.url,
                    "httpOnly": True,
                    "sameSite": "Lax",
                }
            ]
        )
        await page.goto(path)
        await page.wait_for_url(f"**{path}")  # not sent back to /login
        return page

    def foreign_requests(self) -> list[str]:
        own = urlsplit(self.live.url)
        bad = []
        for url in self.requests:
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob", "about"):
                continue
            if (parts.scheme, parts.hostname, parts.port) != (own.scheme, own.hostname, own.port):
                bad.append(url)
        return bad

    async def close(self) -> None:
        for ctx in self.contexts:
            with contextlib.suppress(Exception):
                await ctx.close()


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed browser test's report shows what its pages saw (``Web.seen``)."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    w = getattr(item, "funcargs", {}).get("web")
    if report.failed and isinstance(w, Web):
        item.stash[FAILED] = True
        report.sections.append(("browser: failed requests, errors, navigations", "\n".join(w.seen)))


@pytest.fixture
async def web(
    live: LiveCP, browser: Browser, browser_net: BrowserNet, request: pytest.FixtureRequest
) -> AsyncIterator[Web]:
    w = Web(browser, browser_net, live, request.node.name)
    try:
        yield w
        if request.node.stash.get(FAILED, False):
            await w.shoot_open_pages()
        # Every page of every test loads only from the control plane's own origin.
        assert w.foreign_requests() == [], f"requests outside the control plane: {w.foreign_requests()}"
        assert w.page_errors == [], f"JavaScript errors: {w.page_errors}"
    finally:
        await w.close()


async def sandbox_row(
    live: LiveCP,
    team_id: str,
    host_id: uuid.UUID,
    *,
    status: str = "running",
    template: str = "minimal",
    vcpus: int = 1,
    memory_mb: int = 512,
    timeout_sec: int = 0,
) -> str:
    """Insert a sandbox row directly (for list/preview rendering tests that need no agent)."""
    sb = uuid.uuid4()
    await live.sql(
        """INSERT INTO sandboxes (id, team_id, host_id, template, status, vcpus, memory_mb, timeout_sec,
               started_at, last_active_at)
           VALUES (:id, :team, :host, :tpl, :status, :vcpus, :mem, :timeout, now(), now())""",
        id=sb, team=ids.parse_id(ids.Kind.TEAM, team_id), host=host_id, tpl=template, status=status,
        vcpus=vcpus, mem=memory_mb, timeout=timeout_sec,
    )  # fmt: skip
    return ids.sandbox_id(sb)
