"""The sandbox page's Terminal tab (issue 14): xterm.js served by the control plane, on the
dashboard's terminal WebSocket, on a real sandbox of a real ``warren agent``.

- the terminal runs what is typed: ``echo hello-$((6*7))`` shows ``hello-42``;
- a cross-site page cannot open the WebSocket although the browser sends the session cookie
  with it (same site: another port of the same loopback address), and the Origin alone is
  enough to refuse a handshake that has the right cookie and CSRF token;
- another team's sandbox is a 404, on the page and on the WebSocket.

Needs root (the agent uses namespaces, cgroups and overlayfs); CI runs as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from playwright.async_api import Page, WebSocketRoute, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.harness.agent import AgentProcess
from warren import ids
from warren.cp.services.pty import MAX_INPUT_FRAME

from .conftest import Account, LiveCP, Web, online_agent, other_site

pytestmark = [pytest.mark.e2e, pytest.mark.root]

AGENT_IP = "127.0.0.47"


@pytest.fixture(scope="module")
async def agent(live: LiveCP) -> AsyncIterator[AgentProcess]:
    """A real agent registered as a platform host, online before the tests start."""
    if os.geteuid() != 0:
        pytest.fail("a real agent needs root (namespaces, cgroups, overlayfs)")
    async with online_agent(live, AGENT_IP, "e2e-terminal") as proc:
        yield proc


@dataclass
class Owned:
    account: Account
    sandbox_id: str


@pytest.fixture(scope="module")
async def owned(live: LiveCP, agent: AgentProcess) -> AsyncIterator[Owned]:
    """A user and a running sandbox of their team, made through the REST API."""
    account = await live.signup("Terry Terminal")
    login = await live.http.post(
        "/v1/auth/login", json={"email": account.email, "password": account.password}
    )
    assert login.status_code == 200, login.text
    auth = {"Authorization": f"Bearer {login.json()['token']}"}
    r = await live.http.post("/v1/sandboxes", json={"template": "minimal", "memory_mb": 256}, headers=auth)
    assert r.status_code == 201, f"{r.text}\nagent log:\n{agent.log_tail(40)}"
    sid = r.json()["id"]
    try:
        yield Owned(account, sid)
    finally:
        with contextlib.suppress(Exception):
            await live.http.delete(f"/v1/sandboxes/{sid}", headers=auth)


def _ws_url(live: LiveCP, sandbox_id: str) -> str:
    return live.url.replace("http://", "ws://") + f"/dashboard/sandboxes/{sandbox_id}/terminal"


async def _session_of(page: Page) -> tuple[str, str]:
    """The signed-in page's session cookie header and its CSRF token (as the page has them)."""
    cookies = await page.context.cookies()
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in cookies)
    token = await page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token
    return cookie, token


async def _handshake_status(url: str, *, origin: str, cookie: str, token: str) -> int:
    """The HTTP status a handshake gets: 101 when it is accepted."""
    try:
        async with connect(
            url,
            origin=origin,  # type: ignore[arg-type]  # websockets types Origin as a NewType of str
            additional_headers={"Cookie": cookie},
            subprotocols=["warren.terminal", f"csrf.{token}"],  # type: ignore[list-item]
            open_timeout=30,
        ):
            return 101
    except InvalidStatus as e:
        return e.response.status_code


# ------------------------------------------------------------------------------------ tests


async def test_terminal_runs_a_command(web: Web, live: LiveCP, owned: Owned) -> None:
    page = await web.signed_in_page(owned.account)
    await page.goto(f"/dashboard/sandboxes/{owned.sandbox_id}")
    await page.get_by_test_id("terminal-tab").click()
    card = page.locator("#terminal")
    await expect(card).to_have_attribute("data-state", "open")
    await expect(page.get_by_test_id("terminal-status")).to_contain_text("Connected · pid")
    rows = page.locator(".xterm-rows")
    await page.locator(".xterm").click()
    await page.keyboard.type("echo hello-$((6*7))")
    await page.keyboard.press("Enter")
    await expect(rows).to_contain_text("hello-42")
    # xterm's own <style> elements carry the page's nonce: its rows are laid out as cells.
    display = await rows.locator("span").first.evaluate("el => getComputedStyle(el).display")
    assert display == "inline-block"
    # 24-bit colour: xterm sets it as a style attribute, which reaches the page despite the CSP.
    await page.keyboard.type("printf '\\e[38;2;255;0;0mTRUE%sRED\\e[0m\\n' -")
    await page.keyboard.press("Enter")
    red = rows.locator("span", has_text="TRUE-RED")
    await expect(red).to_have_css("color", "rgb(255, 0, 0)")
    await web.shot(page, "terminal")

    # A smaller window refits the terminal, and the shell's terminal gets the new size.
    before = await card.get_attribute("data-size")
    await page.set_viewport_size({"width": 900, "height": 600})
    await expect(card).not_to_have_attribute("data-size", before or "")
    rows_cols = (await card.get_attribute("data-size") or "").replace("x", " ")
    await page.keyboard.type("stty size")
    await page.keyboard.press("Enter")
    await expect(rows).to_contain_text(rows_cols)

    # The shell's exit is shown, and a new session can be started from the same tab.
    await page.keyboard.type("exit 7")
    await page.keyboard.press("Enter")
    await expect(card).to_have_attribute("data-state", "exited")
    await expect(page.get_by_test_id("terminal-status")).to_have_text("Exited with code 7")
    await page.locator("#terminal-new").click()
    await expect(card).to_have_attribute("data-state", "open")


async def test_reconnect_reattaches_by_pid(web: Web, live: LiveCP, owned: Owned) -> None:
    """A dropped connection leaves the shell running: Reconnect attaches to it by its pid and
    sees what it prints next."""
    page = await web.signed_in_page(owned.account)
    sockets: list[WebSocketRoute] = []

    def through(ws: WebSocketRoute) -> None:  # to the real server, kept to be cut later
        ws.connect_to_server()
        sockets.append(ws)

    await page.route_web_socket(re.compile(r"/terminal$"), through)
    # The deep link opens the tab, and a session, with the page.
    await page.goto(f"/dashboard/sandboxes/{owned.sandbox_id}#terminal")
    await expect(page.locator("#panel-terminal")).to_be_visible()
    card = page.locator("#terminal")
    await expect(card).to_have_attribute("data-state", "open")
    pid = await card.get_attribute("data-pid")
    await page.locator(".xterm").click()
    await page.keyboard.type("export MARK=before-drop; echo $MARK")
    await page.keyboard.press("Enter")
    await expect(page.locator(".xterm-rows")).to_contain_text("before-drop\n", use_inner_text=True)

    await sockets[0].close(code=1001)  # the network drops
    await expect(card).to_have_attribute("data-state", "closed")
    await expect(page.get_by_test_id("terminal-status")).to_have_text("Disconnected")
    await page.locator("#terminal-reconnect").click()
    await expect(card).to_have_attribute("data-state", "open")
    assert await card.get_attribute("data-pid") == pid
    # The same shell: its variable is still set.
    await page.keyboard.type("echo after-$MARK")
    await page.keyboard.press("Enter")
    await expect(page.locator(".xterm-rows")).to_contain_text("after-before-drop")
    assert len(sockets) == 2


def _attacker_app(ws_url: str) -> Starlette:
    async def hijack(_: Request) -> HTMLResponse:
        # What a hostile page would do: open the terminal with the victim's cookie.
        return HTMLResponse(
            f"""<!doctype html><html><body><h1>Free prizes</h1><script>
            var ws = new WebSocket({ws_url!r}, ["warren.terminal", "csrf.guessed"]);
            ws.onopen = function () {{ document.title = "opened"; ws.send('{{"type":"start"}}'); }};
            ws.onclose = function () {{ if (document.title !== "opened") document.title = "refused"; }};
            </script></body></html>"""
        )

    return Starlette(routes=[Route("/hijack", hijack)])


@pytest.fixture
async def attacker(live: LiveCP, owned: Owned, web: Web) -> AsyncIterator[str]:
    async with other_site(_attacker_app(_ws_url(live, owned.sandbox_id)), web.net) as url:
        yield url


async def test_cross_site_websocket_is_refused(web: Web, live: LiveCP, owned: Owned, attacker: str) -> None:
    # The victim is signed in; the attacker's page (same site, another port) gets the cookie
    # sent with its handshake, and is refused.
    page = await web.new_page(record=False)
    await web.login(page, owned.account)
    await page.goto(f"/dashboard/sandboxes/{owned.sandbox_id}")
    cookie, token = await _session_of(page)
    await page.goto(attacker + "/hijack")
    await expect(page).to_have_title("refused")

    url = _ws_url(live, owned.sandbox_id)
    # The right cookie and CSRF token from a foreign Origin: refused for the Origin alone.
    assert await _handshake_status(url, origin=attacker, cookie=cookie, token=token) == 403
    assert await _handshake_status(url, origin="null", cookie=cookie, token=token) == 403
    # The CP's own Origin with a wrong token is refused too; with both right it opens.
    assert await _handshake_status(url, origin=live.url, cookie=cookie, token="x" * 43) == 403
    assert await _handshake_status(url, origin=live.url, cookie=cookie, token=token) == 101


async def test_frames_are_bounded(web: Web, live: LiveCP, owned: Owned) -> None:
    """An input frame past the PTY service's bound is a 413 ``error`` event, then the end of
    this connection (never of the shell: it can be connected to again)."""
    page = await web.signed_in_page(owned.account)
    await page.goto(f"/dashboard/sandboxes/{owned.sandbox_id}")
    cookie, token = await _session_of(page)
    events: list[dict[str, object]] = []
    async with connect(
        _ws_url(live, owned.sandbox_id),
        origin=live.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": cookie},
        subprotocols=["warren.terminal", f"csrf.{token}"],  # type: ignore[list-item]
        open_timeout=30,
    ) as ws:
        assert ws.subprotocol == "warren.terminal"
        await ws.send(json.dumps({"type": "start", "cols": 80, "rows": 24}))
        while not events:  # the shell's output may come first
            msg = await asyncio.wait_for(ws.recv(), 30)
            if isinstance(msg, str):
                events.append(json.loads(msg))
        await ws.send(b"x" * (MAX_INPUT_FRAME + 1))
        with contextlib.suppress(ConnectionClosed):
            while True:
                msg = await asyncio.wait_for(ws.recv(), 30)
                if isinstance(msg, str):
                    events.append(json.loads(msg))
    assert events[0]["type"] == "started", events
    assert events[-1]["type"] == "error" and events[-1]["status"] == 413, events


async def test_another_teams_sandbox_is_404(web: Web, live: LiveCP, owned: Owned) -> None:
    other = await live.signup("Mallory Other")
    page = await web.signed_in_page(other)
    resp = await page.goto(f"/dashboard/sandboxes/{owned.sandbox_id}")
    assert resp is not None and resp.status == 404
    cookie, token = await _session_of(page)
    url = _ws_url(live, owned.sandbox_id)
    assert await _handshake_status(url, origin=live.url, cookie=cookie, token=token) == 404
    unknown = _ws_url(live, ids.sandbox_id(uuid.uuid4()))
    assert await _handshake_status(unknown, origin=live.url, cookie=cookie, token=token) == 404
    # An anonymous session (the login page's, with its own CSRF token) is a 401.
    async with httpx.AsyncClient(base_url=live.url) as http:
        login_page = await http.get("/login")
        anon_cookie = "; ".join(f"{k}={v}" for k, v in login_page.cookies.items())
    found = re.search(r'name="csrf-token" content="([^"]+)"', login_page.text)
    assert found
    assert await _handshake_status(url, origin=live.url, cookie=anon_cookie, token=found[1]) == 401
