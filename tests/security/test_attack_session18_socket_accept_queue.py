"""Session 18: connections waiting in a listener's accept queue, host memory no cgroup is charged for.

A connection the sandbox makes to its own listener over loopback completes in softirq: the
kernel clones a full TCP socket (~4 KiB of slab and one page of the host-wide ``tcp_mem``)
charged to no memory cgroup until it is accepted, and it waits in the listener's accept queue.
The client can close its end at once. A queue holds ``net.core.somaxconn`` (4096); a listener
costs the sandbox ~5 KiB. Measured on the bare host: 64 listeners x 4096 = 262 144 waiting
connections held +1031 MiB of slab and 262 274 pages of tcp_mem, 8.5 MiB of it charged; ~140
listeners reach tcp_mem's hard limit (every TCP socket of the host is then held to its minimum).
The per-sandbox ``memory.kmem.tcp`` bound does not see them.

As the attacker runs it (a script in the sandbox, ``nobody`` over IPv4, root over IPv6 and
v4-mapped), in a 128 MiB sandbox: 16 listeners of 4096, every queue filled with closed clients,
then held. Before the watchdog's socket count (runtime/socket_ceiling.py) the 65 536 children
stayed (runc and crun; 256 MiB, and 128 MiB too: "65536" printed); now the holder is killed once
the namespace's TCP sockets pass the ceiling (8192 for 128 MiB), the count ends under it, and the
guest lives. A server with 2000 accepted idle connections in a
256 MiB sandbox (4001 TCP sockets with its clients) is not killed.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.agent.runtime.socket_ceiling import count_ceiling
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

MEMORY_MB = 128  # the filler's sandbox: the smaller the sandbox, the sooner its ceiling
CEILING = count_ceiling(MEMORY_MB << 20)  # 8192 (16 384 for 256 MiB)
SERVER_MEMORY_MB = 256  # the ordinary server's
LISTENERS = 16
HOLD_S = 4  # the filler holds its queues this long (8 of the watchdog's ticks), then says so
# The ordinary server holds its connections this long: 4 of the watchdog's ticks (a count past
# the ceiling is killed at the first tick that reads it).
SERVER_HOLD_S = 2

# Fill the accept queues of argv[1] listeners (argv[2]: "4", or "6" for IPv6 listeners on "::"
# filled by IPv6 and v4-mapped clients) with connections whose client end is closed; hold them
# HOLD_S; print what the queues hold (/proc/net/tcp{,6}: a listener's rx_queue is its queue).
FILL = r"""
import socket, sys, time
n, fam = int(sys.argv[1]), sys.argv[2]
try:  # IPv6 clients where the sandbox has ::1, v4-mapped ones throughout
    socket.socket(socket.AF_INET6).bind(("::1", 0))
    has6 = fam == "6"
except OSError:
    has6 = False
listeners = []
for _ in range(n):
    s = socket.socket(socket.AF_INET6 if fam == "6" else socket.AF_INET)
    s.bind(("::" if fam == "6" else "127.0.0.1", 0))
    s.listen(4096)
    listeners.append(s)
for i, s in enumerate(listeners):
    port = s.getsockname()[1]
    for k in range(4096):
        v6 = has6 and (i + k) % 2 == 0
        c = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
        c.settimeout(1)
        try:
            c.connect(("::1" if v6 else "127.0.0.1", port))
        except OSError:
            break  # the queue is full: the SYN is dropped
        finally:
            c.close()
time.sleep(float(sys.argv[3]))
held = 0
for t in ("tcp", "tcp6"):
    for line in open(f"/proc/net/{t}").read().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A":
            held += int(f[4].split(":")[1], 16)
print(held)
"""

# An ordinary server: argv[1] connections from a client process, accepted and held idle for
# argv[2] s (its clients with them); "ok" if it was not killed.
SERVER = r"""
import os, socket, sys, time
n, hold = int(sys.argv[1]), float(sys.argv[2])
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(128)
if os.fork() == 0:
    cs = [socket.create_connection(ls.getsockname()) for _ in range(n)]
    time.sleep(hold + 30)
    os._exit(0)
held = [ls.accept()[0] for _ in range(n)]
time.sleep(hold)
print("ok", len(held))
"""

SOCKSTAT = "cat /proc/net/sockstat /proc/net/sockstat6"


@pytest.fixture(scope="module", params=["runc", "crun"])
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, request.param) as a:
        yield a


@contextlib.contextmanager
def sandbox(agent: AgentProcess, memory_mb: int = MEMORY_MB) -> Iterator[str]:
    sb = agent.create(memory_mb=memory_mb).sandbox_id
    try:
        yield sb
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)


def _inuse(agent: AgentProcess, sb: str) -> int:
    """The sandbox's TCP sockets as the tenant sees them (both families)."""
    res = agent.exec(sb, "sh", "-c", SOCKSTAT)
    assert res.exit_code == 0, res
    out = res.stdout.decode()
    return sum(int(n) for n in re.findall(r"^TCP6?: inuse (\d+)", out, re.M))


def _kills(agent: AgentProcess, sb: str, wait_s: float = 30) -> list[tuple[int, int, int]]:
    """The socket-count kills the agent logged for ``sb``, waited for: the agent logs a kill
    after its victim's exit, which the exec's answer can beat. (The memory ceiling may kill the
    filler first, its forced charges past twice the bound: logged as ``socket_memory_kill``,
    counted here as ``(0, 0, 0)``.)"""
    count = rf"event=socket_count_kill sandbox={sb} pid=\d+ weight=(\d+) inuse=(\d+) ceiling=(\d+)"
    memory = rf"event=socket_memory_kill sandbox={sb} "
    deadline = time.monotonic() + wait_s
    while True:
        text = agent.log_path.read_text(errors="replace")
        found = [(int(w), int(n), int(c)) for w, n, c in re.findall(count, text)]
        found += [(0, 0, 0)] * len(re.findall(memory, text))
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.mark.parametrize(("user", "family"), [("nobody", "4"), ("root", "6")])
def test_accept_queues_past_the_ceiling_are_killed(agent: AgentProcess, user: str, family: str) -> None:
    with sandbox(agent) as sb:
        args = ("-c", FILL, str(LISTENERS), family, str(HOLD_S))
        res = agent.exec(sb, "python3", *args, user=user, timeout_sec=110)
        kills = _kills(agent, sb)
        after = _inuse(agent, sb)  # also: the guest lives, a later exec works
        print(f"{user} v{family}: exit {res.exit_code} held {res.stdout!r} kills {kills} after {after}")
        assert res.exit_code != 0 and not res.stdout.strip(), res  # before: 0, "65536"
        assert kills and all(c == CEILING and w > 4096 for w, _, c in kills if c), kills
        assert after <= CEILING, after


def test_a_server_with_2000_idle_connections_is_not_killed(agent: AgentProcess) -> None:
    with sandbox(agent, SERVER_MEMORY_MB) as sb:
        res = agent.exec(
            sb, "python3", "-c", SERVER, "2000", str(SERVER_HOLD_S), user="nobody", timeout_sec=110
        )
        assert res.exit_code == 0 and res.stdout.split() == [b"ok", b"2000"], res
        assert not _kills(agent, sb, wait_s=0)  # it exited 0 having held them: never killed
