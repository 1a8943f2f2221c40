"""Per-sandbox egress rules (issue 14) on a real agent: CIDR allow-lists, name rules through the
agent's resolver, changes while running, and what no rule opens.

Every packet stays on this machine: the "internet" is ``warren-test-egress``, a network
namespace this module creates, at documentation addresses (TEST-NET-3, not private): two web
servers and a DNS server answering for ``*.warren.test``. The agent forwards its sandboxes'
queries there (``WARREN_AGENT_DNS_UPSTREAM``).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.leaks import slot_held_by_another, slot_of, wait_no_leaks
from warren import ids
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

NS, VETH = "warren-test-egress", "wtegr0"
HOST_SIDE = "203.0.113.161"
WEB_A, WEB_B, DNS = "203.0.113.170", "203.0.113.171", "203.0.113.180"
# A private network an operator may open for a team (a named range: egress_allow).
PRIVATE_HOST, PRIVATE = "10.213.9.1", "10.213.9.2"
PRIVATE_NET = "10.213.9.0/30"
NAMES = {"a.warren.test": WEB_A, "b.warren.test": WEB_B}
WILD = ("wild.warren.test", WEB_A)  # every name below it

# The fake internet: a web server on each WEB address (answers its own address) and a DNS
# server (UDP and TCP) for NAMES and WILD; every other name is NXDOMAIN.
SERVERS = r"""
import socket, socketserver, struct, sys, threading, json
names, wild = json.loads(sys.argv[1]), json.loads(sys.argv[2])
class Web(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(4096)
        body = self.request.getsockname()[0].encode()
        self.request.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
def answer(q):
    off, labels = 12, []
    while q[off]:
        labels.append(q[off + 1:off + 1 + q[off]].decode()); off += 1 + q[off]
    name, qtype, end = ".".join(labels).lower(), struct.unpack("!H", q[off + 1:off + 3])[0], off + 5
    ip = names.get(name) or (wild[1] if name.endswith("." + wild[0]) else None)
    rcode, an = (0, 1 if qtype == 1 else 0) if ip else (3, 0)
    head = struct.pack("!HHHHHH", struct.unpack("!H", q[:2])[0], 0x8180 | rcode, 1, an, 0, 0)
    rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 300, 4) + socket.inet_aton(ip) if an else b""
    return head + q[12:end] + rr
class Udp(socketserver.BaseRequestHandler):
    def handle(self):
        self.request[1].sendto(answer(self.request[0]), self.client_address)
class Tcp(socketserver.BaseRequestHandler):
    def handle(self):
        n = struct.unpack("!H", self.request.recv(2))[0]
        r = answer(self.request.recv(n)); self.request.sendall(struct.pack("!H", len(r)) + r)
socketserver.TCPServer.allow_reuse_address = True
servers = [socketserver.ThreadingTCPServer((ip, 8080), Web) for ip in sys.argv[3:]]  # web on each
servers += [socketserver.ThreadingUDPServer((sys.argv[3 + 2], 53), Udp),
            socketserver.ThreadingTCPServer((sys.argv[3 + 2], 53), Tcp)]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
servers[0].serve_forever()
"""

# In a sandbox: each (host, port) fetched at once → {"host:port": "open <body>" | "blocked <why>"}.
FETCH = """
import json, socket, sys, threading
out = {}
def go(host, port):
    try:
        s = socket.create_connection((host, port), timeout=1.5)  # a blocked SYN: dropped or refused
        s.settimeout(30)  # connected: the rules let it through; the answer may be slow under load
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        out[f"{host}:{port}"] = "open " + s.recv(4096).split(b"\\r\\n\\r\\n", 1)[-1].decode()
    except OSError as e:
        out[f"{host}:{port}"] = "blocked " + type(e).__name__ + " " + str(e)
ts = [threading.Thread(target=go, args=t) for t in json.loads(sys.argv[1])]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(out))
"""
RESOLVE = """
import json, socket, sys
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = socket.gethostbyname(name)
    except OSError as e:
        out[name] = "error " + type(e).__name__
print(json.dumps(out))
"""
# A DNS query for argv[1] straight to the server at argv[2] (around the sandbox's resolver).
DIRECT_DNS = """
import socket, struct, sys
q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in sys.argv[1].split(".")) + b"\\0\\0\\1\\0\\1"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.5)
try:
    s.connect((sys.argv[2], 53)); s.send(q); print("answered", len(s.recv(512)))
except OSError as e:
    print("blocked", type(e).__name__)
"""


def sh(cmd: str) -> None:
    subprocess.run(cmd.split(), check=True, capture_output=True)


@pytest.fixture(scope="module")
def internet() -> Iterator[None]:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)  # a killed run's leftover
    subprocess.run(["ip", "link", "del", VETH], capture_output=True)
    sh(f"ip netns add {NS}")
    sh(f"ip link add {VETH} type veth peer name eth0 netns {NS}")
    sh(f"ip addr add {HOST_SIDE}/27 dev {VETH}")
    for ip in (WEB_A, WEB_B, DNS):
        sh(f"ip -n {NS} addr add {ip}/27 dev eth0")
    sh(f"ip addr add {PRIVATE_HOST}/30 dev {VETH}")
    sh(f"ip -n {NS} addr add {PRIVATE}/30 dev eth0")
    for cmd in (f"ip link set {VETH} up", f"ip -n {NS} link set eth0 up", f"ip -n {NS} link set lo up"):
        sh(cmd)
    args = [json.dumps(NAMES), json.dumps(WILD), WEB_A, WEB_B, DNS, PRIVATE]
    server = subprocess.Popen(["ip", "netns", "exec", NS, "python3", "-c", SERVERS, *args])
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["python3", "-c", DIRECT_DNS, "a.warren.test", DNS], capture_output=True,
                             text=True).stdout.split()[:1] != ["answered"]:  # fmt: skip
            assert server.poll() is None and time.monotonic() < deadline, "fake internet did not start"
            time.sleep(0.1)
        yield
    finally:
        server.kill()
        server.wait()
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


@pytest.fixture(scope="module")
def agent(agent_root: Path, internet: None) -> Iterator[AgentProcess]:
    a = AgentProcess.standalone(agent_root / "agent", env={"WARREN_AGENT_DNS_UPSTREAM": DNS}).start()
    try:
        yield a
    finally:
        a.finish()


def rules(allow: list[str] | None = None, deny: list[str] | None = None) -> pb.EgressRules:
    return pb.EgressRules(allow_out=allow or [], deny_out=deny or [])


def fetch(agent: AgentProcess, sb: str, *hosts: str) -> dict[str, str]:
    res = agent.py(sb, FETCH, json.dumps([(h, 8080) for h in hosts]))
    assert res.exit_code == 0, res.stderr
    return {k.rsplit(":", 1)[0]: v for k, v in json.loads(res.stdout).items()}


def reachable(agent: AgentProcess, sb: str, *hosts: str) -> set[str]:
    return {h for h, v in fetch(agent, sb, *hosts).items() if v.startswith("open")}


def resolve(agent: AgentProcess, sb: str, *names: str) -> dict[str, str]:
    res = agent.py(sb, RESOLVE, *names)
    assert res.exit_code == 0, res.stderr
    return dict(json.loads(res.stdout))


def update(agent: AgentProcess, sb: str, r: pb.EgressRules) -> None:
    agent.stub.UpdateNetwork(pb.UpdateNetworkRequest(sandbox_id=sb, egress=r), timeout=30)


def iptables_dump() -> str:
    return subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True, check=True).stdout


def destroy(agent: AgentProcess, *made: pb.CreateSandboxResponse) -> None:
    for r in made:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id), timeout=60)
    for r in made:
        assert wait_no_leaks(agent, r.sandbox_id, r.host_ip) == []
        n = slot_of(r.host_ip)
        dump = iptables_dump()
        # (Unless the other test worker's agent has taken the freed slot meanwhile.)
        assert (f"WARREN-U{n}" not in dump and f"WARREN-L{n}" not in dump) or slot_held_by_another(
            n, agent.data_dir
        ), dump


def test_an_allow_list_reaches_only_its_server_and_changes_while_running(agent: AgentProcess) -> None:
    r = agent.create(memory_mb=128, egress=rules([WEB_A], ["0.0.0.0/0"]))
    try:
        assert reachable(agent, r.sandbox_id, WEB_A, WEB_B) == {WEB_A}
        assert fetch(agent, r.sandbox_id, WEB_A)[WEB_A] == f"open {WEB_A}"
        update(agent, r.sandbox_id, rules([WEB_B], ["0.0.0.0/0"]))
        assert reachable(agent, r.sandbox_id, WEB_A, WEB_B) == {WEB_B}
        update(agent, r.sandbox_id, rules(deny=[f"{WEB_B}/32"]))  # a deny-list
        assert reachable(agent, r.sandbox_id, WEB_A, WEB_B) == {WEB_A}
        update(agent, r.sandbox_id, rules())  # no rules: the chains go
        assert reachable(agent, r.sandbox_id, WEB_A, WEB_B) == {WEB_A, WEB_B}
        assert f"WARREN-U{slot_of(r.host_ip)}" not in iptables_dump()
    finally:
        destroy(agent, r)


def test_a_name_rule_lets_the_allowed_name_through_and_not_another(agent: AgentProcess) -> None:
    r = agent.create(memory_mb=128, egress=rules(["a.warren.test", "*.wild.warren.test"], ["0.0.0.0/0"]))
    sb = r.sandbox_id
    gateway = agent.exec(sb, "cat", "/etc/resolv.conf").stdout.decode()
    try:
        assert gateway.split() == ["nameserver", str(slot_gateway(r.host_ip))]
        got = resolve(agent, sb, "a.warren.test", "x.wild.warren.test", "b.warren.test", "wild.warren.test")
        assert got["a.warren.test"] == WEB_A and got["x.wild.warren.test"] == WEB_A
        assert got["b.warren.test"].startswith("error") and got["wild.warren.test"].startswith("error")
        assert fetch(agent, sb, "a.warren.test")["a.warren.test"] == f"open {WEB_A}"
        assert reachable(agent, sb, WEB_B) == set()  # b's address, never learned
        # Root points resolv.conf at the real server, or asks it directly: DNS elsewhere is refused.
        assert agent.py(sb, DIRECT_DNS, "b.warren.test", DNS).stdout.startswith(b"blocked")
        agent.exec(sb, "sh", "-c", f"echo nameserver {DNS} > /etc/resolv.conf")
        assert resolve(agent, sb, "b.warren.test")["b.warren.test"].startswith("error")
        assert reachable(agent, sb, WEB_B) == set()
        # A deny-list of names: b is NXDOMAIN, any other name resolves (without learning).
        agent.exec(sb, "sh", "-c", f"echo nameserver {slot_gateway(r.host_ip)} > /etc/resolv.conf")
        update(agent, sb, rules(deny=["b.warren.test"]))
        got = resolve(agent, sb, "a.warren.test", "b.warren.test")
        assert got["a.warren.test"] == WEB_A and got["b.warren.test"].startswith("error")
        update(agent, sb, rules())  # no name rules: the host's resolvers again
        assert str(slot_gateway(r.host_ip)) not in agent.exec(sb, "cat", "/etc/resolv.conf").stdout.decode()
    finally:
        destroy(agent, r)


def slot_gateway(host_ip: str) -> str:
    a, b, c, d = host_ip.split(".")
    return f"{a}.{b}.{c}.{int(d) - 1}"


def test_no_rule_opens_the_host_or_another_sandbox(agent: AgentProcess) -> None:
    other = agent.create(memory_mb=128)
    # Everything "allowed": the whole internet, the host's gateway address, the other sandbox.
    wide = [
        "0.0.0.0/0", "10.0.0.0/8", "10.11.0.0/16", slot_gateway(other.host_ip), other.host_ip,
        "127.0.0.1", "169.254.169.254", HOST_SIDE,
    ]  # fmt: skip
    r = agent.create(memory_mb=128, egress=rules(wide))
    try:
        agent.exec(other.sandbox_id, "sh", "-c", "nohup python3 -m http.server 8080 >/dev/null 2>&1 &")
        deadline = time.monotonic() + 60
        while subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://{other.host_ip}:8080/"]).returncode:
            assert time.monotonic() < deadline, "the other sandbox's server did not start"
            time.sleep(0.1)
        assert reachable(agent, r.sandbox_id, WEB_A) == {WEB_A}
        agent_port = agent.address.rsplit(":", 1)[1]
        port = int(agent_port)
        targets = [(other.host_ip, 8080), (slot_gateway(r.host_ip), port), (HOST_SIDE, port)]
        res = json.loads(agent.py(r.sandbox_id, FETCH, json.dumps(targets)).stdout)
        assert all(v.startswith("blocked") for v in res.values()), res
    finally:
        destroy(agent, r, other)


def test_a_range_opened_by_the_operator_is_the_only_way_into_a_private_network(agent: AgentProcess) -> None:
    """A user's allow of a private address opens nothing by itself; inside a range the
    operator opened for the team (egress_allow) the user's rules narrow as anywhere else."""
    alone = agent.create(memory_mb=128, egress=rules([PRIVATE, PRIVATE_NET], ["0.0.0.0/0"]))
    opened = agent.create(memory_mb=128, egress_allow=[PRIVATE_NET])
    try:
        assert reachable(agent, alone.sandbox_id, PRIVATE, WEB_A) == set()
        assert reachable(agent, opened.sandbox_id, PRIVATE, WEB_A) == {PRIVATE, WEB_A}
        update(agent, opened.sandbox_id, rules(deny=[PRIVATE]))
        assert reachable(agent, opened.sandbox_id, PRIVATE, WEB_A) == {WEB_A}
        update(agent, opened.sandbox_id, rules([PRIVATE], ["0.0.0.0/0"]))
        assert reachable(agent, opened.sandbox_id, PRIVATE, WEB_A) == {PRIVATE}
    finally:
        destroy(agent, alone, opened)


def test_root_in_the_sandbox_cannot_lift_the_rules(agent: AgentProcess) -> None:
    r = agent.create(memory_mb=128, egress=rules([WEB_A], ["0.0.0.0/0"]))
    sb = r.sandbox_id
    try:
        # No CAP_NET_ADMIN over its netns (owned by the host's user namespace): no iptables, no
        # interface changes; and the rules are in the host's netns anyway.
        tamper = """
import fcntl, socket, struct, subprocess
s = socket.socket()
try:
    fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"eth0", 0, bytes(14)))  # SIOCSIFFLAGS: down
    print("changed")
except OSError as e:
    print("denied", e.errno)
for cmd in (["iptables", "-F"], ["iptables", "-P", "OUTPUT", "ACCEPT"], ["nft", "flush", "ruleset"]):
    try:
        print(subprocess.run(cmd, capture_output=True).returncode)
    except FileNotFoundError:
        print("absent")
"""
        out = agent.py(sb, tamper).stdout.decode().split("\n")
        assert out[0] == "denied 1", out  # EPERM
        assert all(x != "0" for x in out[1:4]), out
        assert reachable(agent, sb, WEB_A, WEB_B) == {WEB_A}
    finally:
        destroy(agent, r)


def test_bad_rules_and_updates_are_refused(agent: AgentProcess) -> None:
    for bad in (
        rules(["not a name"]), rules(["10.0.0.1/8"]), rules(deny=["fd00::/8"]), rules(["a..b"]),
        rules(["x" * 64 + ".com"]), rules([f"10.{i // 256}.{i % 256}.0/24" for i in range(257)]),
        rules(["*.*.example.com"]), rules(["1.2.3.4.5"]),
    ):  # fmt: skip
        with pytest.raises(grpc.RpcError) as ei:
            agent.create(egress=bad)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad  # type: ignore[attr-defined]
    off = agent.create(memory_mb=128, internet=False)
    try:
        with pytest.raises(grpc.RpcError) as ei:
            update(agent, off.sandbox_id, rules([WEB_A]))
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    finally:
        destroy(agent, off)
    with pytest.raises(grpc.RpcError) as ei:
        update(agent, ids.new_id(ids.Kind.SANDBOX)[1], rules([WEB_A]))
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_a_restarted_agent_keeps_the_rules_and_restarts_the_resolver(agent: AgentProcess) -> None:
    """Last in the module: it restarts the module's agent. The chains stay in the kernel while
    no agent runs; the resolver (a socket of the agent) comes back with re-adoption. A kill -9
    leaves the rules in force too (nothing removes them), and the next agent's clean-up finds
    the chains of a sandbox that did not survive."""
    r = agent.create(memory_mb=128, egress=rules(["a.warren.test"], ["0.0.0.0/0"]))
    sb = r.sandbox_id
    try:
        assert resolve(agent, sb, "a.warren.test")["a.warren.test"] == WEB_A
        agent.kill9()
        assert f"WARREN-U{slot_of(r.host_ip)}" in iptables_dump()  # still enforced meanwhile
        agent.start()
        got = resolve(agent, sb, "a.warren.test", "b.warren.test")
        assert got["a.warren.test"] == WEB_A and got["b.warren.test"].startswith("error")
        assert reachable(agent, sb, "a.warren.test", WEB_B) == {"a.warren.test"}
        update(agent, sb, rules([WEB_B], ["0.0.0.0/0"]))
        assert reachable(agent, sb, WEB_A, WEB_B) == {WEB_B}
    finally:
        destroy(agent, r)
