"""A sandbox's egress rules through the REST API (issue 14): the create's ``network`` field,
``GET``/``PATCH /v1/sandboxes/{id}/network``, and what bad input gets. A live platform (a CP
process and a real agent): the rules are checked in the host's tables, where they live.
tests/integration/agent/test_egress_rules.py checks the traffic itself."""

from __future__ import annotations

import ipaddress
import subprocess
from typing import Any

import pytest

from tests.harness.leaks import slot_held_by_another
from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]


@pytest.fixture(scope="module")
def alice(platform: Platform) -> Tenant:
    return signup(platform.url, "alice")


@pytest.fixture(scope="module")
def bob(platform: Platform) -> Tenant:
    return signup(platform.url, "bob")


def slot_of(t: Tenant, sb: str) -> int:
    host_ip = t.w("GET", f"/v1/sandboxes/{sb}").json()["host_ip"]
    return (int(ipaddress.IPv4Address(host_ip)) - int(ipaddress.IPv4Address("10.11.0.0"))) // 4


def user_chain(slot: int) -> list[str]:
    res = subprocess.run(["iptables", "-w", "-S", f"WARREN-U{slot}"], capture_output=True, text=True)
    res2 = subprocess.run(["iptables", "-w", "-S", f"WARREN-L{slot}"], capture_output=True, text=True)
    return (res.stdout + res2.stdout).splitlines()


def error(r: Any, status: int) -> str:
    assert r.status_code == status, r.text
    return str(r.json()["error"]["message"])


def test_create_with_rules_installs_them_and_get_shows_them(platform: Platform, alice: Tenant) -> None:
    network = {"allow_out": ["203.0.113.9", "Example.COM.", "*.pypi.org"], "deny_out": ["0.0.0.0/0"]}
    sb = alice.create(network=network)
    try:
        r = alice.w("GET", f"/v1/sandboxes/{sb}/network")
        assert r.status_code == 200, r.text
        assert r.json() == {
            "allow_out": ["203.0.113.9/32", "example.com", "*.pypi.org"],
            "deny_out": ["0.0.0.0/0"],
        }
        chain = user_chain(slot_of(alice, sb))
        assert f"-A WARREN-U{slot_of(alice, sb)} -d 203.0.113.9/32 -j RETURN" in chain, chain
        assert any(line.startswith(f"-A WARREN-L{slot_of(alice, sb)} -j REJECT") for line in chain), chain
        # Name rules: the sandbox's resolver is the agent's, on its gateway.
        resolv = alice.sh(sb, "cat /etc/resolv.conf").split()
        gw = ipaddress.IPv4Address(alice.w("GET", f"/v1/sandboxes/{sb}").json()["host_ip"]) - 1
        assert resolv == ["nameserver", str(gw)]
        plain = alice.create()
        assert alice.w("GET", f"/v1/sandboxes/{plain}/network").json() == {"allow_out": [], "deny_out": []}
        assert user_chain(slot_of(alice, plain)) == []
        alice.w("DELETE", f"/v1/sandboxes/{plain}")
    finally:
        slot = slot_of(alice, sb)
        alice.w("DELETE", f"/v1/sandboxes/{sb}")
    # Gone with the sandbox (unless the other test worker's agent has taken the freed slot).
    assert user_chain(slot) == [] or slot_held_by_another(slot, platform.agents[0].data_dir)


def test_patch_changes_the_rules_of_a_running_and_a_paused_sandbox(alice: Tenant) -> None:
    sb = alice.create(network={"allow_out": ["203.0.113.9"], "deny_out": ["0.0.0.0/0"]})
    slot = slot_of(alice, sb)
    try:
        r = alice.w("PATCH", f"/v1/sandboxes/{sb}/network", {"deny_out": ["198.51.100.0/24"]})
        assert r.status_code == 200, r.text
        assert r.json() == {
            "allow_out": ["203.0.113.9/32"],
            "deny_out": ["198.51.100.0/24"],
        }  # allow_out kept
        assert any("-d 198.51.100.0/24 -j REJECT" in line for line in user_chain(slot))
        assert not any(line.startswith(f"-A WARREN-L{slot} -j REJECT") for line in user_chain(slot))
        assert alice.w("POST", f"/v1/sandboxes/{sb}/pause").status_code == 200
        r = alice.w("PATCH", f"/v1/sandboxes/{sb}/network", {"allow_out": [], "deny_out": ["203.0.113.0/24"]})
        assert r.status_code == 200, r.text
        assert any("-d 203.0.113.0/24 -j REJECT" in line for line in user_chain(slot))
        assert alice.w("POST", f"/v1/sandboxes/{sb}/resume").status_code == 200
        r = alice.w("PATCH", f"/v1/sandboxes/{sb}/network", {"allow_out": [], "deny_out": []})
        assert r.json() == {"allow_out": [], "deny_out": []}
        assert user_chain(slot) == []
        assert alice.w("GET", f"/v1/sandboxes/{sb}/network").json() == {"allow_out": [], "deny_out": []}
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sb}")


BAD: list[tuple[dict[str, Any], str]] = [
    ({"allow_out": ["10.0.0.1/8"]}, "network.allow_out[0]: '10.0.0.1/8' is not an IPv4 address or CIDR"),
    ({"deny_out": ["0.0.0.0/0", "999.1.1.1"]}, "network.deny_out[1]: '999.1.1.1' is not an IPv4 address"),
    ({"allow_out": ["fd00::/8"]}, "IPv6"),
    ({"allow_out": ["exa mple.com"]}, "is not an IPv4 address, a CIDR or a domain name"),
    ({"allow_out": ["*.*.example.com"]}, "is not an IPv4 address, a CIDR or a domain name"),
    ({"allow_out": ["-bad-.example.com"]}, "is not an IPv4 address, a CIDR or a domain name"),
    ({"allow_out": ["a" * 64 + ".com"]}, "is not an IPv4 address, a CIDR or a domain name"),
    ({"allow_out": [("a" * 60 + ".") * 5 + "com"]}, "at most 253 characters"),
    ({"allow_out": [""]}, "must not be empty"),
    ({"allow_out": [f"10.{i // 256}.{i % 256}.0/24" for i in range(200)], "deny_out": ["1.2.3.4"] * 57},
     "257 rules; at most 256"),
]  # fmt: skip


def test_bad_rules_are_400_with_a_clear_message(alice: Tenant) -> None:
    for body, message in BAD:
        assert message in error(alice.w("POST", "/v1/sandboxes", {"network": body}), 400), body
    for body in ({"allowOut": []}, {"allow_out": "1.2.3.4"}, {"allow_out": [1]}):
        error(alice.w("POST", "/v1/sandboxes", {"network": body}), 400)
    msg = error(
        alice.w("POST", "/v1/sandboxes", {"internet": False, "network": {"deny_out": ["1.2.3.4"]}}), 400
    )
    assert "internet" in msg
    sb = alice.create(network={"allow_out": ["203.0.113.9"]})
    try:
        for body, message in BAD:
            assert message in error(alice.w("PATCH", f"/v1/sandboxes/{sb}/network", body), 400), body
        error(alice.w("PATCH", f"/v1/sandboxes/{sb}/network", {"allowOut": []}), 400)
        # Nothing changed.
        assert alice.w("GET", f"/v1/sandboxes/{sb}/network").json()["allow_out"] == ["203.0.113.9/32"]
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sb}")


def test_another_team_and_a_sandbox_without_internet(alice: Tenant, bob: Tenant) -> None:
    sb = alice.create(network={"deny_out": ["203.0.113.0/24"]})
    off = alice.create(internet=False)
    try:
        assert bob.w("GET", f"/v1/sandboxes/{sb}/network").status_code == 404
        assert bob.w("PATCH", f"/v1/sandboxes/{sb}/network", {"deny_out": []}).status_code == 404
        assert alice.w("GET", f"/v1/sandboxes/{sb}/network").json()["deny_out"] == ["203.0.113.0/24"]
        r = alice.w("PATCH", f"/v1/sandboxes/{off}/network", {"deny_out": ["1.2.3.4"]})
        assert r.status_code == 409 and "internet" in r.json()["error"]["message"], r.text
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sb}")
        alice.w("DELETE", f"/v1/sandboxes/{off}")
    r = alice.w("PATCH", f"/v1/sandboxes/{sb}/network", {"deny_out": []})
    assert r.status_code in (404, 409), r.text  # destroyed: stopped
