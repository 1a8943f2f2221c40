"""Network attacks from inside a sandbox (D4, D15): the host's listeners, private networks,
cloud metadata, IPv6, and the operator's named egress ranges.

Every packet stays on this machine: the probes go to the host's own addresses (delivered
locally) or to ``warren-sec-lab``, a network namespace this module creates, which plays the
private networks, a CGNAT peer, the cloud metadata server (169.254.169.254, routed there for
sandbox traffic only by a policy rule) and a public server (a documentation address, which is
not private). Nothing is ever routed off the machine, whatever the code under test does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.leaks import slot_held_by_another
from tests.harness.platform import Platform, running_platform
from tests.harness.tenant import Tenant
from warren import ids
from warren.agent.egress import MAX_ALLOW, parse_allow
from warren.errors import InvalidRequest

pytestmark = pytest.mark.root

LAB_NS, LAB_VETH = "warren-sec-lab", "wslab0"
PRIVATE, PLATFORM_DB, OTHER_PRIVATE = "10.213.7.2", "10.213.7.6", "172.31.77.2"
HOME_LAN, CGNAT, METADATA, PUBLIC = "192.168.213.2", "100.64.77.2", "169.254.169.254", "198.51.100.2"
# (host side of the lab veth, lab side addresses)
LAB_NETS = (
    ("10.213.7.1/29", (f"{PRIVATE}/29", f"{PLATFORM_DB}/29")),
    ("172.31.77.1/30", (f"{OTHER_PRIVATE}/30",)),
    ("192.168.213.1/30", (f"{HOME_LAN}/30",)),
    ("100.64.77.1/30", (f"{CGNAT}/30",)),
    ("169.254.77.1/30", ("169.254.77.2/30", f"{METADATA}/32")),
    ("198.51.100.1/30", (f"{PUBLIC}/30",)),
)
META_TABLE, META_PREF = "7713", "7713"
# The operator's named ranges, and "the database" on a private address the agent is told to
# close (WARREN_AGENT_EGRESS_DENY) even inside an opened range.
RANGES = "labnet=10.213.7.0/29;other=172.31.77.0/30"

LAB_SERVER = """
import socket, socketserver
class H(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(b"HELLO " + self.request.getsockname()[0].encode() + b"\\n")
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("0.0.0.0", 80), H).serve_forever()
"""

# Run inside a sandbox: connect to every (host, port) at once; "open <greeting>" or "blocked <why>".
PROBE = """
import json, socket, sys, threading
out = {}
def go(host, port):
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)[0]
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(1)
        s.connect(addr)
        out[f"{host}:{port}"] = "open " + s.recv(64).decode(errors="replace").strip()
    except OSError as e:
        out[f"{host}:{port}"] = "blocked " + type(e).__name__
threads = [threading.Thread(target=go, args=t) for t in json.loads(sys.argv[1])]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""


def sh(cmd: str) -> None:
    subprocess.run(cmd.split(), check=True, capture_output=True)


def probe(t: Tenant, sb: str, targets: list[tuple[str, int]]) -> dict[str, str]:
    body = {"cmd": "python3", "args": ["-c", PROBE, json.dumps(targets)], "timeout_sec": 30}
    r = t.w("POST", f"/v1/sandboxes/{sb}/exec", body)
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    return dict(json.loads(r.json()["stdout"]))


def opened(results: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in results.items() if v.startswith("open")}


def slot_of(t: Tenant, sb: str) -> int:
    host_ip = t.w("GET", f"/v1/sandboxes/{sb}").json()["host_ip"]
    return (int(ipaddress.IPv4Address(host_ip)) - int(ipaddress.IPv4Address("10.11.0.0"))) // 4


def allow_rules(slot: int) -> list[str]:
    dump = subprocess.run(["iptables", "-w", "-S", "WARREN-ALLOW"], capture_output=True, text=True).stdout
    return [line for line in dump.splitlines() if f" -i wv{slot} " in line]


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    """The suite's live platform, with the operator's named ranges configured (CP) and the
    lab's "database" address closed by the agent."""
    if os.geteuid() != 0:
        pytest.skip("real agents need root (namespaces, cgroups, overlayfs)")
    env = {"WARREN_EGRESS_RANGES": RANGES, "WARREN_AGENT_EGRESS_DENY": PLATFORM_DB}
    async with running_platform(db_url, platform_dir, env) as p:
        yield p


@pytest.fixture(scope="module")
def lab(platform: Platform) -> Iterator[None]:
    """The lab namespace and its server on port 80 of every lab address."""
    # A killed run's leftovers: the netns, its host end (deleted now, not when the netns goes),
    # and the metadata rule and route.
    subprocess.run(["ip", "netns", "del", LAB_NS], capture_output=True)
    subprocess.run(["ip", "link", "del", LAB_VETH], capture_output=True)
    subprocess.run(["ip", "rule", "del", "pref", META_PREF], capture_output=True)
    subprocess.run(["ip", "route", "flush", "table", META_TABLE], capture_output=True)
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True, check=True).stdout
    for line in routes.splitlines():
        dest = line.split()[0]
        for net, _ in LAB_NETS:
            lab_net = ipaddress.IPv4Interface(net).network
            if dest != "default" and ipaddress.IPv4Network(dest).overlaps(lab_net):
                pytest.fail(f"this machine already routes {dest}: the lab cannot use {net}")
    sh(f"ip netns add {LAB_NS}")
    sh(f"ip link add {LAB_VETH} type veth peer name eth0 netns {LAB_NS}")
    for host_side, lab_side in LAB_NETS:
        sh(f"ip addr add {host_side} dev {LAB_VETH}")
        for a in lab_side:
            sh(f"ip -n {LAB_NS} addr add {a} dev eth0")
    sh(f"ip link set {LAB_VETH} up")
    sh(f"ip -n {LAB_NS} link set eth0 up")
    sh(f"ip -n {LAB_NS} link set lo up")
    # Sandbox traffic to the metadata address goes to the lab; the host's own does not change.
    sh(f"ip route add {METADATA}/32 via 169.254.77.2 dev {LAB_VETH} table {META_TABLE}")
    sh(f"ip rule add from 10.11.0.0/16 to {METADATA}/32 lookup {META_TABLE} pref {META_PREF}")
    server = subprocess.Popen(["ip", "netns", "exec", LAB_NS, "python3", "-c", LAB_SERVER])
    try:
        deadline = time.monotonic() + 60
        while True:  # the host (not a sandbox) reaches the lab: the lab works
            with contextlib.suppress(OSError), socket.create_connection((PRIVATE, 80), timeout=1) as s:
                if s.recv(64).startswith(b"HELLO"):
                    break
            assert time.monotonic() < deadline, "lab server did not start"
            time.sleep(0.1)
        yield
    finally:
        server.kill()
        server.wait()
        subprocess.run(["ip", "rule", "del", "pref", META_PREF], capture_output=True)
        subprocess.run(["ip", "route", "flush", "table", META_TABLE], capture_output=True)
        subprocess.run(["ip", "netns", "del", LAB_NS], capture_output=True)


class HostListener:
    """A server on the host itself, bound to every address ([::] or 0.0.0.0)."""

    def __init__(self, family: socket.AddressFamily) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                with conn:
                    conn.sendall(b"HELLO-FROM-HOST\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def listeners() -> Iterator[tuple[HostListener, HostListener]]:
    v6, v4 = HostListener(socket.AF_INET6), HostListener(socket.AF_INET)
    for addr, port in (("::1", v6.port), ("127.0.0.1", v4.port)):  # they do answer
        with socket.create_connection((addr, port), timeout=2) as s:
            assert s.recv(64) == b"HELLO-FROM-HOST\n"
    yield v6, v4
    v6.close()
    v4.close()


@pytest.fixture(scope="module")
def sandboxes(alice: Tenant, lab: None) -> Iterator[dict[str, str]]:
    """alice's sandboxes, internet on and off, made before any range is opened for her."""
    made = {"on": alice.create(), "off": alice.create(internet=False)}
    yield made
    for sb in made.values():  # the agent stops with its sandboxes kept: delete them here
        alice.w("DELETE", f"/v1/sandboxes/{sb}")


def host_addresses() -> list[str]:
    """Every address of the host but loopback (inside a sandbox that is the sandbox itself);
    link-local IPv6 ones scoped to the sandbox's only link."""
    out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    addrs = []
    for line in out.splitlines():
        ip = ipaddress.ip_interface(line.split()[3]).ip
        if not ip.is_loopback:
            addrs.append(f"{ip}%eth0" if ip.version == 6 and ip.is_link_local else str(ip))
    return addrs


# ------------------------------------------------------------------------------------ D4


def test_host_listeners_on_any_address_are_unreachable_from_every_sandbox(
    alice: Tenant, sandboxes: dict[str, str], listeners: tuple[HostListener, HostListener]
) -> None:
    """D4: a host service on [::] answered a sandbox over IPv6 link-local, internet=false too."""
    v6, v4 = listeners
    for sb in sandboxes.values():
        addrs = host_addresses()  # after the sandboxes exist: their veths' addresses included
        gateway = str(ipaddress.IPv4Address(alice.w("GET", f"/v1/sandboxes/{sb}").json()["host_ip"]) - 1)
        assert gateway in addrs, (gateway, addrs)
        targets = [(a, v6.port if ":" in a else v4.port) for a in addrs]
        targets += [(a, v4.port) for a in addrs if ":" in a]  # a dual-stack guess, for good measure
        targets = list(dict.fromkeys(targets))
        results = probe(alice, sb, targets)
        assert len(results) == len(targets), (targets, results)
        assert opened(results) == {}, results


def test_ipv6_inside_a_sandbox_is_off_and_root_cannot_turn_it_on(
    alice: Tenant, sandboxes: dict[str, str]
) -> None:
    for sb in sandboxes.values():
        # No address but lo's ::1 and no IPv6 route out: ULA and link-local reach nothing.
        assert [line.split()[-1] for line in alice.sh(sb, "cat /proc/net/if_inet6").splitlines()] == ["lo"]
        routes = alice.sh(sb, "cat /proc/net/ipv6_route").splitlines()
        assert all(line.split()[-1] == "lo" for line in routes), routes
        r = alice.x(sb, "echo 0 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6")
        assert r.json()["exit_code"] != 0
        assert alice.sh(sb, "cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6") == "1\n"
        # ...and sandbox root cannot change the host's rules or its own link either.
        for cmd in ("ip link set eth0 down", "ip addr add 10.11.255.1/32 dev eth0"):
            assert alice.x(sb, f"{cmd} 2>&1").json()["exit_code"] != 0, cmd


# ----------------------------------------------------------------------------------- D15


def test_private_link_local_and_cgnat_addresses_are_closed_and_the_internet_is_open(
    alice: Tenant, sandboxes: dict[str, str]
) -> None:
    closed = [PRIVATE, PLATFORM_DB, OTHER_PRIVATE, HOME_LAN, CGNAT, METADATA, "169.254.77.2"]
    results = probe(alice, sandboxes["on"], [(a, 80) for a in [*closed, PUBLIC]])
    assert opened(results) == {f"{PUBLIC}:80": f"open HELLO {PUBLIC}"}, results
    # internet=false: not even the public server.
    assert opened(probe(alice, sandboxes["off"], [(a, 80) for a in [*closed, PUBLIC]])) == {}


def test_an_opened_range_reaches_one_teams_new_sandboxes_only(
    platform: Platform, alice: Tenant, bob: Tenant, sandboxes: dict[str, str]
) -> None:
    admin = {"Authorization": f"Bearer {platform.token}"}
    url = f"{platform.url}/v1/admin/teams/{alice.team_id}/egress"
    r = httpx.put(url, json={"ranges": ["labnet"]}, headers=admin, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"team_id": alice.team_id, "ranges": ["labnet"], "cidrs": ["10.213.7.0/29"]}
    try:
        mine, theirs = alice.create(), bob.create()
        mine_off = alice.create(internet=False)
        targets = [(PRIVATE, 80), (PLATFORM_DB, 80), (OTHER_PRIVATE, 80), (METADATA, 80)]
        # The range, and nothing else: not the platform's address inside it, not other ranges.
        assert opened(probe(alice, mine, targets)) == {f"{PRIVATE}:80": f"open HELLO {PRIVATE}"}
        assert opened(probe(bob, theirs, targets)) == {}
        assert opened(probe(alice, sandboxes["on"], targets)) == {}  # created before the change
        assert opened(probe(alice, mine_off, targets)) == {}  # internet=false: nothing leaves
        # The rules go with the sandbox.
        slot = slot_of(alice, mine)
        assert allow_rules(slot) == [f"-A WARREN-ALLOW -d 10.213.7.0/29 -i wv{slot} -j ACCEPT"]
        assert alice.w("DELETE", f"/v1/sandboxes/{mine}").status_code == 204
        # (Unless the other test worker's agent has taken the freed slot meanwhile.)
        assert allow_rules(slot) == [] or slot_held_by_another(slot, platform.agents[0].data_dir)
        assert alice.w("DELETE", f"/v1/sandboxes/{mine_off}").status_code == 204
        assert bob.w("DELETE", f"/v1/sandboxes/{theirs}").status_code == 204
    finally:
        assert httpx.put(url, json={"ranges": []}, headers=admin, timeout=60).status_code == 200


def test_egress_admin_api(platform: Platform, alice: Tenant) -> None:
    admin = {"Authorization": f"Bearer {platform.token}"}
    with httpx.Client(base_url=platform.url, headers=admin, timeout=30) as c:
        r = c.get("/v1/admin/egress-ranges")
        assert r.status_code == 200
        assert r.json() == {
            "ranges": [
                {"name": "labnet", "cidrs": ["10.213.7.0/29"]},
                {"name": "other", "cidrs": ["172.31.77.0/30"]},
            ]
        }
        path = f"/v1/admin/teams/{alice.team_id}/egress"
        bad = c.put(path, json={"ranges": ["labnet", "nope"]})
        assert bad.status_code == 400 and "nope" in bad.json()["error"]["message"]
        assert c.put(path, json={"ranges": "labnet"}).status_code == 400
        assert c.put(path, json={"ranges": ["x"] * 33}).status_code == 400
        assert c.get(path).json()["ranges"] == []  # nothing changed
        unknown = f"/v1/admin/teams/{ids.team_id(uuid.uuid4())}/egress"
        assert c.put(unknown, json={"ranges": ["labnet"]}).status_code == 404
        assert c.get(unknown).status_code == 404
        r = c.put(path, json={"ranges": ["other", "labnet", "other"]})
        assert r.status_code == 200 and r.json()["ranges"] == ["other", "labnet"]
        assert c.get(path).json()["cidrs"] == ["172.31.77.0/30", "10.213.7.0/29"]
        assert c.put(path, json={"ranges": []}).json() == {
            "team_id": alice.team_id,
            "ranges": [],
            "cidrs": [],
        }
    # Tenants cannot open ranges for themselves.
    assert alice.w("PUT", path, {"ranges": ["labnet"]}).status_code in (401, 403)
    with httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {alice.token}"}) as owner:
        assert owner.put(path, json={"ranges": ["labnet"]}).status_code == 403
        assert owner.get(path).status_code == 403
        assert owner.get("/v1/admin/egress-ranges").status_code == 403


async def test_egress_changes_are_audited(platform: Platform, alice: Tenant) -> None:
    rows = await platform.sql(
        "SELECT action, scope, metadata FROM audit_logs WHERE resource_type = 'team_egress' "
        "AND team_id = CAST(:t AS uuid) ORDER BY created_at",
        t=str(ids.parse_id(ids.Kind.TEAM, alice.team_id)),
    )
    assert rows, "no audit row for the egress changes"
    assert all(r.action == "update" and r.scope == "admin" for r in rows)
    # (metadata also holds the caller's address and request id)
    assert ["labnet"] in [r.metadata.get("ranges") for r in rows]


def test_the_agent_refuses_malformed_ranges() -> None:
    """The CP is trusted for policy, not for syntax: whatever reaches iptables is a CIDR."""
    assert parse_allow(["10.0.0.0/8", " 10.0.0.0/8", "192.168.5.10/32"]) == ["10.0.0.0/8", "192.168.5.10/32"]
    for bad in (["garbage"], ["10.0.0.1/8"], ["fd00::/8"], ["1.2.3.4/32 -j ACCEPT"], ["-s 0/0"], [""]):
        with pytest.raises(InvalidRequest):
            parse_allow(bad)
    with pytest.raises(InvalidRequest):
        parse_allow([f"10.0.{i // 256}.{i % 256}/32" for i in range(MAX_ALLOW + 1)])
