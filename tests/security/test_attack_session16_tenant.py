"""Session 16: what a token or a member's access opened stays open after it is revoked.

Session 15 made E2B envd access tokens rotatable (a member's removal, an API key's revocation
and ``POST /v1/sandboxes/{id}/access-token`` bump the sandbox's token epoch): a *new* request
with the old token is refused. But a stream is authenticated once, at its start. Mallory, a
member of the victim's team, opens streams while she may (an exec WebSocket with her user
token, an E2B ``process.Process/Start`` stream with the envd token she read through the E2B API),
then is removed: her terminal kept running commands as root and printing their output, and her
envd process stream kept streaming, for as long as she liked. The same with a revoked API key's
exec stream and a rotated token's envd stream.

Expected (fixed): within a few seconds of the revocation (``services/stream_revocation.py``
re-reads every open stream's credentials), the exec stream gets an ``error`` frame 401
``access_revoked`` and closes, the envd stream ends with Connect's ``unauthenticated``. Streams
of credentials that still hold (the owner's key, the rotated token's successor) keep going.

Held (checked here too): the rotation endpoint answers another team's id as an unknown one
(404), refuses a sandbox's own envd token (401: it is no API credential), an ended sandbox (404)
and takes no body; concurrent rotations each get their own epoch and only the last token works.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.harness.cp import JWT_SECRET
from tests.harness.e2b import E2BEnv, e2b_environment
from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup
from tests.security.test_attack_session15_envd_tokens import Stolen, add_member, bearer, envd_token
from warren.cp.services.envd_tokens import envd_access_token

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

TICK = "while true; do echo tick; sleep 0.3; done"
# How long a revoked stream may go on: the CP re-reads open streams' credentials every 5 s
# (at once on the replica that made the change); generous for a loaded machine.
ENDS_WITHIN_S = 30.0


@pytest.fixture(scope="module")
def e2b_env(platform: Platform) -> Iterator[E2BEnv]:
    with e2b_environment(platform, template="minimal") as env:
        yield env


# ------------------------------------------------------------------------------ exec WebSocket


@contextmanager
def exec_ws(url: str, sid: str, headers: dict[str, str]) -> Iterator[ClientConnection]:
    """An exec stream of TICK, its ``start`` frame read."""
    ws_url = url.replace("http", "ws", 1) + f"/v1/sandboxes/{sid}/exec/stream"
    with connect(ws_url, additional_headers=headers) as ws:
        ws.send(json.dumps({"type": "start", "cmd": "/bin/sh", "args": ["-c", TICK]}))
        first = json.loads(ws.recv(timeout=60))
        assert first["type"] == "start", first
        yield ws


def ws_outcome(ws: ClientConnection, within: float) -> str:
    """``ticking`` if output still flows after ``within`` s, else how the stream ended: the
    code of its error frame, or ``closed``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            frame = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
        except TimeoutError:
            break
        except ConnectionClosed:
            return "closed"
        if frame["type"] == "error":
            return str(frame.get("code"))
        if frame["type"] == "exit":
            return "exit"
    return "ticking"


def still_ticking(ws: ClientConnection) -> bool:
    """Output keeps arriving for the next 2 s."""
    got, deadline = 0, time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            frame = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
        except TimeoutError:
            break
        if frame["type"] != "stdout":
            return False
        got += 1
    return got > 0


# ---------------------------------------------------------------------------- envd Connect stream


class EnvdStream:
    """A ``process.Process/Start`` of TICK with an envd token, read as E2B's SDK reads it."""

    def __init__(self, e2b_url: str, sid: str, token: str) -> None:
        msg = json.dumps({"process": {"cmd": "/bin/sh", "args": ["-c", TICK]}}).encode()
        h = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983", "X-Access-Token": token,
             "Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"}  # fmt: skip
        self.client = httpx.Client(timeout=httpx.Timeout(60, read=2))
        self.cm = self.client.stream(
            "POST",
            f"{e2b_url}/process.Process/Start",
            content=b"\x00" + len(msg).to_bytes(4, "big") + msg,
            headers=h,
        )
        self.resp = self.cm.__enter__()
        assert self.resp.status_code == 200, self.resp.read()
        self.chunks = self.resp.iter_raw()
        self.buf = b""

    def _messages(self, within: float) -> Iterator[tuple[int, dict]]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            while len(self.buf) >= 5 and len(self.buf) >= 5 + int.from_bytes(self.buf[1:5], "big"):
                n = int.from_bytes(self.buf[1:5], "big")
                flags, body, self.buf = self.buf[0], self.buf[5 : 5 + n], self.buf[5 + n :]
                yield flags, json.loads(body)
            try:
                self.buf += next(self.chunks)
            except (httpx.ReadTimeout, StopIteration, httpx.RemoteProtocolError):
                return

    def outcome(self, within: float) -> str:
        """``ticking`` while messages keep coming for ``within`` s, else the stream's end: its
        Connect error code (``ok`` for a clean end), or ``cut``."""
        for flags, msg in self._messages(within):
            if flags & 2:
                return str(msg.get("error", {}).get("code", "ok"))
        return "ticking" if not self.resp.is_closed else "cut"

    def ticks(self) -> bool:
        return any(not flags & 2 for flags, _ in self._messages(2))

    def close(self) -> None:
        self.cm.__exit__(None, None, None)
        self.client.close()


# ----------------------------------------------------------------------------------------- tests


def test_a_removed_member_loses_her_open_streams(platform: Platform, e2b_env: E2BEnv) -> None:
    owner = signup(platform.url, "owner-s16")
    sid = owner.create(memory_mb=128)
    mallory = add_member(platform, owner, "mallory-s16")
    token = envd_token(e2b_env.url, mallory.team_key, sid)
    mine_cm = exec_ws(platform.url, sid, {"X-API-Key": owner.api_key})
    with mine_cm as mine, exec_ws(platform.url, sid, bearer(mallory.team_token)) as hers:
        envd = EnvdStream(e2b_env.url, sid, token)
        try:
            assert still_ticking(hers) and envd.ticks()
            r = httpx.delete(
                f"{platform.url}/v1/teams/{owner.team_id}/members/{mallory.user_id}",
                headers=bearer(owner.token),
                timeout=60,
            )
            assert r.status_code == 204, r.text
            assert ws_outcome(hers, ENDS_WITHIN_S) == "access_revoked"
            assert envd.outcome(ENDS_WITHIN_S) == "unauthenticated"
        finally:
            envd.close()
        assert still_ticking(mine)  # the owner's stream (their key holds) goes on


def test_a_revoked_keys_exec_stream_ends(platform: Platform) -> None:
    owner = signup(platform.url, "owner-key-s16")
    sid = owner.create(memory_mb=128)
    r = httpx.post(
        f"{platform.url}/v1/api-keys", json={"name": "ci"}, headers=bearer(owner.token), timeout=60
    )
    assert r.status_code == 201, r.text
    ci = r.json()
    with exec_ws(platform.url, sid, {"X-API-Key": ci["key"]}) as ws:
        assert still_ticking(ws)
        r = httpx.delete(f"{platform.url}/v1/api-keys/{ci['id']}", headers=bearer(owner.token), timeout=60)
        assert r.status_code == 204, r.text
        assert ws_outcome(ws, ENDS_WITHIN_S) == "access_revoked"


BIG = 32 * 1024 * 1024


def test_rotation_ends_the_old_tokens_streams(platform: Platform, e2b_env: E2BEnv) -> None:
    """A process stream and a download (E2B's ``GET /files``, read slowly) opened with the token
    before a rotation: the stream ends with ``unauthenticated``, the download is cut short."""
    owner = signup(platform.url, "owner-rot-s16")
    sid = owner.create(memory_mb=256)
    owner.sh(sid, f"head -c {BIG} /dev/urandom > /tmp/big")
    token = envd_token(e2b_env.url, owner.api_key, sid)
    old = EnvdStream(e2b_env.url, sid, token)
    h = {
        "E2b-Sandbox-Id": sid,
        "E2b-Sandbox-Port": "49983",
        "X-Access-Token": token,
        "Accept-Encoding": "identity",
    }
    with (
        httpx.Client(base_url=e2b_env.url, timeout=60) as c,
        c.stream("GET", "/files", params={"path": "/tmp/big"}, headers=h) as down,
    ):
        assert down.status_code == 200
        chunks = down.iter_raw(65536)
        got = len(next(chunks))
        try:
            assert old.ticks()
            r = owner.w("POST", f"/v1/sandboxes/{sid}/access-token")
            assert r.status_code == 200, r.text
            new = EnvdStream(e2b_env.url, sid, r.json()["access_token"])
            try:
                # The stream's end says the pass that ends the download's too has run.
                assert old.outcome(ENDS_WITHIN_S) == "unauthenticated"
                assert new.ticks()  # the new token's stream goes on
            finally:
                new.close()
        finally:
            old.close()
        with contextlib.suppress(httpx.HTTPError):
            for chunk in chunks:
                got += len(chunk)
    assert got < BIG, "the old token's download went on to its end"


def _rotate(t: Tenant, sid: str, **kw: object) -> httpx.Response:
    with t.client() as c:
        return c.post(f"/v1/sandboxes/{sid}/access-token", **kw)  # type: ignore[arg-type]


def test_rotation_endpoint_edges_held(platform: Platform, e2b_env: E2BEnv) -> None:
    owner, eve = signup(platform.url, "owner-edge-s16"), signup(platform.url, "eve-edge-s16")
    sid = owner.create(memory_mb=128)
    token = envd_token(e2b_env.url, owner.api_key, sid)
    assert _rotate(eve, sid).status_code == 404  # another team's: as unknown
    assert _rotate(owner, "sb-" + "0" * 25).status_code == 404
    # The sandbox's own token is no API credential.
    r = httpx.post(
        f"{platform.url}/v1/sandboxes/{sid}/access-token", headers={"X-Access-Token": token}, timeout=60
    )
    assert r.status_code == 401, r.text
    assert _rotate(owner, sid, content=b"{not json").status_code == 200  # it takes no body
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _rotate(owner, sid), range(8)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    tokens = {a.json()["access_token"] for a in answers}
    assert len(tokens) == 8  # each its own epoch
    current = envd_token(e2b_env.url, owner.api_key, sid)
    assert current in tokens
    assert all(not Stolen(e2b_env.url, sid, t).works() for t in tokens - {current})
    assert Stolen(e2b_env.url, sid, current).works()
    # Every envd route refuses an old token (each reads the epoch with the sandbox row).
    old = next(iter(tokens - {current}))
    assert _envd_statuses(e2b_env.url, sid, old) == dict.fromkeys(ENVD_ROUTES, 401)
    assert _envd_statuses(e2b_env.url, sid, current)["GET /health"] == 204
    assert owner.w("DELETE", f"/v1/sandboxes/{sid}").status_code == 204
    assert _rotate(owner, sid).status_code in (404, 409)


ENVD_ROUTES = [
    "GET /health", "GET /envs", "GET /files", "POST /files",
    "POST /process.Process/List", "POST /process.Process/SendInput", "POST /process.Process/SendSignal",
    "POST /process.Process/Start", "POST /process.Process/Connect", "POST /process.Process/StreamInput",
    "POST /filesystem.Filesystem/ListDir", "POST /filesystem.Filesystem/Stat",
    "POST /filesystem.Filesystem/MakeDir", "POST /filesystem.Filesystem/Remove",
    "POST /filesystem.Filesystem/WatchDir", "POST /filesystem.Filesystem/CreateWatcher",
]  # fmt: skip


def _envd_statuses(e2b_url: str, sid: str, token: str) -> dict[str, int]:
    """Each envd route's HTTP status with ``token`` (streams as Connect streams, unary calls as
    JSON, /files with a path)."""
    out: dict[str, int] = {}
    with httpx.Client(base_url=e2b_url, timeout=60) as c:
        for route in ENVD_ROUTES:
            method, path = route.split(" ")
            h = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983", "X-Access-Token": token}
            stream = path.rsplit("/", 1)[-1] in ("Start", "Connect", "StreamInput", "WatchDir")
            if stream:
                h |= {"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"}
                content = b"\x00\x00\x00\x00\x02{}"
            else:
                h |= {"Content-Type": "application/json"}
                content = b"{}"
            params = {"path": "/tmp/x"} if path == "/files" else None
            if method == "GET":
                r = c.get(path, headers=h, params=params)
            else:
                r = c.post(path, headers=h, params=params, content=content)
            out[route] = r.status_code
    return out


# A create that stays pending for a few seconds: its READY command answers only after 4 s.
SLOW_SPEC = "FROM minimal\nREADY --timeout=60 sleep 4\n"


def test_a_key_revoked_during_its_create_gets_no_working_token(platform: Platform, e2b_env: E2BEnv) -> None:
    """Mallory's key starts an E2B create; the owner revokes the key while the sandbox is still
    pending. Before: the team-wide bump skipped pending rows and the create answered the epoch-0
    token, which then worked for good. Now the pending row is bumped, and the create answers 401
    ``access_revoked`` to a caller whose key was revoked meanwhile."""
    from warren.sdk import Template

    owner = signup(platform.url, "owner-pending-s16")
    Template.from_warrenfile(SLOW_SPEC).build(
        "slow-ready", timeout=300, url=platform.url, api_key=owner.api_key
    )
    with httpx.Client(base_url=platform.url, headers=bearer(owner.token), timeout=60) as c:
        r = c.post("/v1/api-keys", json={"name": "mallory"})
        assert r.status_code == 201, r.text
        key = r.json()
        answer = _create_while(c, e2b_env.url, key["key"], lambda: c.delete(f"/v1/api-keys/{key['id']}"))
    if answer.status_code == 201:  # the bug: a token handed to a revoked key, and it works
        sid, token = answer.json()["sandboxID"], answer.json()["envdAccessToken"]
        assert not Stolen(e2b_env.url, sid, token).works(), "the revoked key's create token works"
    assert answer.status_code == 401, answer.text
    assert answer.json().get("code") == 401
    # The sandbox is the team's: the owner's connect gets the current token, which works.
    sid = next(s["id"] for s in owner.w("GET", "/v1/sandboxes").json())
    assert Stolen(e2b_env.url, sid, envd_token(e2b_env.url, owner.api_key, sid)).works()


def test_a_member_removed_during_a_create_keeps_no_epoch_0_token(platform: Platform, e2b_env: E2BEnv) -> None:
    """A member removed while the owner's create is pending: the pending row's epoch moves on
    (before: it started at epoch 0, whose token a member could have read while pending), and
    the create answers the token of the epoch it finished with, which works."""
    from warren.sdk import Template

    owner = signup(platform.url, "owner-pending2-s16")
    Template.from_warrenfile(SLOW_SPEC).build(
        "slow-ready", timeout=300, url=platform.url, api_key=owner.api_key
    )
    mallory = add_member(platform, owner, "mallory-pending-s16")
    with httpx.Client(base_url=platform.url, headers=bearer(owner.token), timeout=60) as c:
        remove = f"/v1/teams/{owner.team_id}/members/{mallory.user_id}"
        answer = _create_while(c, e2b_env.url, owner.api_key, lambda: c.delete(remove))
    assert answer.status_code == 201, answer.text
    sid = answer.json()["sandboxID"]
    assert not Stolen(e2b_env.url, sid, envd_access_token(JWT_SECRET, sid, 0)).works()
    assert Stolen(e2b_env.url, sid, answer.json()["envdAccessToken"]).works()


def _create_while(
    c: httpx.Client, e2b_url: str, key: str, during: Callable[[], httpx.Response]
) -> httpx.Response:
    """An E2B create of ``slow-ready`` with ``key``; ``during()`` (a 204) once its row is in,
    still pending. The create's answer."""
    before = {s["id"] for s in c.get("/v1/sandboxes").json()}

    def create() -> httpx.Response:
        body = {"templateID": "slow-ready", "timeout": 300}
        return httpx.post(f"{e2b_url}/sandboxes", json=body, headers={"X-API-Key": key}, timeout=120)

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(create)
        deadline = time.monotonic() + 60
        while not pending.done() and time.monotonic() < deadline:  # the row is in (pending)
            if any(s["id"] not in before for s in c.get("/v1/sandboxes").json()):
                break
            time.sleep(0.2)
        assert not pending.done(), "the create ended before it could be caught pending"
        r = during()
        assert r.status_code == 204, r.text
        return pending.result()


def test_a_removed_members_signed_file_urls_die_with_her_access(platform: Platform) -> None:
    """Warren's own signed file URLs (``…/files/download-url``, ``upload-url``) last up to a
    week and took no account of who made them: a removed member kept root read and write of the
    team's sandbox files with the URLs she minted before. Now they are signed at the sandbox's
    token epoch, which her removal (and a rotation) moves on: 403; new URLs of the remaining
    members work."""
    owner = signup(platform.url, "owner-urls-s16")
    sid = owner.create(memory_mb=128)
    mallory = add_member(platform, owner, "mallory-urls-s16")
    with httpx.Client(base_url=platform.url, headers=bearer(mallory.team_token), timeout=60) as c:
        q = {"path": "/etc/hostname", "user": "root", "expires": 7 * 24 * 3600}
        down = c.get(f"/v1/sandboxes/{sid}/files/download-url", params=q).json()["url"]
        up = c.get(f"/v1/sandboxes/{sid}/files/upload-url", params=q | {"path": "/root/planted"}).json()[
            "url"
        ]
    assert httpx.get(down, timeout=60).status_code == 200
    r = httpx.delete(
        f"{platform.url}/v1/teams/{owner.team_id}/members/{mallory.user_id}",
        headers=bearer(owner.token),
        timeout=60,
    )
    assert r.status_code == 204, r.text
    assert httpx.get(down, timeout=60).status_code == 403
    assert httpx.put(up, content=b"mallory was here", timeout=60).status_code == 403
    assert owner.x(sid, "test ! -e /root/planted").json()["exit_code"] == 0
    with owner.client() as c:
        fresh = c.get(f"/v1/sandboxes/{sid}/files/download-url", params={"path": "/etc/hostname"}).json()[
            "url"
        ]
    assert httpx.get(fresh, timeout=60).status_code == 200
    r = owner.w("POST", f"/v1/sandboxes/{sid}/access-token")  # a rotation voids them too
    assert r.status_code == 200, r.text
    assert httpx.get(fresh, timeout=60).status_code == 403
