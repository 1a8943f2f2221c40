"""Session 18: socket options whose kernel memory no memory cgroup is charged for.

``sock_kmalloc`` (GFP_KERNEL, not accounted) backs a socket's options, bounded per socket only by
``net.core.optmem_max`` (128 KiB since Linux 6.9); a socket costs its sandbox ~3 KiB. Measured
on the bare host as ``nobody`` in a fresh network namespace under a 64 MiB cgroup:

* TCP MD5 keys (``TCP_MD5SIG``, no privilege needed): 963 a socket, 96 300 on 100 sockets in
  1.5 s, 18 MiB of kmalloc-192 with 0.5 MiB charged: ~60 times what the sandbox pays, so a
  256 MiB sandbox could hold gigabytes of the host's memory;
* IPv6 multicast groups on the sandbox's loopback: 2 340 a socket (optmem), each also a
  per-device ``ifmcaddr6`` with no bound at all, ~320 B a join uncharged (46 800 joins:
  +15 MiB of the host's slab, 0.2 MiB charged).

Fixed (runtime/bundle.py): seccomp refuses those options (EPERM), and the sandbox's network
namespace has ``net.core.optmem_max`` 20 KiB, bounding what is left (IPv4 memberships, 20 a
socket, still work).
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

# As nobody: as many TCP MD5 keys as 8 sockets take; prints the count and the first refusal.
MD5_KEYS = r"""
import socket, struct
def key(i):
    addr = struct.pack("=HH4s", socket.AF_INET, 0, socket.inet_aton("10.0.%d.%d" % (i >> 8, i & 255)))
    return addr.ljust(128, b"\0") + struct.pack("=BBHi", 0, 0, 16, 0) + b"k" * 16 + b"\0" * 64
held, refused = 0, None
for _ in range(8):
    s = socket.socket()
    for i in range(2000):
        try:
            s.setsockopt(socket.IPPROTO_TCP, 14, key(i))  # TCP_MD5SIG
        except OSError as e:
            refused = refused or e.errno
            break
        held += 1
print(held, refused)
"""

# As nobody: IPv6 multicast groups on the loopback, up to 3000 on one socket.
IPV6_GROUPS = r"""
import socket, struct
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
held, refused = 0, None
for i in range(3000):
    group = socket.inet_pton(socket.AF_INET6, "ff15::1:%x" % i)
    try:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group + struct.pack("@I", 1))
    except OSError as e:
        refused = e.errno
        break
    held += 1
print(held, refused)
"""

# IPv4 memberships are kept (bounded per socket by igmp_max_memberships).
IPV4_GROUP = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
group = socket.inet_aton("239.1.2.3") + socket.inet_aton("0.0.0.0")  # on the default route's eth0
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
print("joined")
"""

EPERM = 1


@pytest.fixture(scope="module", params=["runc", "crun"])
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, request.param) as a:
        yield a


@pytest.fixture(scope="module")
def sb(agent: AgentProcess) -> Iterator[str]:
    sandbox_id = agent.create(memory_mb=256).sandbox_id
    try:
        yield sandbox_id
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sandbox_id), timeout=60)


def run(agent: AgentProcess, sb: str, code: str) -> list[str]:
    res = agent.exec(sb, "python3", "-c", code, user="nobody", timeout_sec=120)
    assert res.exit_code == 0, res
    return res.stdout.decode().split()


def test_tcp_md5_keys_are_refused(agent: AgentProcess, sb: str) -> None:
    held, refused = run(agent, sb, MD5_KEYS)
    assert (int(held), refused) == (0, str(EPERM))  # before: 7 704 held (963 a socket), ENOMEM


def test_ipv6_multicast_groups_are_refused(agent: AgentProcess, sb: str) -> None:
    held, refused = run(agent, sb, IPV6_GROUPS)
    assert (int(held), refused) == (0, str(EPERM))  # before: 2 340 held, then ENOMEM


def test_ipv4_multicast_still_works(agent: AgentProcess, sb: str) -> None:
    assert run(agent, sb, IPV4_GROUP) == ["joined"]


def test_option_memory_is_bounded_and_root_cannot_raise_it(agent: AgentProcess, sb: str) -> None:
    knob = "/proc/sys/net/core/optmem_max"
    res = agent.exec(sb, "sh", "-c", f"echo 131072 > {knob}", timeout_sec=60)
    assert res.exit_code != 0, res
    res = agent.exec(sb, "cat", knob, timeout_sec=60)
    assert int(res.stdout) == 20480, res  # before: 131072
