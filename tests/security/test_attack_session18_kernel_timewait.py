"""Session 18: TIME_WAIT sockets, host kernel memory no memory cgroup is charged for.

A TCP connection closed first by its own side waits in TIME_WAIT for 60 s as a ``tw_sock_TCP``
object (256 B) that the kernel makes in softirq, charged to no memory cgroup. The number is
bounded per network namespace by ``net.ipv4.tcp_max_tw_buckets``, and a new namespace starts
with half the host's established table (131 072 on the reference host). Measured on the bare
host as ``nobody`` in a fresh namespace under a 64 MiB cgroup: 200 000 loopback connections in
11 s held all 131 072 (32 MiB of ``tw_sock_TCP``) with 4 MiB charged to the cgroup; a sandbox
keeps them as long as it keeps connecting, and every sandbox has its own 32 MiB.

Fixed (runtime/bundle.py ``NET_NAMESPACE_SYSCTLS``, set by runc/crun in the sandbox's network
namespace): at most 4096 (1 MiB). Past it the kernel closes a socket without TIME_WAIT (a counter,
no log line). /proc/sys is read-only inside, so root cannot raise it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

TW_BOUND = 4096
CONNECTIONS = 20_000

# As nobody: connect to 16 listeners in turn and close the client first (its end waits in
# TIME_WAIT), then print the namespace's TIME_WAIT count.
TIME_WAITS = r"""
import socket, sys
servers = []
for _ in range(16):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    servers.append(s)
done = 0
while done < int(sys.argv[1]):
    for s in servers:
        c = socket.socket()
        c.connect(s.getsockname())
        a, _ = s.accept()
        c.close()
        a.close()
        done += 1
tcp = open("/proc/net/sockstat").read().split("TCP:")[1].split()
print(done, tcp[tcp.index("tw") + 1])
"""


@pytest.fixture(scope="module", params=["runc", "crun"])
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, request.param) as a:
        yield a


@contextlib.contextmanager
def sandbox(agent: AgentProcess) -> Iterator[str]:
    sb = agent.create(memory_mb=256).sandbox_id
    try:
        yield sb
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)


def test_nobodys_closed_connections_hold_a_bounded_time_wait(agent: AgentProcess) -> None:
    with sandbox(agent) as sb:
        res = agent.exec(sb, "python3", "-c", TIME_WAITS, str(CONNECTIONS), user="nobody", timeout_sec=120)
        assert res.exit_code == 0, res
        done, tw = map(int, res.stdout.split())
        assert done == CONNECTIONS, res
        assert tw <= TW_BOUND, res  # before: ~20 000 (all of them; 131 072 a namespace)


def test_root_cannot_raise_the_bound(agent: AgentProcess) -> None:
    with sandbox(agent) as sb:
        knob = "/proc/sys/net/ipv4/tcp_max_tw_buckets"
        res = agent.exec(sb, "sh", "-c", f"echo 131072 > {knob}", timeout_sec=60)
        assert res.exit_code != 0, res
        res = agent.exec(sb, "cat", knob, timeout_sec=60)
        assert int(res.stdout) == TW_BOUND, res
