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
resolvers, then tenant B's sandbox asks 10 ordinary names at once, 4 times. Before: 6-8 of each
10 were SERVFAIL (A's resolvers held 296 upstream sockets: the 256 and their 20 floors of 2). Now
one tenant's resolvers hold at most half the shared count (``dns_proxy.PER_TENANT_SHARE``; A's
sockets 168): all of B's are answered (NXDOMAIN, the upstream's answer).

The attack keeps its places without a gap, as an attacker who wants them would. Session 22's
first flood sent 16 queries every 0.2 s from every sandbox, all begun together: the 296 forwarded
queries timed out together every 2.0-2.2 s and the count stood up to 124 places free for 0.2-0.5
s until the next sends. B's probe, a fixed 6 s in, came within tens of ms of the third such wave
and passed when it met it (1 run in 4 before the fix; a flood every 0.05 s only moved the wave).
Here each sandbox's 16 queries are "lanes" spread over the 2 s, and a lane sends its next query
as soon as the resolver answers the last one (SERVFAIL at its timeout: its place is free now); a
lane refused at once (the count full) tries again 2 s after it sent. B asks 4 times, 0.4 s apart,
once every flood has reached the upstream and had 3 s to fill its lanes. The test counts the
agent's upstream sockets (/proc/net/udp) while B asks, and asserts A held at least its share.
The upstream answers an ordinary name in 50 ms: answered at once, B's 10 queries went 2 at a
time through its resolver's own floor of 2, and 2-8 of them were answered with A holding all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
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
from warren.agent import dns_proxy
from warren.agent.runtime.bundle import CGROUP_PARENT
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

ATTACKERS = 20  # a team's default sandbox quota; 20 of 14 shared places each pass 256
PROBES, ROUNDS = 10, 4  # B's queries at once (within its resolver's 16), and how many times
RULES = pb.EgressRules(allow_out=["example.com"], deny_out=["0.0.0.0/0"])  # a name: a resolver
FULL = dns_proxy.MAX_UPSTREAM_TOTAL + 2 * ATTACKERS  # A's sockets with the whole count: 296

# In an attacker's sandbox (argv: its number, the resolver's upstream timeout, seconds to run):
# 16 lanes, each with one query in flight that the upstream never answers (it announces an
# additional record it does not carry), their first sends spread over the timeout; a lane sends
# again at once when its query is answered at the timeout, or a timeout after it sent when it
# was answered at once (refused) or not at all. A query's id starts with the flood's number (its
# top 5 bits): the test's upstream sees which floods run. Ends after argv[3] s or at SIGUSR1.
FLOOD = r"""
import contextlib, select, signal, socket, struct, sys, time
signal.signal(signal.SIGUSR1, lambda *_: globals().update(end=0))
ns = [l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0]
name = b'\x07example\x03com\x00\x00\x01\x00\x01'
me = int(sys.argv[1]) << 11
hold, lanes = float(sys.argv[2]), 16
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((ns, 53)); s.setblocking(False)
t0 = time.monotonic()
end = t0 + float(sys.argv[3])
due = [t0 + i * hold / lanes for i in range(lanes)]
sent, qids, n = [0.0] * lanes, [-1] * lanes, 0
while time.monotonic() < end:
    now = time.monotonic()
    for i in range(lanes):
        if due[i] <= now:
            n += 1
            qids[i] = me | (n * lanes + i) & 0x7FF
            sent[i], due[i] = now, now + 1.5 * hold
            s.send(struct.pack('!HHHHHH', qids[i], 0x0100, 1, 0, 0, 1) + name)
    wait = min(max(min(due) - time.monotonic(), 0), 0.1)
    if select.select([s], [], [], wait)[0]:
        with contextlib.suppress(BlockingIOError):
            while True:
                qid = struct.unpack('!H', s.recv(512)[:2])[0]
                i = qid % lanes
                if qids[i] == qid:  # refused at once: again a timeout after; else at once
                    qids[i] = -1
                    due[i] = sent[i] + hold if time.monotonic() - sent[i] < hold / 2 else 0
"""
# In the victim's sandbox: ROUNDS times PROBES ordinary queries at once, 0.4 s apart (the first
# 0.4 s in: past its exec's start); the rcode of each answer, a list per round.
PROBE = r"""
import json, socket, struct, sys, time
ns = [l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0]
name = b'\x07example\x03com\x00\x00\x01\x00\x01'
rounds = []
for r in range(int(sys.argv[2])):
    time.sleep(0.4)
    socks = []
    for i in range(int(sys.argv[1])):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
        s.connect((ns, 53)); s.send(struct.pack('!HHHHHH', 100 * r + i, 0x0100, 1, 0, 0, 0) + name)
        socks.append(s)
    out = []
    for s in socks:
        try:
            out.append(s.recv(512)[3] & 0xF)
        except OSError:
            out.append('timeout')
        s.close()
    rounds.append(out)
print(json.dumps(rounds))
"""
RCODE_NXDOMAIN, RCODE_SERVFAIL = 3, 2
# The upstream's time to answer an ordinary name, as a recursive resolver's: B's 10 queries are
# all in flight at once. Answered within a millisecond, B's resolver forwarded 2-8 of them in
# turn on its own floor of 2 while A held the whole count (the floor at work, not a share).
ANSWER_S = 0.05


class _Upstream(asyncio.DatagramProtocol):
    """The host's resolver as seen here: NXDOMAIN for an ordinary query, ANSWER_S after it,
    nothing at all for one announcing additional records it does not carry (whose flood it
    notes: its id's top 5 bits)."""

    def __init__(self, floods: set[int]) -> None:
        self.floods = floods

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12:
            return
        if struct.unpack_from("!H", data, 10)[0] == 0:
            head = struct.pack("!HHHHHH", struct.unpack_from("!H", data)[0], 0x8183, 1, 0, 0, 0)
            answer = head + data[12:]
            asyncio.get_running_loop().call_later(ANSWER_S, self.t.sendto, answer, addr)  # type: ignore[attr-defined]
        else:
            self.floods.add(data[0] >> 3)


class Upstream:
    """The fake upstream's port, and the floods whose queries it has seen."""

    def __init__(self, port: int, floods: set[int]) -> None:
        self.port, self.floods = port, floods

    def held(self) -> int:
        """The agent's UDP sockets asking this upstream now: the queries its resolvers forward
        (an answered one's socket lives ANSWER_S; an unanswered one's its 2 s)."""
        rem = f"0100007F:{self.port:04X}"
        with open("/proc/net/udp") as f:
            return sum(line.split()[2] == rem for line in list(f)[1:])


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    """A fake upstream on a free loopback port, served by a thread of its own."""
    loop = asyncio.new_event_loop()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    ready, floods = threading.Event(), set[int]()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        endpoint = loop.create_datagram_endpoint(lambda: _Upstream(floods), local_addr=("127.0.0.1", port))
        loop.run_until_complete(endpoint)
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    assert ready.wait(10)
    yield Upstream(port, floods)
    loop.call_soon_threadsafe(loop.stop)


@pytest.fixture(scope="module")
def agent(upstream: Upstream) -> Iterator[AgentProcess]:
    env = {"WARREN_AGENT_DNS_UPSTREAM": f"127.0.0.1:{upstream.port}"}
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


def _probe_while_counting(
    agent: AgentProcess, upstream: Upstream, victim: str
) -> tuple[list[list[object]], list[int]]:
    """B's rounds of queries, and the agent's upstream sockets meanwhile, every 10 ms: A's
    resolvers' (B's queries are answered at once: theirs seldom show)."""
    counts: list[int] = []
    done = threading.Event()

    def count() -> None:
        while not done.wait(0.01):
            counts.append(upstream.held())

    counter = threading.Thread(target=count, daemon=True)
    counter.start()
    try:
        rounds = json.loads(agent.py(victim, PROBE, str(PROBES), str(ROUNDS)).stdout)
    finally:
        done.set()
        counter.join()
    return rounds, counts


def _while_flooded(
    agent: AgentProcess, upstream: Upstream, attackers: list[str], victim: str
) -> tuple[list[list[object]], list[int]]:
    """B's rounds while A's sandboxes flood, each flood started and its lanes filled; the counts."""
    hold = str(dns_proxy.UPSTREAM_TIMEOUT_S)
    with ThreadPoolExecutor(len(attackers)) as pool:
        # 25 s at most: within an exec's 30 s (SIGUSR1 ends them once B has its answers)
        floods = [pool.submit(agent.py, sid, FLOOD, str(k), hold, "25") for k, sid in enumerate(attackers)]
        deadline = time.monotonic() + 20
        while len(upstream.floods) < len(attackers) and time.monotonic() < deadline:
            if any(f.done() for f in floods):
                break
            time.sleep(0.1)
        started = len(upstream.floods)
        if started == len(attackers):  # each flood's 16 lanes have sent, each place re-taken
            time.sleep(dns_proxy.UPSTREAM_TIMEOUT_S + 1)
            rounds, counts = _probe_while_counting(agent, upstream, victim)
        for sid in attackers:  # B has its answers: the floods end now
            _end_flood(sid)
        for f in floods:
            assert f.result().exit_code == 0, f.result()
    assert started == len(attackers), f"only {started} of {len(attackers)} floods reached the upstream"
    return rounds, counts


def test_one_teams_resolvers_leave_another_teams_resolver_its_queries(
    agent: AgentProcess, upstream: Upstream
) -> None:
    team_a, team_b = str(uuid.uuid4()), str(uuid.uuid4())
    made: list[str] = []
    create = lambda team: agent.create(memory_mb=128, owner_team_id=team, egress=RULES).sandbox_id  # noqa: E731
    try:
        with ThreadPoolExecutor(4) as pool:  # 4 at once (the scratch agent's finish mops up a failure's)
            made.extend(pool.map(create, [team_a] * ATTACKERS))
        victim = agent.create(memory_mb=128, owner_team_id=team_b, egress=RULES).sandbox_id
        made.append(victim)
        quiet = json.loads(agent.py(victim, PROBE, str(PROBES), "1").stdout)
        assert quiet == [[RCODE_NXDOMAIN] * PROBES], f"B's resolver before the flood: {quiet}"
        rounds, counts = _while_flooded(agent, upstream, made[:ATTACKERS], victim)
    finally:
        with ThreadPoolExecutor(4) as pool:
            pool.map(_destroy, [agent] * len(made), made)
    held = statistics.median(counts)
    print(
        f"B's {ROUNDS}x{PROBES} queries while A's {ATTACKERS} sandboxes flood: rcodes {rounds}; the agent's"
        f" upstream sockets meanwhile: median {held}, min {min(counts)}, max {max(counts)} (all: {FULL})"
    )
    # The attack is live whichever tree this is: A holds at least its share (and its floors).
    assert held >= dns_proxy.MAX_UPSTREAM_TOTAL // 2, f"A's resolvers held only {held} upstream sockets"
    answers = [rc for r in rounds for rc in r]
    servfail = answers.count(RCODE_SERVFAIL)
    assert servfail == 0, f"{servfail} of B's {len(answers)} queries were SERVFAIL: A held the upstream count"
    assert answers == [RCODE_NXDOMAIN] * len(answers), rounds
