"""Session 12's hostile team member: everything they control, in the browser of the team's owner.

The attacker (Mallory) is a member of the victim's team. Through the public API alone she
plants markup wherever her text reaches the victim's dashboard: her display name (team page,
audit), an API key's name (keys page, audit), a template build whose RUN step prints HTML,
``</script>``, U+2028 and ANSI into its log (build page, live log), and request values the
error pages reflect. From a script inside the team's sandbox she writes to every terminal of
that sandbox (``/dev/pts/*``) while the victim has its Terminal tab open: OSC 8 hyperlinks with
``javascript:`` and ``data:`` targets, an OSC 52 clipboard write, a window title followed by
the title-report request (``CSI 21 t``: the classic answer-back that makes a terminal type
attacker text into its shell), DECRQSS, DA and DSR requests.

Mallory also owns teams named like the victim's own ("Victor Victim's Team", and the same with
two spaces or an ``I`` for an ``l``, which a browser draws alike) and adds the victim to them
(no consent was asked until session 13; here the victim accepts her invitations). The team
switcher showed each team by name alone, so the victim could not tell which entry was theirs,
switch into Mallory's team and work there (sandboxes, files, API keys, BYOC hosts) in her
sight. Fixed: each entry shows the victim's role in it, and teams whose
names look alike show the tail of their id.

Expected: nothing runs in the victim's page (``window.__pwned`` stays unset, no dialog opens,
no request leaves the control plane's origin); the terminal's answer-backs carry none of the
attacker's text, the clipboard is untouched, and clicking the planted links does nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote, urlsplit

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.harness.cp import PASSWORD
from tests.harness.invitations import join_team
from tests.harness.platform import Platform

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
# A foreign address the planted markup would call (nothing listens: the request is the proof).
EVIL = "http://127.0.0.2:9"
PWN = "window.__pwned=1"
MARKUP = (
    f'"><img src={EVIL}/img onerror={PWN}><script>{PWN}</script>'
    f"</textarea></script><svg onload={PWN}>\u2028'-alert(1)-'"
)
TITLE = "PWNTITLE"
CLIP = "PWNCLIP"
# What Mallory's script writes to every terminal of the sandbox: a full-width OSC 8 link per
# hostile scheme on rows 1-4 (the victim clicks there), then the answer-back requests. (An
# http(s) target is a link xterm.js opens in a new window, opener cleared, after a confirm()
# that names it: the victim's consent, as in any terminal; not probed here.)
LINKS = [f"javascript:{PWN}", f"data:text/html,<script>{PWN}</script>"]


def _terminal_bytes() -> bytes:
    out = "\x1b[2J\x1b[H"
    for uri in LINKS:
        out += f"\x1b]8;;{uri}\x07" + "L" * 160 + "\x1b]8;;\x07\r\n"
    out += f"\x1b]52;c;{base64.b64encode(CLIP.encode()).decode()}\x07"
    out += f"\x1b]0;{TITLE}\x07\x1b]2;{TITLE}\x07\x1b[21t\x1b[20t"
    out += '\x1bP$qm\x1b\\\x1bP$q"p\x1b\\\x1b[c\x1b[>c\x1b[6n\x1b]10;?\x07\x1b]11;?\x07\r\nPLANTED\r\n'
    return out.encode()


def _api(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"})


def _signup(url: str, name: str) -> tuple[str, dict[str, str]]:
    email = f"s12dash-{uuid.uuid4().hex[:10]}@example.com"
    r = httpx.post(
        f"{url}/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": name}, timeout=60
    )
    assert r.status_code == 201, r.text
    return email, r.json()


class Planted:
    def __init__(self, platform: Platform) -> None:
        url = platform.url
        self.url = url
        self.victim_email, victim = _signup(url, "Victor Victim")
        self.team_id = victim["team_id"]
        self.mallory_email, mallory = _signup(url, MARKUP[:90])
        self.victim_token = victim["token"]
        with _api(url, victim["token"]) as v:
            join_team(v, self.team_id, self.mallory_email, inviter=victim["token"], invitee=mallory["token"])
        self.mallory_own = mallory["token"]
        with _api(url, mallory["token"]) as m:
            r = m.post("/v1/auth/switch-team", json={"team_id": self.team_id})
            assert r.status_code == 200, r.text
            self.token = r.json()["token"]
        with self.api() as m:
            r = m.post("/v1/api-keys", json={"name": MARKUP[:60]})
            assert r.status_code == 201, r.text
            r = m.post("/v1/sandboxes", json={"template": "minimal", "memory_mb": 256})
            assert r.status_code == 201, r.text
            self.sandbox_id = r.json()["id"]
            log = base64.b64encode(f"{MARKUP}\n\x1b[31mred\x1b[0m {'W' * 20000}\n".encode()).decode()
            spec = f"FROM minimal\n# {MARKUP.split(chr(0x2028))[0]}\nRUN echo {log} | base64 -d"
            r = m.post("/v1/templates", json={"name": "s12-dash", "spec": spec})
            assert r.status_code == 202, r.text
            self.build_id = r.json()["build_id"]

    def api(self) -> httpx.Client:
        return _api(self.url, self.token)

    def look_alike_team(self, name: str) -> None:
        """Mallory's own team under a name the victim's switcher draws like its own, which the
        victim joins by accepting her invitation (since session 13 nobody joins without)."""
        with _api(self.url, self.mallory_own) as m:
            r = m.post("/v1/teams", json={"name": name})
            assert r.status_code == 201, r.text
            tid = r.json()["id"]
            r = m.post("/v1/auth/switch-team", json={"team_id": tid})
            assert r.status_code == 200, r.text
        with _api(self.url, r.json()["token"]) as m:
            join_team(m, tid, self.victim_email, inviter=r.json()["token"], invitee=self.victim_token)

    def write_terminals(self) -> None:
        """Mallory's script in the team's sandbox: her bytes to every terminal it has."""
        data = base64.b64encode(_terminal_bytes()).decode()
        script = f"echo {data} | base64 -d > /tmp/t; for p in /dev/pts/[0-9]*; do cat /tmp/t > $p; done"
        with self.api() as m:
            r = m.post(
                f"/v1/sandboxes/{self.sandbox_id}/exec",
                json={"cmd": "/bin/sh", "args": ["-c", script], "timeout_sec": 60},
            )
            assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def planted(platform: Platform) -> Iterator[Planted]:
    p = Planted(platform)
    yield p
    with p.api() as m:
        m.delete(f"/v1/sandboxes/{p.sandbox_id}")


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


class Victim:
    def __init__(self, page: Page, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.sent: list[bytes] = []


@contextlib.asynccontextmanager
async def victim_page(browser: Browser, planted: Planted) -> AsyncIterator[Victim]:
    ctx = await browser.new_context(base_url=planted.url, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(60_000)
    await ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=planted.url)
    page = await ctx.new_page()
    v = Victim(page, planted.url)

    async def on_dialog(d: object) -> None:
        v.dialogs.append(d.message)  # type: ignore[attr-defined]
        await d.accept()  # type: ignore[attr-defined]  # a victim who says yes

    page.on("dialog", on_dialog)
    ctx.on("request", lambda req: v.requests.append(req.url))
    ctx.on("page", lambda p: p.on("dialog", on_dialog))
    page.on(
        "websocket",
        lambda ws: ws.on("framesent", lambda f: v.sent.append(f if isinstance(f, bytes) else f.encode())),
    )
    try:
        await page.goto("/login")
        await page.fill("#email", planted.victim_email)
        await page.fill("#password", PASSWORD)
        await page.click("#login-submit")
        await page.wait_for_url("**/dashboard/sandboxes")
        yield v
    finally:
        await ctx.close()


async def _clean(v: Victim) -> None:
    own = urlsplit(v.origin)
    assert await v.page.evaluate("window.__pwned") is None, v.page.url
    assert v.dialogs == [], v.dialogs
    foreign = [
        u for u in v.requests
        if urlsplit(u).scheme not in ("data", "blob", "about")
        and (urlsplit(u).hostname, urlsplit(u).port) != (own.hostname, own.port)
    ]  # fmt: skip
    assert foreign == [], foreign


async def test_planted_text_runs_nowhere_in_the_owners_dashboard(browser: Browser, planted: Planted) -> None:
    with planted.api() as m:
        for _ in range(600):
            r = m.get(f"/v1/templates/s12-dash/builds/{planted.build_id}")
            if r.json()["status"] in ("ready", "failed"):
                break
            await asyncio.sleep(0.2)
    async with victim_page(browser, planted) as v:
        pages = [
            "/dashboard/sandboxes",
            f"/dashboard/sandboxes/{planted.sandbox_id}",
            "/dashboard/keys",
            "/dashboard/team",
            "/dashboard/audit",
            "/dashboard/templates",
            "/dashboard/templates/s12-dash",
            f"/dashboard/templates/s12-dash/builds/{planted.build_id}",
            "/dashboard/sandboxes/" + quote(MARKUP, safe=""),
            "/dashboard/templates/" + quote(MARKUP, safe=""),
            "/dashboard/" + quote(MARKUP, safe=""),
            "/login?error=" + quote(MARKUP, safe="") + "&mode=" + quote(MARKUP, safe=""),
            "/dashboard/audit?action=" + quote(MARKUP, safe=""),
        ]
        for path in pages:
            resp = await v.page.goto(path)
            assert resp is not None
            await v.page.wait_for_load_state("load")
            assert "script-src 'nonce-" in resp.headers.get("content-security-policy", ""), path
            assert resp.headers.get("x-frame-options") == "DENY", path
            await _clean(v)
        await v.page.goto(f"/dashboard/templates/s12-dash/builds/{planted.build_id}")
        assert "onerror" in (await v.page.locator("#build-log").inner_text()), "the log shows the text"


async def test_terminal_output_cannot_type_open_or_copy(browser: Browser, planted: Planted) -> None:
    async with victim_page(browser, planted) as v:
        page = v.page
        await page.goto(f"/dashboard/sandboxes/{planted.sandbox_id}#terminal")
        await page.wait_for_selector('#terminal[data-state="open"]')
        await page.evaluate("navigator.clipboard.writeText('before')")
        sent_before = len(v.sent)
        done = threading.Event()

        def attack() -> None:
            planted.write_terminals()
            done.set()

        threading.Thread(target=attack, daemon=True).start()
        for _ in range(600):
            if "PLANTED" in await page.locator("#terminal-screen .xterm-rows").inner_text():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the planted output never reached the victim's terminal")
        assert done.wait(60)
        # The victim clicks each planted link (two rows each).
        box = await page.locator("#terminal-screen .xterm-screen").bounding_box()
        assert box is not None
        row_h = box["height"] / int(
            (await page.get_attribute("#terminal", "data-size") or "24x80").split("x")[0]
        )
        for i in range(len(LINKS)):
            x, y = box["x"] + 40, box["y"] + row_h * (2 * i + 0.5)
            await page.mouse.move(x, y)
            await page.mouse.move(x + 5, y)
            await page.mouse.click(x + 5, y)
        # A round trip through the page: a confirm() from a click would be open by now.
        await page.evaluate("1")
        answers = b"".join(v.sent[sent_before:])
        # The terminal answers DA, DSR, DECRQSS and colour queries (fixed text and numbers);
        # never the title, the clipboard, nor a line end that would run what it typed.
        assert TITLE.encode() not in answers and CLIP.encode() not in answers, answers
        assert b"\r" not in answers and b"\n" not in answers, answers
        assert TITLE not in await page.title()
        assert await page.evaluate("navigator.clipboard.readText()") == "before"
        assert len(page.context.pages) == 1, [p.url for p in page.context.pages]
        await _clean(v)


async def test_a_team_named_like_the_victims_own_is_told_apart(browser: Browser, planted: Planted) -> None:
    own = "Victor Victim's Team"
    for name in (own, "Victor  Victim's Team", "Victor VictIm's Team"):
        planted.look_alike_team(name)
    async with victim_page(browser, planted) as v:
        await v.page.click("#team-button")
        items = v.page.locator("#team-menu [data-switch-team]")
        await items.first.wait_for(state="visible")
        texts = [" ".join(t.split()) for t in await items.all_inner_texts()]
        assert len(texts) == 4, texts
        assert len(set(texts)) == len(texts), f"the victim cannot tell their own team apart: {texts}"
        assert sum("Owner" in t for t in texts) == 1, texts
        await _clean(v)


# Session 26: what Mallory's server in the team's sandbox serves on a public port, path-routed on
# the control plane's own origin (/v1/sandboxes/{id}/ports/8000/...).
EVIL_JS = f"{PWN};"
EVIL_CSS = "body { outline: 7px solid rgb(1, 2, 3) }"
INJECT = """([kind, url]) => new Promise((done) => {
  if (kind === "import") { import(url).then(() => done("ran"), () => done("refused")); return; }
  const el = document.createElement(kind === "script" ? "script" : "link");
  if (kind === "script") { el.src = url; } else { el.rel = "stylesheet"; el.href = url; }
  el.onload = () => done("ran");
  el.onerror = () => done("refused");
  document.head.appendChild(el);
})"""


def _serve_on_a_public_port(planted: Planted) -> str:
    files = {"evil.js": EVIL_JS, "evil.mjs": EVIL_JS, "evil.css": EVIL_CSS}
    writes = " && ".join(
        f"echo {base64.b64encode(body.encode()).decode()} | base64 -d > /tmp/www/{name}"
        for name, body in files.items()
    )
    serve = "(setsid python3 -m http.server 8000 --directory /tmp/www >/dev/null 2>&1 &)"
    with planted.api() as m:
        r = m.post(
            f"/v1/sandboxes/{planted.sandbox_id}/exec",
            json={"cmd": "/bin/sh", "args": ["-c", f"mkdir -p /tmp/www && {writes} && {serve}"]},
        )
        assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
        r = m.patch(f"/v1/sandboxes/{planted.sandbox_id}", json={"public_ports": [8000]})
        assert r.status_code == 200, r.text
    base = f"/v1/sandboxes/{planted.sandbox_id}/ports/8000"
    for _ in range(300):  # anyone's to fetch, on the control plane's origin
        r = httpx.get(f"{planted.url}{base}/evil.js", timeout=30)
        if r.status_code == 200 and r.text == EVIL_JS:
            return base
        threading.Event().wait(0.1)
    raise AssertionError(f"the sandbox's server did not answer: {r.status_code} {r.text[:200]}")


async def test_injected_markup_cannot_run_a_sandboxs_script_or_style_as_the_viewer(
    browser: Browser, planted: Planted
) -> None:
    """Were markup ever injected into a dashboard page (none is known: this is the second
    wall), a ``<script src>`` or stylesheet from a path-routed preview was same-origin, so
    ``script-src 'self'`` ran Mallory's script as the victim, with the victim's session.
    Since session 26 a page runs only the tags carrying its response's nonce."""
    base = _serve_on_a_public_port(planted)
    async with victim_page(browser, planted) as v:
        for path in ("/dashboard/sandboxes", f"/dashboard/sandboxes/{planted.sandbox_id}"):
            await v.page.goto(path)
            await v.page.wait_for_load_state("load")
            await v.page.click("#team-button")  # the page's own script runs: the menu opens
            await v.page.locator("#team-menu [data-switch-team]").first.wait_for(state="visible")
            for kind, name in (("script", "evil.js"), ("import", "evil.mjs"), ("style", "evil.css")):
                outcome = await v.page.evaluate(INJECT, [kind, f"{base}/{name}"])
                assert outcome == "refused", (path, kind)
            assert await v.page.evaluate("window.__pwned") is None, path
            outline = await v.page.evaluate("getComputedStyle(document.body).outlineColor")
            assert outline != "rgb(1, 2, 3)", path
        first = (await v.page.goto("/dashboard/keys")).headers["content-security-policy"]  # type: ignore[union-attr]
        again = (await v.page.goto("/dashboard/keys")).headers["content-security-policy"]  # type: ignore[union-attr]
        assert first != again, "a nonce is per response"
        await _clean(v)
