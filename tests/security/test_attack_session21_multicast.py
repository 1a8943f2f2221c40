"""Session 21: IPv4 multicast memberships, host memory no memory cgroup is charged for.

Each membership a socket holds is an ``ip_mc_socklist`` (``sock_kmalloc``, not accounted) and,
for a group new on the device, the device's ``ip_mc_list`` and its IGMP timer (kmalloc, not
accounted either); the socket itself costs its sandbox ~1.3 KiB. At the kernel's default of 20
memberships a socket (``net.ipv4.igmp_max_memberships``, one per network namespace), UDP sockets
each joining 20 distinct groups held ~57 MiB of the host's memory outside a 64 MiB sandbox
(session 21's netlink work, a helper's measurement; IPv6 joins have been refused since session
18, test_attack_session18_kernel_sockopt).

Here, as the tenant runs it: sockets as ``nobody`` joining distinct groups until refused. Before
the fix each held 20. Fixed (runtime/bundle.py): the sandbox's namespace allows 1 membership a
socket, enough for what joins a group in a sandbox (mDNS and discovery protocols join one); the
uncharged memory falls to ~0.2 KiB a socket (~15 % of what the socket costs its sandbox).
Root in the sandbox cannot raise it (its /proc/sys is read-only).
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

# As nobody: 8 UDP sockets, each joining distinct groups on eth0 until one is refused.
JOINS = r"""
import socket
held = []
for n in range(8):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    count = 0
    for i in range(64):
        group = socket.inet_aton("239.7.%d.%d" % (n, i)) + socket.inet_aton("0.0.0.0")
        try:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
        except OSError:
            break
        count += 1
    held.append(count)
print(*held)
"""


@pytest.fixture(scope="module", params=["runc", "crun"])
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, request.param) as a:
        yield a


@pytest.fixture(scope="module")
def sb(agent: AgentProcess) -> Iterator[str]:
    sandbox_id = agent.create(memory_mb=64).sandbox_id
    try:
        yield sandbox_id
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sandbox_id), timeout=60)


def test_a_socket_holds_one_ipv4_membership(agent: AgentProcess, sb: str) -> None:
    res = agent.exec(sb, "python3", "-c", JOINS, user="nobody", timeout_sec=120)
    assert res.exit_code == 0, res
    assert [int(n) for n in res.stdout.split()] == [1] * 8  # before: 20 each


def test_root_cannot_raise_the_bound(agent: AgentProcess, sb: str) -> None:
    knob = "/proc/sys/net/ipv4/igmp_max_memberships"
    assert agent.exec(sb, "sh", "-c", f"echo 20 > {knob}", timeout_sec=60).exit_code != 0
    assert agent.exec(sb, "cat", knob, timeout_sec=60).stdout == b"1\n"
