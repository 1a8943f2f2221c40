"""D16: input no model bounded used to reach the agent, PostgreSQL or argon2 and come back as a
500. Integers past int32/int64 and lone surrogates (JSON can spell ``"\\udfff"``; nothing
downstream can encode it) are a 400 ``invalid_request`` on every route, as an attacker sends
them: raw JSON bodies, path parameters and WebSocket frames.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets.sync.client

from tests.harness.tenant import Tenant

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

LONE = "\udfff"
HIGH = "\ud800"


def raw(t: Tenant, method: str, path: str, body: Any, **headers: str) -> httpx.Response:
    """``body`` as JSON with \\u escapes (httpx's own encoder cannot write a lone surrogate)."""
    with httpx.Client(base_url=t.url, timeout=60) as c:
        hdrs = {"X-API-Key": t.api_key, "content-type": "application/json", **headers}
        return c.request(method, path, content=json.dumps(body).encode(), headers=hdrs)


def assert_400(r: httpx.Response) -> None:
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.json()["error"]["code"] == "invalid_request", r.text


@pytest.fixture(scope="module")
def sb(alice: Tenant) -> Iterator[str]:
    sid = alice.create()
    yield sid
    alice.w("DELETE", f"/v1/sandboxes/{sid}")


def test_lone_surrogates_and_huge_integers_on_exec_and_processes(alice: Tenant, sb: str) -> None:
    base = f"/v1/sandboxes/{sb}"
    cases: list[tuple[str, dict[str, Any]]] = [
        ("exec", {"cmd": "/bin/echo", "args": [LONE]}),
        ("exec", {"cmd": "/bin/echo", "cwd": "/" + LONE}),
        ("exec", {"cmd": LONE}),
        ("exec", {"cmd": "/bin/cat", "stdin": LONE}),
        ("exec", {"cmd": "/bin/echo", "env": {"A": LONE}}),
        ("exec", {"cmd": "/bin/echo", "env": {LONE: "x"}}),
        ("exec", {"cmd": "/bin/true", "timeout_sec": 3000000000}),
        ("exec", {"cmd": "/bin/true", "timeout_sec": 2**63}),
        ("exec", {"cmd": "/bin/true", "timeout_sec": -(2**70)}),
        ("processes", {"cmd": LONE}),
        ("processes", {"cmd": "/bin/sleep", "args": ["1"], "tag": HIGH}),
        ("processes", {"cmd": "/bin/sleep", "args": ["1"], "timeout_sec": 3000000000}),
        ("processes/1/stdin", {"data": LONE}),
        ("processes/1/signal", {"signal": 2**64}),
        ("processes/1/signal", {"signal": LONE}),
    ]
    for route, body in cases:
        assert_400(raw(alice, "POST", f"{base}/{route}", body))
    # NUL stays legitimate where it is data: stdin.
    r = raw(alice, "POST", f"{base}/exec", {"cmd": "/bin/od", "args": ["-An", "-c"], "stdin": "a\x00b"})
    assert r.status_code == 200 and "\\0" in r.json()["stdout"], r.text


def test_lone_surrogates_on_every_file_route(alice: Tenant, sb: str) -> None:
    base = f"/v1/sandboxes/{sb}/files"
    for route in ("read", "stream/read", "list", "stat", "mkdir", "remove"):
        assert_400(raw(alice, "POST", f"{base}/{route}", {"path": "/" + LONE}))
    assert_400(raw(alice, "POST", f"{base}/move", {"source": "/" + LONE, "destination": "/x"}))
    assert_400(raw(alice, "POST", f"{base}/move", {"source": "/x", "destination": "/" + HIGH}))
    assert_400(raw(alice, "POST", f"{base}/list", {"path": "/", "cursor": LONE}))
    assert_400(raw(alice, "POST", f"{base}/list", {"path": "/", "depth": 2**63}))


def test_path_parameters_that_reach_the_agent(alice: Tenant, sb: str) -> None:
    # A NUL in a process tag (percent-encoded in the path) is refused before the agent.
    with alice.client() as c:
        r = c.post(f"/v1/sandboxes/{sb}/processes/a%00b/signal", json={"signal": 15})
        assert_400(r)
        r = c.post(f"/v1/sandboxes/{sb}/processes/99999999999999999999/signal", json={"signal": 15})
        assert_400(r)


def test_websocket_start_frame_with_lone_surrogates(alice: Tenant, sb: str) -> None:
    url = alice.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sb}/exec/stream"
    for frame in (
        {"type": "start", "cmd": "/bin/echo", "args": [LONE]},
        {"type": "start", "cmd": LONE},
        {"type": "start", "cmd": "/bin/echo", "cwd": "/" + LONE},
        {"type": "start", "cmd": "/bin/echo", "timeout_sec": 2**63},
    ):
        with websockets.sync.client.connect(url, additional_headers={"X-API-Key": alice.api_key}) as ws:
            ws.send(json.dumps(frame))
            answer = json.loads(ws.recv(timeout=30))
            assert answer["type"] == "error" and answer["status"] == 400, answer


def test_lone_surrogate_passwords_at_login_and_signup(alice: Tenant) -> None:
    with httpx.Client(base_url=alice.url, timeout=60) as c:
        for path, body in (
            ("/v1/auth/login", {"email": "someone@example.com", "password": HIGH}),
            (
                "/v1/auth/signup",
                {"email": "new-surrogate@example.com", "password": HIGH + "x" * 12, "name": "n"},
            ),
            ("/v1/auth/signup", {"email": "new-surrogate@example.com", "password": "x" * 12, "name": LONE}),
        ):
            r = c.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
            assert_400(r)


def test_sandbox_create_with_lone_surrogates(alice: Tenant) -> None:
    for body in ({"template": LONE}, {"env": {"K": LONE}}, {"timeout_sec": 2**63}):
        assert_400(raw(alice, "POST", "/v1/sandboxes", body))
