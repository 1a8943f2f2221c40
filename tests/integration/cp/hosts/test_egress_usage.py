"""Per-team egress bytes (issue 18), end to end: a sandbox sends bytes to "the internet", the
agent counts them on the host, the monitor carries them into PostgreSQL, and the CP's
``/metrics`` reports them on the sandbox's team, never on another's. The count survives agent
restarts (the counters live in the host's iptables, the destroyed sandboxes' last readings in
the agent's data dir) and its sandbox's destroy, and a reading seen twice is counted once.

Every packet stays on this machine: the internet is ``warren-test-egbytes``, a network
namespace this module creates, at a documentation address (TEST-NET-1, not private), where a
sink counts what it receives.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.faults.invariants import reachable
from tests.harness.agent import AgentProcess
from tests.harness.cp import InProcessCP, User
from tests.harness.multihost import fleet
from warren.cp.hosts.monitor import HostMonitor

pytestmark = pytest.mark.root

NS, VETH = "warren-test-egbytes", "wtegb0"
HOST_SIDE, SINK = "192.0.2.245", "192.0.2.246"
PORT = 9000
AGENT_IP = "127.0.0.84"
N, M = 3 << 20, 1 << 20
# IP and TCP headers on top of the payload, and the acks of the sink's short answer: far below
# this, and far below a second count of the same bytes.
OVERHEAD = 1.2

# In the netns: every connection's bytes, read to the end and answered with their count.
SINK_SERVER = r"""
import socketserver, sys
class H(socketserver.BaseRequestHandler):
    def handle(self):
        n = 0
        while data := self.request.recv(1 << 16):
            n += len(data)
        self.request.sendall(str(n).encode())
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""
# In a sandbox: send argv[3] bytes to argv[1]:argv[2]; print what the sink says it got.
SEND = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
left, chunk = int(sys.argv[3]), b"x" * 65536
while left:
    left -= s.send(chunk[: min(left, len(chunk))])
s.shutdown(socket.SHUT_WR)
print(s.recv(64).decode())
"""


def sh(cmd: str) -> None:
    subprocess.run(cmd.split(), check=True, capture_output=True)


@pytest.fixture(scope="module")
def internet() -> Iterator[None]:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)  # a killed run's leftover
    subprocess.run(["ip", "link", "del", VETH], capture_output=True)
    sh(f"ip netns add {NS}")
    try:
        sh(f"ip link add {VETH} type veth peer name eth0 netns {NS}")
        sh(f"ip addr add {HOST_SIDE}/30 dev {VETH}")
        sh(f"ip -n {NS} addr add {SINK}/30 dev eth0")
        for cmd in (f"ip link set {VETH} up", f"ip -n {NS} link set eth0 up", f"ip -n {NS} link set lo up"):
            sh(cmd)
        server = subprocess.Popen(["ip", "netns", "exec", NS, "python3", "-c", SINK_SERVER, SINK, str(PORT)])
        try:
            deadline = time.monotonic() + 30
            while subprocess.run(["python3", "-c", SEND, SINK, str(PORT), "1"], capture_output=True,
                                 text=True).stdout.strip() != "1":  # fmt: skip
                assert server.poll() is None and time.monotonic() < deadline, "the sink did not start"
                time.sleep(0.1)
            yield
        finally:
            server.kill()
            server.wait()
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)
        subprocess.run(["ip", "link", "del", VETH], capture_output=True)


class World:
    def __init__(self, cp: InProcessCP, admin: User, agent: AgentProcess) -> None:
        self.cp, self.admin, self.agent = cp, admin, agent

    @property
    def monitor(self) -> HostMonitor:
        monitor: HostMonitor = self.cp.app.state.monitor
        return monitor

    async def create(self, user: User) -> str:
        r = await user.req("POST", "/v1/sandboxes", json={"template": "minimal"})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def send(self, user: User, sb: str, n: int) -> None:
        body = {"cmd": "python3", "args": ["-c", SEND, SINK, str(PORT), str(n)], "timeout_sec": 120}
        r = await user.req("POST", f"/v1/sandboxes/{sb}/exec", json=body)
        assert r.status_code == 200 and r.json()["stdout"].strip() == str(n), r.text

    async def egress(self) -> dict[str, float]:
        """One monitor pass, then the CP's per-team egress counters."""
        await reachable(self.cp.pool, [self.agent], 60)
        await self.monitor.run_once()
        r = await self.admin.req("GET", "/metrics")
        assert r.status_code == 200, r.text
        return {
            s.labels["team"]: s.value
            for family in text_string_to_metric_families(r.text)
            for s in family.samples
            if s.name == "warren_team_egress_bytes_total"
        }

    async def restart_agent(self) -> None:
        await self.agent.astop()
        await self.agent.astart()


@pytest.fixture(scope="module")
async def world(cp: InProcessCP, internet: None) -> AsyncIterator[World]:
    admin = await cp.signup(admin=True)
    async with fleet(cp, "egress") as f:
        yield World(cp, admin, await f.add(admin, AGENT_IP))


async def test_a_team_is_counted_what_its_sandboxes_send_and_no_more(world: World) -> None:
    alice, bob = await world.cp.signup(), await world.cp.signup()
    mine, theirs = await world.create(alice), await world.create(bob)
    await world.send(alice, mine, N)
    counted = await world.egress()
    assert N <= counted[alice.team_id] < N * OVERHEAD, counted
    assert counted[bob.team_id] == 0, counted
    # The same readings again: nothing more.
    assert (await world.egress())[alice.team_id] == counted[alice.team_id]

    # Across an agent restart (the counters are the host's), then the sandbox's destroy, with no
    # pass in between, and another restart before the pass (the last reading is on disk).
    await world.restart_agent()
    await world.send(alice, mine, M)
    r = await alice.req("DELETE", f"/v1/sandboxes/{mine}")
    assert r.status_code == 204, r.text
    await world.restart_agent()
    counted = await world.egress()
    assert N + M <= counted[alice.team_id] < (N + M) * OVERHEAD, counted
    assert counted[bob.team_id] == 0, counted
    assert (await world.egress())[alice.team_id] == counted[alice.team_id]
    r = await bob.req("DELETE", f"/v1/sandboxes/{theirs}")
    assert r.status_code == 204, r.text
