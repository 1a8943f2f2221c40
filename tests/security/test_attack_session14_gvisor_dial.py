"""Session 14: previews into gVisor sandboxes, attacked as a tenant would (docs/networking.md §3,
"gVisor"). A gVisor sandbox's ports are dialled through its veth from the host (its network
stack is runsc's: 127.0.0.1 in its netns reached nothing, so every preview was a 502 before the
fix). The tenant picks only a sandbox of theirs and a port: whatever the port, the dial must
reach that sandbox's own servers on its own address and nothing else — not a host listener
(on every host address, the veth's host end included), not a neighbour's server on the same
port (another team's gVisor or runc sandbox), not gVisor's own loopback, not the guest's TCP
port (the platform's, behind a secret).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.harness.machine import free_port
from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from warren.agent.runtime.gvisor import GUEST_PORT

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

OWN, LOOPBACK, NEIGHBOUR = 8000, 8102, 8100


def serve(t: Tenant, sid: str, port: int, bind: str, text: str) -> None:
    t.sh(sid, f"mkdir -p /srv{port} && echo {text} > /srv{port}/x.txt")
    t.sh(sid, f"cd /srv{port} && (setsid python3 -m http.server {port} --bind {bind} >/dev/null 2>&1 &)")
    probe = f"python3 -c \"import socket; socket.create_connection(('{bind}', {port}), 1).close()\""
    deadline = time.monotonic() + 60
    while t.x(sid, probe).json()["exit_code"] != 0:
        assert time.monotonic() < deadline, f"nothing listens on {bind}:{port}"
        time.sleep(0.2)


_tokens: dict[str, str] = {}


def token(t: Tenant, sid: str) -> str:
    """The sandbox's traffic token (a new one, once per sandbox)."""
    if sid not in _tokens:
        r = t.w("POST", f"/v1/sandboxes/{sid}/traffic-token")
        assert r.status_code == 200, r.text
        _tokens[sid] = str(r.json()["traffic_token"])
    return _tokens[sid]


def preview(t: Tenant, sid: str, port: int) -> httpx.Response:
    with httpx.Client(base_url=t.url, timeout=60) as c:
        h = {"X-Warren-Traffic-Token": token(t, sid)}
        return c.get(f"/v1/sandboxes/{sid}/ports/{port}/x.txt", headers=h)


def port_not_open(r: httpx.Response) -> bool:
    return r.status_code == 502 and r.json()["error"]["code"] == "port_not_open"


class HostListener:
    """A host service on every address of the host (the veth's host end among them) that
    notes each connection it accepts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.accepted = 0
        self.sock = socket.create_server(("0.0.0.0", self.port), reuse_port=False)
        self.sock.settimeout(0.2)
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nhost")
            c.close()

    def close(self) -> None:
        self.stop = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def attacker(alice: Tenant) -> str:
    sid = alice.create(runtime="gvisor", memory_mb=256)
    serve(alice, sid, OWN, "0.0.0.0", "alice-own")
    serve(alice, sid, LOOPBACK, "127.0.0.1", "alice-loopback")
    return sid


@pytest.fixture(scope="module")
def neighbours(bob: Tenant) -> list[str]:
    sids = [bob.create(runtime="gvisor", memory_mb=256), bob.create(runtime="runc", memory_mb=128)]
    for sid in sids:
        serve(bob, sid, NEIGHBOUR, "0.0.0.0", "bob-secret")
    return sids


@pytest.fixture
def host_listener() -> Iterator[HostListener]:
    h = HostListener()
    try:
        yield h
    finally:
        h.close()


def test_the_sandbox_own_server_answers(platform: Platform, alice: Tenant, attacker: str) -> None:
    # The control: without it every refusal below would pass on a path that reaches nothing.
    r = preview(alice, attacker, OWN)
    assert r.status_code == 200, r.text
    assert r.text == "alice-own\n"


def test_no_host_listener_is_reachable(
    platform: Platform, alice: Tenant, attacker: str, host_listener: HostListener
) -> None:
    assert port_not_open(preview(alice, attacker, host_listener.port))
    r = httpx.get(
        platform.cp.e2b_url + "/x.txt",
        headers={
            "E2b-Sandbox-Id": attacker,
            "E2b-Sandbox-Port": str(host_listener.port),
            "E2B-Traffic-Access-Token": token(alice, attacker),
        },
        timeout=60,
    )
    assert r.status_code == 502 and "port is not open" in r.json()["message"], r.text
    assert host_listener.accepted == 0


def test_no_neighbour_on_the_same_port_is_reachable(
    alice: Tenant, bob: Tenant, attacker: str, neighbours: list[str]
) -> None:
    for sid in neighbours:  # the neighbours do serve that port, to their own team
        assert preview(bob, sid, NEIGHBOUR).text == "bob-secret\n"
    r = preview(alice, attacker, NEIGHBOUR)
    assert port_not_open(r), r.text
    assert "bob-secret" not in r.text


def test_gvisor_loopback_and_the_guest_port_stay_closed(alice: Tenant, attacker: str) -> None:
    r = preview(alice, attacker, LOOPBACK)
    assert port_not_open(r), r.text
    assert "alice-loopback" not in r.text
    # The guest's own port listens on every address of the sandbox, behind its secret: the
    # platform's, never a preview's.
    assert port_not_open(preview(alice, attacker, GUEST_PORT))
