"""Session 17: open preview connections end with the credential that admitted them.

Session 16 voided a team's preview traffic tokens when a member is removed or an API key is
revoked (``envd_rotation.revoke_team_tokens``), and the signed preview URLs and cookies keyed
on them went with them, but only for new requests: a WebSocket or a long response already
open through the preview proxy went on until it ended. Mallory, a member, creates a sandbox
(its traffic token comes with it) whose server streams forever on a private port, signs a URL
to it, and opens, before the owner removes her: WebSockets with the token header, with the
signed URL and with the cookie the signed URL sets, and endless chunked responses with the
token, through the signed URL's redirect and with the cookie. Each must end within
``ENDS_WITHIN_S`` after the removal (the same for her API key revoked, and for the owner
rotating the sandbox's traffic token). What does not rest on the voided token goes on: the
same server's public port (no credential), and after a rotation, another sandbox's token. The
same through ``warren proxy``, a process the CP's change cannot reach at once: its own periodic
re-check (``stream_revocation.RECHECK_S``) ends them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup
from tests.harness.warren_proxy import running_proxy
from tests.security.test_attack_session15_envd_tokens import Member, add_member, bearer

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

PRIVATE, PUBLIC = 8000, 8001
# The CP re-reads open connections' credentials every 5 s (at once in the process that made the
# change); generous for a loaded machine.
ENDS_WITHIN_S = 30.0

# A server that never ends a stream: a WebSocket that sends "tick" every 0.3 s, and at /stream
# a chunked response that does the same; anything else is a short 200.
SERVER = r"""
import base64, hashlib, socket, threading, time
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def handle(c):
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            d = c.recv(4096)
            if not d:
                return
            data += d
        lines = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        hdr = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        if hdr.get("upgrade", "").lower() == "websocket":
            acc = base64.b64encode(hashlib.sha1(hdr["sec-websocket-key"].encode() + GUID).digest())
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
            while True:
                c.sendall(b"\x81\x04tick")
                time.sleep(0.3)
        elif lines[0].split()[1].split("?")[0].endswith("/stream"):
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
            while True:
                c.sendall(b"5\r\ntick\n\r\n")
                time.sleep(0.3)
        else:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
    except OSError:
        pass
    finally:
        c.close()
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()
for p in (8000, 8001):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
while True:
    time.sleep(3600)
"""


class Tap:
    """One open connection read in a thread: how many pieces came, and whether it ended."""

    def __init__(self, name: str, read: Callable[[Callable[[], None]], None]) -> None:
        self.name, self.got, self.how = name, 0, ""
        self.ended = threading.Event()
        self._read = read
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        self.got += 1

    def _run(self) -> None:
        try:
            self._read(self._tick)
            self.how = "ended"
        except Exception as e:  # a cut connection: any error ends the tap
            self.how = f"{type(e).__name__}: {e}"
        finally:
            self.ended.set()

    def flowing(self, within: float = 60) -> bool:
        """Pieces keep arriving: two more within ``within`` s, and not ended."""
        start, deadline = self.got, time.monotonic() + within
        while time.monotonic() < deadline and not self.ended.is_set():
            if self.got >= start + 2:
                return True
            time.sleep(0.1)
        return False


def assert_flowing(taps: list[Tap], what: str, within: float = 60) -> None:
    """Pieces keep arriving on every tap: two more on each within ``within`` s, none ended
    (watched all at once: the server sends a piece every 0.3 s on each)."""
    start, deadline = [t.got for t in taps], time.monotonic() + within
    waiting = list(range(len(taps)))
    while waiting and time.monotonic() < deadline:
        waiting = [i for i in waiting if not taps[i].ended.is_set() and taps[i].got < start[i] + 2]
        time.sleep(0.1)
    stopped = [i for i in range(len(taps)) if taps[i].ended.is_set() or taps[i].got < start[i] + 2]
    assert not stopped, [f"{taps[i].name} {what}: {taps[i].how}" for i in stopped]


def ws_tap(name: str, url: str, headers: dict[str, str], stop: threading.Event) -> Tap:
    def read(tick: Callable[[], None]) -> None:
        with connect(url.replace("http", "ws", 1), additional_headers=headers, open_timeout=60) as ws:
            while not stop.is_set():
                try:
                    ws.recv(timeout=1)
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    return
                tick()

    return Tap(name, read)


def http_tap(name: str, url: str, headers: dict[str, str], stop: threading.Event) -> Tap:
    def read(tick: Callable[[], None]) -> None:
        with (
            httpx.Client(timeout=httpx.Timeout(60, read=10), follow_redirects=True) as c,
            c.stream("GET", url, headers=headers) as r,
        ):
            assert r.status_code == 200, r.status_code
            for _ in r.iter_raw():
                tick()
                if stop.is_set():
                    return

    return Tap(name, read)


def _with_query(url: str, signed: str) -> str:
    """``url`` carrying the signed URL's parameters (the signature covers sandbox, port, expiry)."""
    q = dict(parse_qsl(urlsplit(signed).query))
    return f"{url}?{urlencode({k: q[k] for k in ('warren_sig', 'exp')})}"


def _start_server(owner: Tenant, sid: str) -> None:
    owner.sh(sid, f"cat > /tmp/srv.py <<'EOF'\n{SERVER}\nEOF\n(setsid python3 /tmp/srv.py >/dev/null 2>&1 &)")


def _sandbox(platform: Platform, owner: Tenant, auth: dict[str, str]) -> tuple[str, str, str]:
    """A sandbox created with ``auth`` (its traffic token comes with it), its server running,
    port 8001 public, and a URL signed with ``auth``: (id, token, signed URL)."""
    with httpx.Client(base_url=platform.url, timeout=120, headers=auth) as c:
        r = c.post("/v1/sandboxes", json={"template": "minimal", "memory_mb": 128})
        assert r.status_code == 201, r.text
        sid, token = r.json()["id"], r.json()["traffic_token"]
        _start_server(owner, sid)
        r = c.patch(f"/v1/sandboxes/{sid}", json={"public_ports": [PUBLIC]})
        assert r.status_code == 200, r.text
        r = c.post(f"/v1/sandboxes/{sid}/preview/signed-url", json={"port": PRIVATE, "expires": 86400})
        assert r.status_code == 200, r.text
    base = f"{platform.url}/v1/sandboxes/{sid}/ports/{PRIVATE}/"
    deadline = time.monotonic() + 60
    while httpx.get(base, headers={"X-Warren-Traffic-Token": token}, timeout=60).status_code != 200:
        assert time.monotonic() < deadline, "the sandbox's server did not start"
        time.sleep(0.3)
    return sid, token, r.json()["url"]


def _cookie(signed: str) -> str:
    r = httpx.get(signed, timeout=60, follow_redirects=False)
    assert r.status_code == 302, r.text
    return str(r.cookies["warren_preview"])


def _credentialed_taps(via: str, sid: str, token: str, signed: str, stop: threading.Event) -> list[Tap]:
    """Mallory's connections to the private port through the proxy at ``via``: WebSocket and
    endless response, each with the token, the signed URL and its cookie."""
    base = f"{via}/v1/sandboxes/{sid}/ports/{PRIVATE}"
    by_token = {"X-Warren-Traffic-Token": token}
    by_cookie = {"Cookie": f"warren_preview={_cookie(signed)}"}
    return [
        ws_tap("ws token", f"{base}/ws", by_token, stop),
        ws_tap("ws signed url", _with_query(f"{base}/ws", signed), {}, stop),
        ws_tap("ws cookie", f"{base}/ws", by_cookie, stop),
        http_tap("http token", f"{base}/stream", by_token, stop),
        http_tap("http signed url", _with_query(f"{base}/stream", signed), {}, stop),
        http_tap("http cookie", f"{base}/stream", by_cookie, stop),
    ]


def _public_taps(via: str, sid: str, stop: threading.Event) -> list[Tap]:
    base = f"{via}/v1/sandboxes/{sid}/ports/{PUBLIC}"
    return [ws_tap("public ws", f"{base}/ws", {}, stop), http_tap("public http", f"{base}/stream", {}, stop)]


@contextlib.contextmanager
def _stopping() -> Iterator[threading.Event]:
    stop = threading.Event()
    try:
        yield stop
    finally:
        stop.set()  # the readers return at their next piece


def _revoke(platform: Platform, owner: Tenant, mallory: Member, sid: str, how: str) -> None:
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        if how == "removed":
            r = c.delete(f"/v1/teams/{owner.team_id}/members/{mallory.user_id}", headers=bearer(owner.token))
            assert r.status_code == 204, r.text
        elif how == "key_revoked":
            keys = c.get("/v1/api-keys", headers=bearer(owner.token)).json()
            items = keys["items"] if isinstance(keys, dict) else keys
            key_id = next(k["id"] for k in items if k["name"] == f"mallory-s17p-{how}-key")
            r = c.delete(f"/v1/api-keys/{key_id}", headers=bearer(owner.token))
            assert r.status_code == 204, r.text
        else:  # the owner rotates the sandbox's traffic token: mallory's copy is void
            r = c.post(f"/v1/sandboxes/{sid}/traffic-token", headers=bearer(owner.token))
            assert r.status_code == 200, r.text


@pytest.mark.parametrize("how", ["removed", "key_revoked", "rotated"])
def test_open_preview_connections_end_with_their_credential(platform: Platform, how: str) -> None:
    owner = signup(platform.url, f"owner-s17p-{how}")
    mallory = add_member(platform, owner, f"mallory-s17p-{how}")
    # The credential came through her API key (key_revoked) or her team token.
    auth = {"X-API-Key": mallory.team_key} if how == "key_revoked" else bearer(mallory.team_token)
    sid, token, signed = _sandbox(platform, owner, auth)
    with _stopping() as stop:
        cut = _credentialed_taps(platform.url, sid, token, signed, stop)
        kept = _public_taps(platform.url, sid, stop)
        if how == "rotated":  # another sandbox of the team, its own token: not rotated
            sid2, token2, _ = _sandbox(platform, owner, {"X-API-Key": owner.api_key})
            base2 = f"{platform.url}/v1/sandboxes/{sid2}/ports/{PRIVATE}"
            kept += [
                ws_tap("other sandbox ws", f"{base2}/ws", {"X-Warren-Traffic-Token": token2}, stop),
                http_tap("other sandbox http", f"{base2}/stream", {"X-Warren-Traffic-Token": token2}, stop),
            ]
        assert_flowing(cut + kept, "never flowed")
        _revoke(platform, owner, mallory, sid, how)
        _assert_outcome(cut, kept, how)


def _assert_outcome(cut: list[Tap], kept: list[Tap], how: str) -> None:
    deadline = time.monotonic() + ENDS_WITHIN_S
    for tap in cut:
        tap.ended.wait(max(deadline - time.monotonic(), 0.01))
    going = [t.name for t in cut if not t.ended.is_set()]
    assert not going, f"still open {ENDS_WITHIN_S:.0f} s after the credential was {how}: {going}"
    assert_flowing(kept, "was cut though its access holds")


# Its periodic re-check (WARREN_STREAM_RECHECK_S, 5 s by default) is what the test waits for:
# short here, the same re-check.
RECHECK_ENV = {"WARREN_STREAM_RECHECK_S": "1"}


@contextlib.contextmanager
def _warren_proxy(platform: Platform) -> Iterator[str]:
    """``warren proxy`` as a process of its own on the platform's database: the URL it serves."""
    with running_proxy(platform, env=RECHECK_ENV) as proxy:
        yield proxy.url


def test_another_process_ends_them_on_its_own_re_check(platform: Platform) -> None:
    """The connections are on ``warren proxy`` (another process: the CP's at-once re-check after
    the removal does not reach it); its own periodic re-check ends them."""
    owner = signup(platform.url, "owner-s17p-proxy")
    mallory = add_member(platform, owner, "mallory-s17p-proxy")
    sid, token, signed = _sandbox(platform, owner, bearer(mallory.team_token))
    with _warren_proxy(platform) as via, _stopping() as stop:
        cut = _credentialed_taps(via, sid, token, signed, stop)
        kept = _public_taps(via, sid, stop)
        assert_flowing(cut + kept, "never flowed")
        _revoke(platform, owner, mallory, sid, "removed")
        _assert_outcome(cut, kept, "removed via the CP")
