"""What held, through the public API: one tenant's credentials against another tenant's
resources (IDOR), forged and stale tokens, deleted teams, hostile bodies, and a WebSocket client
that stops reading. See test_what_held.py's docstring for what existing tests already pin."""

from __future__ import annotations

import base64
import json
import os
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import psutil
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.harness.cp import JWT_SECRET
from tests.harness.invitations import join_team
from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup
from warren import ids

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

SECRET = "bob-secret"
MIB = 1024 * 1024
UPLOAD = "<multipart upload of /root/pwned>"


@dataclass
class Victim:
    sb: str
    snapshot: str


@pytest.fixture(scope="module")
def victim(bob: Tenant) -> Iterator[Victim]:
    """Bob's sandbox (a secret file, a tagged background process) and Bob's snapshot."""
    sb = bob.create(memory_mb=128)
    bob.sh(sb, f"echo {SECRET} > /root/secret")
    name = f"bob-env-{uuid.uuid4().hex[:6]}"
    r = bob.w("POST", "/v1/snapshots", {"sandbox_id": sb, "name": name})
    assert r.status_code == 201, r.text
    assert bob.w("POST", f"/v1/sandboxes/{sb}/resume").status_code == 200
    web = {"cmd": "/bin/sleep", "args": ["3600"], "tag": "web"}
    assert bob.w("POST", f"/v1/sandboxes/{sb}/processes", web).status_code == 201
    yield Victim(sb, name)
    bob.w("DELETE", f"/v1/sandboxes/{sb}")
    bob.w("DELETE", f"/v1/snapshots/{name}")


@pytest.fixture(scope="module")
def mine(alice: Tenant) -> Iterator[str]:
    """The attacker's own sandbox."""
    sb = alice.create(memory_mb=128)
    yield sb
    alice.w("DELETE", f"/v1/sandboxes/{sb}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ws_url(url: str, sb: str, query: str = "") -> str:
    return url.replace("http", "ws", 1) + f"/v1/sandboxes/{sb}/exec/stream" + query


def ws_status(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """The answer to a WebSocket upgrade: 101, or the refusal's status and JSON body."""
    try:
        with ws_connect(url, additional_headers=headers, open_timeout=30):
            return 101, None
    except InvalidStatus as e:
        return e.response.status_code, json.loads(e.response.body or b"null")


def call(url: str, headers: dict[str, str], method: str, path: str, payload: Any) -> tuple[int, Any]:
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        if payload == UPLOAD:
            r = c.request(method, path, data={"path": "/root/pwned"}, files={"file": ("f", b"pwned")})
        else:
            r = c.request(method, path, json=payload)
    return r.status_code, (r.json() if r.content else None)


# --------------------------------------------------------------------------------------- IDOR

# Every per-sandbox verb, aimed at another team's sandbox. Each would leave a trace on success
# (test_idor_left_no_trace looks for them).
IDOR: list[tuple[str, str, Any]] = [
    ("GET", "", None),
    ("DELETE", "", None),
    ("POST", "/pause", None),
    ("POST", "/resume", None),
    ("POST", "/ping", None),
    ("GET", "/metrics?range=10m", None),
    ("POST", "/exec", {"cmd": "/bin/sh", "args": ["-c", "echo pwned > /root/pwned"]}),
    ("WS", "/exec/stream", None),
    ("GET", "/processes", None),
    ("POST", "/processes", {"cmd": "/bin/sh", "args": ["-c", "echo pwned > /root/pwned"], "tag": "evil"}),
    ("POST", "/processes/web/signal", {"signal": "SIGKILL"}),
    ("POST", "/processes/web/stdin", {"data": "pwned"}),
    ("POST", "/files/read", {"path": "/root/secret"}),
    ("POST", "/files/stream/read", {"path": "/root/secret"}),
    ("POST", "/files/write", UPLOAD),
    ("POST", "/files/stream/write", UPLOAD),
    ("POST", "/files/list", {"path": "/root"}),
    ("POST", "/files/stat", {"path": "/root/secret"}),
    ("POST", "/files/mkdir", {"path": "/root/pwned"}),
    ("POST", "/files/remove", {"path": "/root/secret"}),
    ("POST", "/files/move", {"source": "/root/secret", "destination": "/root/pwned"}),
    ("POST", "snapshot", {"sandbox_id": "{sb}", "name": "stolen"}),
]


def _aim(sb: str, method: str, suffix: str, payload: Any) -> tuple[str, Any]:
    if suffix == "snapshot":
        return "/v1/snapshots", {**payload, "sandbox_id": sb}
    return f"/v1/sandboxes/{sb}{suffix}", payload


@pytest.mark.parametrize(("method", "suffix", "payload"), IDOR, ids=[f"{m} {s}" for m, s, _ in IDOR])
def test_another_teams_sandbox_is_404_for_every_verb(
    alice: Tenant, victim: Victim, method: str, suffix: str, payload: Any
) -> None:
    """With Alice's key and with her JWT, Bob's sandbox answers exactly like a sandbox that
    does not exist: 404, same body, so ids cannot even be probed for existence."""
    ghost = ids.sandbox_id(uuid.uuid4())
    for headers in ({"X-API-Key": alice.api_key}, bearer(alice.token)):
        if method == "WS":
            got = ws_status(ws_url(alice.url, victim.sb), headers)
            none = ws_status(ws_url(alice.url, ghost), headers)
        else:
            got = call(alice.url, headers, method, *_aim(victim.sb, method, suffix, payload))
            none = call(alice.url, headers, method, *_aim(ghost, method, suffix, payload))
        assert got[0] == 404, got
        assert json.loads(json.dumps(got).replace(victim.sb, ghost)) == list(none)
    if method == "WS":  # the browser form: credentials as query parameters
        for query in (f"?api_key={alice.api_key}", f"?token={alice.token}"):
            assert ws_status(ws_url(alice.url, victim.sb, query))[0] == 404


def test_idor_left_no_trace(alice: Tenant, bob: Tenant, victim: Victim) -> None:
    got = bob.w("GET", f"/v1/sandboxes/{victim.sb}")
    assert got.status_code == 200 and got.json()["status"] == "running", got.text
    assert bob.sh(victim.sb, "cat /root/secret") == f"{SECRET}\n"
    assert "pwned" not in bob.sh(victim.sb, "ls -A /root /tmp")
    tags = [p.get("tag") for p in bob.w("GET", f"/v1/sandboxes/{victim.sb}/processes").json()]
    assert "web" in tags and "evil" not in tags, tags
    assert "stolen" not in [t["name"] for t in alice.w("GET", "/v1/snapshots").json()]
    assert victim.sb not in [s["id"] for s in alice.w("GET", "/v1/sandboxes").json()]


def test_another_teams_snapshot_cannot_be_used_deleted_or_squatted(
    alice: Tenant, bob: Tenant, victim: Victim, mine: str
) -> None:
    ghost = f"no-such-{uuid.uuid4().hex[:6]}"
    for name in (victim.snapshot, ghost):
        r = alice.w("POST", "/v1/sandboxes", {"template": name})
        assert r.status_code == 404 and r.json()["error"]["message"] == f'template "{name}" not found'
        assert alice.w("DELETE", f"/v1/snapshots/{name}").status_code == 404
    assert victim.snapshot not in [t["name"] for t in alice.w("GET", "/v1/snapshots").json()]
    # Alice takes the same name for her own snapshot (overwrite) and deletes it: names are per
    # team, files are per snapshot id, so Bob's snapshot is untouched.
    r = alice.w("POST", "/v1/snapshots?overwrite=true", {"sandbox_id": mine, "name": victim.snapshot})
    assert r.status_code == 201, r.text
    assert alice.w("POST", f"/v1/sandboxes/{mine}/resume").status_code == 200
    assert alice.w("DELETE", f"/v1/snapshots/{victim.snapshot}").status_code == 204
    copy = bob.create(template=victim.snapshot)
    try:
        assert bob.sh(copy, "cat /root/secret") == f"{SECRET}\n"
    finally:
        bob.w("DELETE", f"/v1/sandboxes/{copy}")


# ------------------------------------------------------------------------- tokens and roles


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forged_tokens(alice: Tenant, bob: Tenant) -> dict[str, str]:
    """Alice's attempts at a token for Bob's team (or for more than she has)."""
    header, _, sig = alice.token.split(".")
    claims = jwt.decode(alice.token, options={"verify_signature": False})
    bob_sub = jwt.decode(bob.token, options={"verify_signature": False})["sub"]
    to_bob = {**claims, "team_id": bob.team_id}
    now = int(time.time())
    tokens = {
        "team claim swapped, signature kept": f"{header}.{_b64(to_bob)}.{sig}",
        "sub swapped to Bob, signature kept": f"{header}.{_b64({**claims, 'sub': bob_sub})}.{sig}",
        "is_admin added, signature kept": f"{header}.{_b64({**claims, 'is_admin': True})}.{sig}",
        "signature stripped": f"{header}.{_b64(to_bob)}.",
        "re-signed with a guessed secret": jwt.encode(to_bob, "secret" * 8, algorithm="HS256"),
        # A genuine token of Alice's, stolen after it expired.
        "expired": jwt.encode({**claims, "iat": now - 7 * 3600, "exp": now - 3600}, JWT_SECRET, "HS256"),
    }
    for alg in ("none", "None", "NONE"):
        tokens[f"alg {alg}"] = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(to_bob)}."
    return tokens


def test_forged_and_expired_jwts_are_401_everywhere(alice: Tenant, bob: Tenant, victim: Victim) -> None:
    exec_body = {"cmd": "/bin/cat", "args": ["/root/secret"]}
    for what, token in forged_tokens(alice, bob).items():
        h = bearer(token)
        for method, path, body in (
            ("GET", "/v1/sandboxes", None),
            ("GET", f"/v1/sandboxes/{victim.sb}", None),
            ("POST", f"/v1/sandboxes/{victim.sb}/exec", exec_body),
            ("GET", f"/v1/teams/{bob.team_id}/members", None),
            ("PUT", f"/v1/admin/teams/{alice.team_id}/byoc", {"enabled": True}),
        ):
            status, err = call(alice.url, h, method, path, body)
            assert status == 401 and err["error"]["code"] == "unauthorized", (what, path, status, err)
        assert ws_status(ws_url(alice.url, victim.sb, f"?token={token}"))[0] == 401, what
        assert ws_status(ws_url(alice.url, victim.sb), h)[0] == 401, what


def test_demoted_then_removed_member_keeps_no_rights_from_an_old_jwt(
    platform: Platform, bob: Tenant, victim: Victim
) -> None:
    """Roles and membership are read from the database on every request, never from the JWT."""
    mallory = signup(platform.url, "mallory")
    mal = jwt.decode(mallory.token, options={"verify_signature": False})
    team = f"/v1/teams/{bob.team_id}"
    owner = bearer(bob.token)
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        join_team(c, bob.team_id, mal["email"], inviter=owner, invitee=mallory.token)
    assert call(platform.url, owner, "PATCH", f"{team}/members/{mal['sub']}", {"role": "admin"})[0] == 204
    status, switched = call(platform.url, bearer(mallory.token), "POST", "/v1/auth/switch-team",
                            {"team_id": bob.team_id})  # fmt: skip
    assert status == 200, switched
    old = bearer(switched["token"])  # says role=admin in Bob's team
    assert call(platform.url, old, "GET", f"/v1/sandboxes/{victim.sb}", None)[0] == 200
    assert call(platform.url, owner, "PATCH", f"{team}/members/{mal['sub']}", {"role": "member"})[0] == 204
    accomplice = jwt.decode(signup(platform.url, "acc").token, options={"verify_signature": False})
    bob_sub = jwt.decode(bob.token, options={"verify_signature": False})["sub"]
    for method, path, body in (
        ("PATCH", f"{team}/members/{mal['sub']}", {"role": "admin"}),  # promote herself back
        ("POST", f"{team}/members", {"email": accomplice["email"]}),
        ("DELETE", f"{team}/members/{bob_sub}", None),
        ("PATCH", team, {"name": "owned"}),
        ("DELETE", team, None),
    ):
        status, err = call(platform.url, old, method, path, body)
        assert status == 403, (method, path, status, err)
    assert call(platform.url, owner, "DELETE", f"{team}/members/{mal['sub']}", None)[0] == 204
    for method, path, body in (
        ("GET", "/v1/sandboxes", None),
        ("GET", f"/v1/sandboxes/{victim.sb}", None),
        ("POST", f"/v1/sandboxes/{victim.sb}/exec", {"cmd": "/bin/cat", "args": ["/root/secret"]}),
        ("POST", f"/v1/sandboxes/{victim.sb}/files/read", {"path": "/root/secret"}),
        ("POST", "/v1/api-keys", {"name": "backdoor"}),
    ):
        status, err = call(platform.url, old, method, path, body)
        assert status == 403, (method, path, status, err)
    assert ws_status(ws_url(platform.url, victim.sb), old)[0] == 403


def test_deleted_teams_key_and_jwt_are_refused(platform: Platform) -> None:
    eve = signup(platform.url, "eve")
    sb = eve.create(memory_mb=128)
    assert call(platform.url, bearer(eve.token), "DELETE", f"/v1/teams/{eve.team_id}", None)[0] == 204
    for headers in ({"X-API-Key": eve.api_key}, bearer(eve.token)):
        for method, path, body in (
            ("GET", "/v1/sandboxes", None),
            ("POST", "/v1/sandboxes", {"template": "minimal", "memory_mb": 128}),
            ("GET", f"/v1/sandboxes/{sb}", None),
            ("POST", f"/v1/sandboxes/{sb}/exec", {"cmd": "/bin/true"}),
            ("GET", "/v1/snapshots", None),
        ):
            status, err = call(platform.url, headers, method, path, body)
            assert status == 401, (method, path, status, err)
        assert ws_status(ws_url(platform.url, sb), headers)[0] == 401


# ----------------------------------------------------------------------------- hostile bodies

MALFORMED: list[bytes] = [
    b"{",
    b"nul",
    b"[]",
    b'"a string"',
    b"123",
    b"\xff\xfe\x00garbage",
    b'{"a": 1,}',
    b"[" * 5000 + b"]" * 5000,  # deep nesting, well under the size cap
    b'{"x": ' + b"[" * 3000 + b"]" * 3000 + b"}",
]
WRONG_TYPES: dict[str, list[dict[str, Any]]] = {
    "/exec": [{"cmd": ["/bin/true"]}, {"cmd": "/bin/true", "args": "x"}, {"cmd": "x", "env": [1]}],
    "/processes": [{"cmd": {"$ne": 1}}, {"cmd": "x", "tag": 5}],
    "/processes/1/signal": [{"signal": [9]}, {"signal": None}],
    "/processes/1/stdin": [{"data": 5}, {"data_b64": "!!"}],
    "/files/read": [{"path": ["/etc/passwd"]}, {"path": None}],
    "/files/stream/read": [{"path": 1}],
    "/files/list": [{"path": "/", "depth": "all"}],
    "/files/stat": [{"path": {"a": 1}}],
    "/files/mkdir": [{"path": True}],
    "/files/remove": [{"path": []}],
    "/files/move": [{"source": 1, "destination": "/x"}],
    "snapshot": [{"sandbox_id": 5, "name": "x"}, {"sandbox_id": "{sb}", "name": ["x"]}],
}


def test_malformed_bodies_on_sandbox_routes_are_4xx(alice: Tenant, mine: str) -> None:
    sent: list[tuple[str, str, bytes]] = []
    for suffix, wrong in WRONG_TYPES.items():
        path = "/v1/snapshots" if suffix == "snapshot" else f"/v1/sandboxes/{mine}{suffix}"
        for body in MALFORMED + [json.dumps(w).replace("{sb}", mine).encode() for w in wrong]:
            sent.append((path, "application/json", body))
    for suffix in ("/files/write", "/files/stream/write"):
        for ctype, body in (
            ("multipart/form-data", b"--x\r\n"),  # no boundary parameter
            ("multipart/form-data; boundary=x", b"garbage"),
            ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="file"\r\n'),
            ("application/json", b'{"path": "/x"}'),
        ):
            sent.append((f"/v1/sandboxes/{mine}{suffix}", ctype, body))
    wrong_answers = []
    c = alice.client()
    try:
        for path, ctype, body in sent:
            r = c.post(path, content=body, headers={"content-type": ctype})
            if not (400 <= r.status_code < 500 and "error" in r.json()):
                wrong_answers.append((path.removeprefix(f"/v1/sandboxes/{mine}"), body[:24], r.status_code))
                c.close()  # the server drops the connection after a 500
                c = alice.client()
    finally:
        c.close()
    assert wrong_answers == []
    # And the sandbox still serves: nothing above reached it.
    assert alice.sh(mine, "echo ok") == "ok\n"


def test_oversized_json_bodies_are_413(alice: Tenant, mine: str) -> None:
    big = json.dumps({"cmd": "/bin/true", "args": ["x" * (2 * 1024 * 1024)]}).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is counted while streaming
        yield b'{"path": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    ctype = {"content-type": "application/json"}
    with alice.client() as c:
        for path in ("/exec", "/processes", "/files/list"):
            r = c.post(f"/v1/sandboxes/{mine}{path}", content=big, headers=ctype)
            assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", (path, r.text)
        r = c.post(f"/v1/sandboxes/{mine}/files/read", content=chunks(), headers=ctype)
        assert r.status_code == 413, r.text
        r = c.post("/v1/sandboxes", content=big, headers=ctype)
        assert r.status_code == 413, r.text


# -------------------------------------------------------------------- WebSocket backpressure

PRODUCER = r"""
import os, sys
chunk = b"x" * 65536
n = 0
while True:
    os.write(1, chunk)
    n += len(chunk)
    with open("/tmp/produced.tmp", "w") as f:
        f.write(str(n))
    os.replace("/tmp/produced.tmp", "/tmp/produced")
"""
MARK = "what-held-producer"


def open_handshake(url: str, path: str, headers: dict[str, str]) -> tuple[socket.socket, bytes]:
    """A WebSocket upgrade request on a socket with a small receive buffer, and the answer's
    head as received: byte by byte, so nothing past the handshake is read."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.settimeout(30)
    s.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = s.recv(1)
        assert chunk, f"the CP closed the handshake: {answer!r}"
        answer += chunk
    return s, answer


def raw_websocket(url: str, path: str, headers: dict[str, str]) -> socket.socket:
    """A WebSocket client that really never reads after the handshake (client libraries keep
    reading into their own buffers), with a small receive buffer."""
    s, answer = open_handshake(url, path, headers)
    assert answer.startswith(b"HTTP/1.1 101 "), answer
    return s


def text_frame(text: str) -> bytes:
    """One masked client text frame (RFC 6455 5.2), payload under 64 KiB."""
    data, mask = text.encode(), os.urandom(4)
    size = (
        bytes([0x80 | len(data)]) if len(data) < 126 else bytes([0x80 | 126]) + len(data).to_bytes(2, "big")
    )
    return b"\x81" + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def _produced(t: Tenant, sb: str) -> int:
    return int(t.sh(sb, "cat /tmp/produced 2>/dev/null || echo 0"))


class PeakRss:
    """The CP's and the agent's resident memory growth (MiB) over a ``with`` block."""

    def __init__(self, platform: Platform) -> None:
        self.procs = [psutil.Process(platform.cp.pid), psutil.Process(platform.agents[0].proc.pid)]
        self.base = [p.memory_info().rss for p in self.procs]
        self.peak = list(self.base)
        self.stop = threading.Event()
        self.sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.is_set():
            for i, p in enumerate(self.procs):
                self.peak[i] = max(self.peak[i], p.memory_info().rss)
            time.sleep(0.1)

    def __enter__(self) -> PeakRss:
        self.sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.sampler.join()

    @property
    def grown_mib(self) -> list[int]:
        return [(pk - b) // MIB for pk, b in zip(self.peak, self.base, strict=True)]


def test_a_websocket_client_that_does_not_read_stalls_the_command_not_the_cp(
    platform: Platform, alice: Tenant, mine: str
) -> None:
    """Output nobody reads is held back at the source: the command blocks on its stdout and
    neither the CP nor the agent buffers what it would keep producing."""
    path = f"/v1/sandboxes/{mine}/exec/stream"
    with PeakRss(platform) as rss, closing(raw_websocket(alice.url, path, {"X-API-Key": alice.api_key})) as c:
        c.sendall(text_frame(json.dumps({"type": "start", "cmd": "python3", "args": ["-c", PRODUCER, MARK]})))
        # Until the producer stalls: its count stops growing (with nothing held back, output
        # flows at ~100 MB/s and crosses the bound below within seconds).
        last, still_since, deadline = -1, time.monotonic(), time.monotonic() + 30
        while time.monotonic() < deadline:
            n = _produced(alice, mine)
            assert n < 128 * MIB, f"{n} bytes produced for a client that reads nothing"
            if n != last:
                last, still_since = n, time.monotonic()
            elif n > 0 and time.monotonic() - still_since > 2:
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"the producer never stalled ({last} bytes)")
    assert max(rss.grown_mib) < 64, f"CP, agent RSS grew by {rss.grown_mib} MiB while {last} bytes waited"
    # Leaving the stream ends the command rather than leaving it blocked forever.
    deadline = time.monotonic() + 60
    while py_count(alice, mine, MARK) > 0:
        assert time.monotonic() < deadline, "the abandoned stream's command still runs"
        time.sleep(0.3)


def test_stdin_a_command_does_not_read_is_held_back_at_the_client(
    platform: Platform, alice: Tenant, mine: str
) -> None:
    """The other direction: a client pushing stdin frames at a command that never reads them
    must be slowed down (TCP backpressure), not buffered by the CP or the agent."""
    frame = text_frame(json.dumps({"type": "stdin", "data": "x" * 60000}))
    path = f"/v1/sandboxes/{mine}/exec/stream"
    with PeakRss(platform) as rss, closing(raw_websocket(alice.url, path, {"X-API-Key": alice.api_key})) as c:
        c.sendall(text_frame(json.dumps({"type": "start", "cmd": "/bin/sleep", "args": ["600"]})))
        c.setblocking(False)
        sent, pending, last_progress = 0, b"", time.monotonic()
        # Stop at the first sign of buffering, so a failure costs the shared machine little.
        while time.monotonic() - last_progress < 1.5 and sent < 96 * MIB and max(rss.grown_mib) < 64:
            if not select.select([], [c], [], 0.2)[1]:
                continue
            pending = pending or frame  # a frame is finished before the next one starts
            n = c.send(pending)
            pending, sent, last_progress = pending[n:], sent + n, time.monotonic()
    assert sent < 96 * MIB and max(rss.grown_mib) < 64, (
        f"{sent // MIB} MiB of stdin accepted for a command that reads none; CP, agent RSS grew by "
        f"{rss.grown_mib} MiB"
    )


def py_count(t: Tenant, sb: str, mark: str) -> int:
    """How many processes in the sandbox have ``mark`` as their last argument."""
    code = (
        "import os, sys\n"
        "n = 0\n"
        "for p in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try: argv = open(f'/proc/{p}/cmdline', 'rb').read().split(b'\\0')\n"
        "    except OSError: continue\n"
        "    n += int(p != str(os.getpid()) and argv[-2:-1] == [sys.argv[1].encode()])\n"
        "print(n)"
    )
    r = t.w("POST", f"/v1/sandboxes/{sb}/exec", {"cmd": "python3", "args": ["-c", code, mark]})
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    return int(r.json()["stdout"])
