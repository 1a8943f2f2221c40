"""A tenant's own egress rules (issue 14) against the platform: whatever a sandbox allows, it
does not reach the control plane, PostgreSQL, the host agent, any service on the host or
another tenant's sandbox, and root inside cannot lift its rules.

Every probe goes to the host's own addresses (delivered locally) or to another sandbox: no
packet leaves this machine. The tenant drives the SDK (``network=`` and ``set_network``), as a
user would.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from warren.sdk import Sandbox

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

# Connect to every (host, port) at once: {"host:port": "open" | "blocked <why>"}.
PROBE = """
import json, socket, sys, threading
out = {}
def go(host, port):
    s = socket.socket(); s.settimeout(1)
    try:
        s.connect((host, port)); out[f"{host}:{port}"] = "open"
    except OSError as e:
        out[f"{host}:{port}"] = "blocked " + type(e).__name__
ts = [threading.Thread(target=go, args=t) for t in json.loads(sys.argv[1])]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(out))
"""


def host_addresses() -> list[str]:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    return [a for line in out.splitlines() if not (a := line.split()[3].split("/")[0]).startswith("127.")]


@pytest.fixture(scope="module")
def host_service() -> Iterator[int]:
    """A service on every address of the host (a database listening on 0.0.0.0, say)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 0))
    sock.listen(16)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                sock.accept()[0].close()

    threading.Thread(target=serve, daemon=True).start()
    yield int(sock.getsockname()[1])
    sock.close()


def wide_open(platform: Platform) -> list[str]:
    """Everything a tenant could think of allowing: the internet, every private and loopback
    range, every address of the host, the sandbox subnet."""
    return [
        "0.0.0.0/0", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
        "100.64.0.0/10", "10.11.0.0/16", *host_addresses(),
    ]  # fmt: skip


def probe(sbx: Sandbox, targets: list[tuple[str, int]]) -> dict[str, str]:
    res = sbx.commands.run(f"python3 -c '{PROBE}' '{json.dumps(targets)}'", timeout=60)
    return dict(json.loads(res.stdout))


def test_no_rule_opens_the_platform_or_the_host(platform: Platform, alice: Tenant, host_service: int) -> None:
    ports = {
        "cp": urlsplit(platform.url).port,
        "postgres": urlsplit(platform.cp.db_url.replace("+asyncpg", "")).port or 5432,
        "agent": platform.agents[0].port,
        "host service": host_service,
    }
    with Sandbox.create(
        network={"allow_out": wide_open(platform)}, url=platform.url, api_key=alice.api_key
    ) as sbx:
        assert sbx.get_network()["allow_out"][0] == "0.0.0.0/0"
        targets = [(a, p) for a in host_addresses() for p in ports.values() if p]
        results = probe(sbx, targets)
        assert len(results) == len(targets)
        assert {k: v for k, v in results.items() if v == "open"} == {}, (ports, results)
        # Rules changed while it runs open nothing either.
        sbx.set_network(allow_out=[*wide_open(platform), "8.8.8.8"], deny_out=[])
        assert {k: v for k, v in probe(sbx, targets).items() if v == "open"} == {}


def test_no_rule_reaches_another_tenants_sandbox(platform: Platform, alice: Tenant, bob: Tenant) -> None:
    victim = bob.create()
    bob.x(victim, "nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
    victim_ip = bob.w("GET", f"/v1/sandboxes/{victim}").json()["host_ip"]
    up = False
    for _ in range(100):  # the host reaches it: the server is up
        with contextlib.suppress(OSError), socket.create_connection((victim_ip, 8000), timeout=1):
            up = True
            break
        time.sleep(0.1)
    assert up, "bob's server did not start"
    try:
        allow = [*wide_open(platform), victim_ip, str(ipaddress.IPv4Interface(f"{victim_ip}/30").network)]
        with Sandbox.create(network={"allow_out": allow}, url=platform.url, api_key=alice.api_key) as sbx:
            assert probe(sbx, [(victim_ip, 8000)])[f"{victim_ip}:8000"].startswith("blocked")
    finally:
        bob.w("DELETE", f"/v1/sandboxes/{victim}")


def test_root_inside_cannot_lift_or_see_its_rules(platform: Platform, alice: Tenant) -> None:
    rules = {"allow_out": ["203.0.113.9", "pypi.org"], "deny_out": ["0.0.0.0/0"]}
    with Sandbox.create(network=rules, url=platform.url, api_key=alice.api_key) as sbx:
        host_ip = sbx.get_info().raw["host_ip"]
        slot = (int(ipaddress.IPv4Address(host_ip)) - int(ipaddress.IPv4Address("10.11.0.0"))) // 4
        chain = ["iptables", "-w", "-S", f"WARREN-U{slot}"]
        before = subprocess.run(chain, capture_output=True, text=True, check=True).stdout
        assert "203.0.113.9/32" in before
        tamper = (
            "iptables -F; iptables -P OUTPUT ACCEPT; nft flush ruleset; ip link set eth0 down; "
            "echo nameserver 1.1.1.1 > /etc/resolv.conf; "
            'python3 -c "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 255)" 2>&1; true'
        )
        out = sbx.commands.run(tamper, timeout=60)
        assert "PermissionError" in out.stdout + out.stderr  # no CAP_NET_RAW either
        assert subprocess.run(chain, capture_output=True, text=True, check=True).stdout == before
        # DNS to any resolver but its own is refused: the rewritten resolv.conf reaches nothing.
        res = probe(sbx, [("1.1.1.1", 53)])
        assert res["1.1.1.1:53"].startswith("blocked"), res
