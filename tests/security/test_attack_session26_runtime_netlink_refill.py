"""Session 26: a forker refilling netlink queues faster than the watchdog killed their holders.

The netlink ceiling (runtime/netlink_ceiling.py, enforced by socket_ceiling.py) kills the
processes of ``cmds`` whose netlink sockets hold the most unread replies, host memory no cgroup
is charged for, once a sandbox's queues pass max(4 MiB, memory / 32). A process fills a socket's
queue to its ``SO_RCVBUF`` (8 MiB at this host's ``rmem_max``) with unread ``RTM_GETLINK``
replies in ~30 ms (~300 MiB/s a core). The watchdog killed one holder a pass, each waited for
and the level read again, every process pinned and weighed again (~50-200 ms a kill here), at
most 32 an enforcement: slower than a forker that replaces each holder killed. Measured as the
attacker runs it (``nobody`` in a 64 MiB runc sandbox: a parent keeping 60 children alive, each
filling one socket and holding it): 474 MiB queued at the peak, > 64 MiB (the sandbox's whole
memory limit) for 5.3 s until the second enforcement in a row killed all of ``cmds``; the tenant
runs it again at once (two runs: 329 and 479 MiB at the peak, past 64 MiB for 3.3 and 4.1 s).
Now a pass kills at once the heaviest holders whose bytes cover the excess, the table is read
every tick (0.5 s), and the fourth pass that kills (the level past again each time, within 2 s)
kills all of ``cmds``: 53-76 MiB at the peak, past 64 MiB for 0.1 s at most (three runs; the
exec killed within ~1.5 s).
"""

from __future__ import annotations

import pytest

from tests.harness.agent import AgentProcess
from tests.security.refill_attack import (
    forker,
    netlink_queued,
    refill,
    runc_agent,  # noqa: F401 (the fixture)
)
from warren.agent.runtime.netlink_ceiling import queue_ceiling

# Alone (serial): the bound is the watchdog's reaction time, which a loaded machine stretches
# for the attacker as well (CI, session 26: 2.1 s past 4x the count beside the parallel pass).
pytestmark = [pytest.mark.root, pytest.mark.serial]

MEMORY_MB = 64
CEILING = queue_ceiling(MEMORY_MB << 20)  # 4 MiB
HEAVY = MEMORY_MB << 20  # as much outside the sandbox as its whole memory limit
CHILDREN = 60  # each holds one socket filled to SO_RCVBUF (8 MiB here): 480 MiB in all
RUN_S = 8  # the forker's run (before: killed at ~5 s, by the second enforcement in a row)
HEAVY_S = 2.5  # the most time the queues may spend past HEAVY (before: 3.3-5.3 s; now <= 0.1 s)

# argv[1] children alive at once, each filling one netlink socket with unread RTM_GETLINK replies
# of lo (as large as SO_RCVBUF makes it) and holding it; one that dies is replaced, for argv[2] s.
FORKER = forker(r"""
import os, socket, struct, sys, time
n, run = int(sys.argv[1]), float(sys.argv[2])
GETLINK = struct.pack("=IHHII", 32, 18, 1, 0, 0) + struct.pack("=BxHiII", 0, 0, 1, 0, 0)
def child():
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    for _ in range(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2048 + 64):
        s.send(GETLINK)  # the kernel drops the replies past the queue's size
    time.sleep(run + 30)
    os._exit(0)
""")


def test_a_forker_refilling_netlink_queues_does_not_hold_them(runc_agent: AgentProcess) -> None:  # noqa: F811
    with refill(runc_agent, MEMORY_MB, netlink_queued, FORKER, str(CHILDREN), str(RUN_S)) as run:
        heavy_s = run.seconds_past(HEAVY)
        print(f"exit {run.exit_code} peak {run.peak >> 20} MiB, past {HEAVY >> 20} MiB for {heavy_s:.1f} s")
        assert run.peak > CEILING, "the attack did not fill the queues"
        assert heavy_s <= HEAVY_S, (run.peak, heavy_s)  # before: up to 479 MiB, past 64 MiB for 3.3-5.3 s
        assert netlink_queued(run.guest) <= CEILING
