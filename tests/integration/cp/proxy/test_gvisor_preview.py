"""Previews into a gVisor sandbox (docs/networking.md §3, "gVisor"): its network stack is runsc's,
so the agent dials it through its veth, not 127.0.0.1 in its netns. A server on 0.0.0.0 answers
through the main API's preview path and the E2B listener's port route; one bound to 127.0.0.1
only (gVisor's own loopback) is the clear 502 ``port_not_open``. The sandbox is created with
``internet: false``: that and the egress rules are about what leaves it, not previews.
Before session 14 every preview into a gVisor sandbox was a 502.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.harness.platform import Platform

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

OPEN, LOOPBACK = 8000, 8001


class Gvisor:
    def __init__(self, p: Platform, http: httpx.Client, info: dict[str, object]) -> None:
        self.p, self.http = p, http
        self.id = str(info["id"])
        self.token = str(info["traffic_token"])

    def sh(self, script: str) -> dict[str, object]:
        body = {"cmd": "sh", "args": ["-c", script], "timeout_sec": 60}
        r = self.http.post(f"/v1/sandboxes/{self.id}/exec", json=body, headers=self.p.headers)
        assert r.status_code == 200, r.text
        out: dict[str, object] = r.json()
        return out

    def preview(self, port: int, path: str) -> httpx.Response:
        url = f"/v1/sandboxes/{self.id}/ports/{port}{path}"
        return self.http.get(url, headers={"X-Warren-Traffic-Token": self.token})

    def e2b(self, port: int, path: str) -> httpx.Response:
        h = {"E2b-Sandbox-Id": self.id, "E2b-Sandbox-Port": str(port), "E2B-Traffic-Access-Token": self.token}
        return httpx.get(self.p.cp.e2b_url + path, headers=h, timeout=60)


def wait_listening(sb: Gvisor, host: str, port: int) -> None:
    """Polled from inside the sandbox, so a 502 afterwards is the path's, not a slow start."""
    probe = f"python3 -c \"import socket; socket.create_connection(('{host}', {port}), 1).close()\""
    deadline = time.monotonic() + 60
    while sb.sh(probe)["exit_code"] != 0:
        assert time.monotonic() < deadline, f"nothing listens on {host}:{port} in the sandbox"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def sb(platform: Platform) -> Iterator[Gvisor]:
    with httpx.Client(base_url=platform.url, timeout=60) as http:
        body = {"runtime": "gvisor", "memory_mb": 256, "internet": False}
        r = http.post("/v1/sandboxes", json=body, headers=platform.headers)
        assert r.status_code == 201, r.text
        s = Gvisor(platform, http, r.json())
        try:
            s.sh("mkdir -p /srv && echo hello-from-gvisor > /srv/hello.txt")
            s.sh(
                f"cd /srv && (setsid python3 -m http.server {OPEN} --bind 0.0.0.0 >/dev/null 2>&1 &);"
                f"(setsid python3 -m http.server {LOOPBACK} --bind 127.0.0.1 >/dev/null 2>&1 &)"
            )
            wait_listening(s, "0.0.0.0", OPEN)
            wait_listening(s, "127.0.0.1", LOOPBACK)
            yield s
        finally:
            http.delete(f"/v1/sandboxes/{s.id}", headers=platform.headers)


def test_a_server_on_all_addresses_answers_its_preview_url(sb: Gvisor) -> None:
    r = sb.preview(OPEN, "/hello.txt")
    assert r.status_code == 200, r.text
    assert r.text == "hello-from-gvisor\n"
    # Keep-alive and a fresh dial alike: a second request on the proxy's kept connection.
    assert sb.preview(OPEN, "/hello.txt").text == "hello-from-gvisor\n"


def test_a_server_on_all_addresses_answers_the_e2b_port_route(sb: Gvisor) -> None:
    r = sb.e2b(OPEN, "/hello.txt")
    assert r.status_code == 200, r.text
    assert r.text == "hello-from-gvisor\n"


def test_a_server_on_gvisors_loopback_only_is_port_not_open(sb: Gvisor) -> None:
    r = sb.preview(LOOPBACK, "/hello.txt")
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "port_not_open"
    r = sb.e2b(LOOPBACK, "/hello.txt")
    assert r.status_code == 502, r.text
    assert "port is not open" in r.json()["message"]
