"""Session 22: one tenant's resolvers took the agent's whole upstream DNS count from every other team.

A sandbox with name rules (``allow_out``/``deny_out`` names) resolves through the agent's resolver
for it (agent/dns_proxy.py), 16 queries in flight. All resolvers together forward at most 256 at
once (each holds a socket), and a query the upstream never answers holds its place for 2 s.
Session 12 gave each resolver a floor of 2 places of its own; the shared 256 had no per-tenant
share. One tenant's 20 sandboxes (its default quota) sending queries the upstream drops held all
of it, and another team's sandbox, within its own 16, got 2 queries forwarded at once and every
other one answered SERVFAIL.

Written as the control plane calls the agent for two teams (``owner_team_id``; name rules, as a
tenant sets them): tenant A's 20 sandboxes each keep 16 unanswerable queries in flight at their
resolvers, then tenant B's sandbox asks 10 ordinary names at once. Before: 8 of B's 10 were
SERVFAIL. Now one tenant's resolvers hold at most half the shared count
(``dns_proxy.PER_TENANT_SHARE``): all of B's are answered (NXDOMAIN, the upstream's answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from tests.harness.agent import AgentProcess, scratch_agent
from warren.agent.runtime.bundle import CGROUP_PARENT
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

ATTACKERS = 20  # a team's default sandbox quota; 20 of 14 shared places each pass 256
PROBES = 10  # B's queries at once: within its resolver's 16
RULES = pb.EgressRules(allow_out=["example.com"], deny_out=["0.0.0.0/0"])  # a name: a resolver

# In an attacker's sandbox: its resolver kept at 16 queries the upstream never answers (they
# announce an additional record they do not carry), for argv[1] seconds or until sent SIGUSR1.
FLOOD = r"""
import signal, socket, struct, sys, time
signal.signal(signal.SIGUSR1, lambda *_: globals().update(end=0))
ns = [l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0]
name = b'\x07example\x03com\x00\x00\x01\x00\x01'
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((ns, 53)); s.setblocking(False)
qid, end = 0, time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for _ in range(16):
        qid = (qid + 1) & 0xFFFF
        s.send(struct.pack('!HHHHHH', qid, 0x0100, 1, 0, 0, 1) + name)
    time.sleep(0.2)
"""
# In the victim's sandbox: PROBES ordinary queries at once; the rcode of each answer.
PROBE = r"""
import json, socket, struct, sys
ns = [l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0]
name = b'\x07example\x03com\x00\x00\x01\x00\x01'
socks = []
for i in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    s.connect((ns, 53)); s.send(struct.pack('!HHHHHH', 100 + i, 0x0100, 1, 0, 0, 0) + name)
    socks.append(s)
out = []
for s in socks:
    try:
        out.append(s.recv(512)[3] & 0xF)
    except OSError:
        out.append('timeout')
print(json.dumps(out))
"""
RCODE_NXDOMAIN, RCODE_SERVFAIL = 3, 2


class _Upstream(asyncio.DatagramProtocol):
    """The host's resolver as seen here: NXDOMAIN for an ordinary query, nothing at all for one
    announcing additional records it does not carry."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= 12 and struct.unpack_from("!H", data, 10)[0] == 0:
            head = struct.pack("!HHHHHH", struct.unpack_from("!H", data)[0], 0x8183, 1, 0, 0, 0)
            self.t.sendto(head + data[12:], addr)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    """A fake upstream on a free loopback port, served by a thread of its own."""
    loop = asyncio.new_event_loop()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(loop.create_datagram_endpoint(_Upstream, local_addr=("127.0.0.1", port)))
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    assert ready.wait(10)
    yield port
    loop.call_soon_threadsafe(loop.stop)


@pytest.fixture(scope="module")
def agent(upstream: int) -> Iterator[AgentProcess]:
    env = {"WARREN_AGENT_DNS_UPSTREAM": f"127.0.0.1:{upstream}"}
    with scratch_agent("attack-s22-dns-share", env=env) as a:
        yield a


def _end_flood(sid: str) -> None:
    """SIGUSR1 to the processes of the sandbox's commands (its flood ends, exit 0)."""
    procs = Path("/sys/fs/cgroup/memory") / CGROUP_PARENT / sid / "cmds" / "cgroup.procs"
    for pid in map(int, procs.read_text().split()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)


def _destroy(agent: AgentProcess, sid: str) -> None:
    with contextlib.suppress(grpc.RpcError):
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=120)


def test_one_teams_resolvers_leave_another_teams_resolver_its_queries(agent: AgentProcess) -> None:
    team_a, team_b = str(uuid.uuid4()), str(uuid.uuid4())
    made: list[str] = []
    create = lambda team: agent.create(memory_mb=128, owner_team_id=team, egress=RULES).sandbox_id  # noqa: E731
    try:
        with ThreadPoolExecutor(4) as pool:  # 4 at once (the scratch agent's finish mops up a failure's)
            made.extend(pool.map(create, [team_a] * ATTACKERS))
        victim = agent.create(memory_mb=128, owner_team_id=team_b, egress=RULES).sandbox_id
        made.append(victim)
        quiet = json.loads(agent.py(victim, PROBE, str(PROBES)).stdout)
        assert quiet == [RCODE_NXDOMAIN] * PROBES, f"B's resolver before the flood: {quiet}"
        with ThreadPoolExecutor(ATTACKERS) as pool:
            floods = [pool.submit(agent.py, sid, FLOOD, "20") for sid in made[:ATTACKERS]]
            time.sleep(6)  # every attacker's resolver at its 16 (each query held 2 s)
            answers = json.loads(agent.py(victim, PROBE, str(PROBES)).stdout)
            for sid in made[:ATTACKERS]:  # B has its answers: the floods end now, not at 20 s
                _end_flood(sid)
            for f in floods:
                assert f.result().exit_code == 0
    finally:
        with ThreadPoolExecutor(4) as pool:
            pool.map(_destroy, [agent] * len(made), made)
    print(f"B's {PROBES} queries while A's {ATTACKERS} sandboxes flood: rcodes {answers}")
    servfail = answers.count(RCODE_SERVFAIL)
    assert servfail == 0, f"{servfail} of B's {PROBES} queries were SERVFAIL: A held the upstream count"
    assert answers == [RCODE_NXDOMAIN] * PROBES, answers
