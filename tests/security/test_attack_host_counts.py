"""Per-user kernel counts attacked from inside a sandbox: one tenant's code must not use up what
host root and the other sandboxes need (warren/agent/host_counts.py).

Each sandbox's user namespace is made by root, so the kernel also counts what its processes
hold under host root in the initial namespace. Found in session 10: ``nobody`` in one sandbox
holding 128 inotify instances (``fs.inotify.max_user_instances``) left host root and every other
sandbox with none (``EMFILE``); nine 80 KiB POSIX message queues (root's ``RLIMIT_MSGQUEUE``,
copied into each namespace) left every other sandbox unable to open one. The agent now lifts
those counts at start; the memory behind them is charged to the sandbox's memory cgroup.

Each attack holds more than the old shared bound, in a background process that outlives its
exec, and then checks that host root and a second sandbox still get their own.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.agent import AgentProcess, scratch_agent
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

# The host defaults the attacks go past (Debian 12's kernel: 128 instances; watches scale with
# RAM, 192530 on a 24 GiB machine, so the attack adds 2**18 = 262144).
OLD_INSTANCES, WATCHES = 128, 1 << 18
OLD_MSGQUEUE = 819200  # bytes: root's RLIMIT_MSGQUEUE

# Runs as the attacker: forks a holder that takes what argv[1] says and keeps it; the holder
# writes its tally to /tmp/held-<kind> and sleeps, so the exec ends while the counts stay held.
HOLD = r"""
import ctypes, json, os, sys, time
kind, user = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
out = f"/tmp/held-{kind}-{user}"

def inotify(n_groups, per_group):
    files = []
    if per_group:
        os.makedirs("/tmp/files", exist_ok=True)
        for i in range(per_group):
            p = f"/tmp/files/{i}"
            open(p, "a").close()
            files.append(p.encode())
    groups = watches = 0
    for _ in range(n_groups):
        fd = libc.inotify_init1(0)
        if fd < 0:
            return {"groups": groups, "watches": watches, "errno": ctypes.get_errno()}
        groups += 1
        for p in files:
            if libc.inotify_add_watch(fd, p, 2) < 0:
                return {"groups": groups, "watches": watches, "errno": ctypes.get_errno()}
            watches += 1
    return {"groups": groups, "watches": watches, "errno": 0}

class MqAttr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long),
                ("curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4)]

def mqueues(n_uids):
    # As sandbox root: each of n_uids uids opens queues until its own limit or the namespace's.
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    opened = 0
    for uid in range(20000, 20000 + n_uids):
        pid = os.fork()
        if pid == 0:
            os.setgid(uid); os.setuid(uid)
            n = 0
            while rt.mq_open(f"/q{uid}-{n}".encode(), os.O_CREAT | os.O_RDWR, 0o600,
                             ctypes.byref(MqAttr(0, 10, 8192, 0))) >= 0:
                n += 1
            os._exit(min(n, 255))
        opened += os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return {"queues": opened, "bytes": opened * 10 * 8192}

if os.fork() == 0:
    os.setsid()
    if kind == "instances":
        got = inotify(512, 0)
    elif kind == "watches":
        got = inotify(64, 4096)
    else:
        got = mqueues(32)
    with open(out + ".tmp", "w") as f:
        json.dump(got, f)
    os.rename(out + ".tmp", out)
    time.sleep(3600)
    os._exit(0)
deadline = time.monotonic() + 90
while not os.path.exists(out):
    assert time.monotonic() < deadline, "the holder did not report"
    time.sleep(0.05)
print(open(out).read())
"""

# Run by the victims (host root, a neighbour's nobody): one of each kind, or the errno.
VICTIM = r"""
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
got = {"inotify_init": fd if fd < 0 else 0, "init_errno": ctypes.get_errno() if fd < 0 else 0}
w = libc.inotify_add_watch(fd, b"/tmp", 2) if fd >= 0 else -1
got["add_watch_errno"] = ctypes.get_errno() if w < 0 else 0
try:
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    q = rt.mq_open(f"/victim{os.getpid()}".encode(), os.O_CREAT | os.O_RDWR, 0o600, None)
    got["mq_errno"] = ctypes.get_errno() if q < 0 else 0
    if q >= 0:
        rt.mq_unlink(f"/victim{os.getpid()}".encode())
except OSError as e:
    got["mq_errno"] = str(e)
print(json.dumps(got))
"""


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    with scratch_agent("attack-host-counts") as a:
        yield a


@pytest.fixture
def attacker(agent: AgentProcess) -> Iterator[str]:
    sid = agent.create(memory_mb=512).sandbox_id
    yield sid
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=60)


@pytest.fixture(scope="module")
def neighbour(agent: AgentProcess) -> Iterator[str]:
    sid = agent.create(memory_mb=256).sandbox_id
    yield sid
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=60)


def hold(agent: AgentProcess, sb: str, kind: str, user: str) -> dict[str, int]:
    res = agent.py(sb, HOLD, kind, user, user=user, timeout_sec=120)
    assert res.exit_code == 0, res.stderr.decode()[-2000:]
    held: dict[str, int] = json.loads(res.stdout)
    return held


def victim_in(agent: AgentProcess, sb: str, user: str) -> dict[str, int]:
    res = agent.py(sb, VICTIM, user=user, timeout_sec=60)
    assert res.exit_code == 0, res.stderr.decode()[-2000:]
    got: dict[str, int] = json.loads(res.stdout)
    return got


def host_root_victim() -> dict[str, int]:
    res = subprocess.run([sys.executable, "-c", VICTIM], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    got: dict[str, int] = json.loads(res.stdout)
    return got


def assert_unharmed(got: dict[str, int], *, mq: bool = True) -> None:
    assert got["init_errno"] == 0 and got["add_watch_errno"] == 0, got
    if mq:
        assert got["mq_errno"] == 0, got


@pytest.mark.parametrize("user", ["nobody", "root"])
def test_inotify_instances_held_past_the_host_default(
    agent: AgentProcess, attacker: str, neighbour: str, user: str
) -> None:
    held = hold(agent, attacker, "instances", user)
    assert held["groups"] > OLD_INSTANCES, held  # the old shared bound stopped it at 128
    assert_unharmed(host_root_victim(), mq=False)
    assert_unharmed(victim_in(agent, neighbour, "nobody"), mq=False)
    assert_unharmed(victim_in(agent, neighbour, "root"), mq=False)


def test_inotify_watches_held_past_the_host_default(
    agent: AgentProcess, attacker: str, neighbour: str
) -> None:
    held = hold(agent, attacker, "watches", "nobody")
    assert held["watches"] >= WATCHES, held
    assert_unharmed(host_root_victim(), mq=False)
    assert_unharmed(victim_in(agent, neighbour, "nobody"), mq=False)


def agent_lifted_msgqueue(agent: AgentProcess) -> bool:
    """Whether the agent could lift its RLIMIT_MSGQUEUE (it needs CAP_SYS_RESOURCE, which root
    in a container, like the reference machine's, lacks)."""
    assert agent.proc is not None
    for line in Path(f"/proc/{agent.proc.pid}/limits").read_text().splitlines():
        if line.startswith("Max msgqueue size"):
            return line.split()[3] == "unlimited"
    raise AssertionError("no msgqueue line in /proc/<agent>/limits")


def test_message_queues_held_as_many_uids(agent: AgentProcess, attacker: str, neighbour: str) -> None:
    held = hold(agent, attacker, "mqueues", "root")
    if agent_lifted_msgqueue(agent):
        assert held["bytes"] > OLD_MSGQUEUE, held  # nine queues were all the host had
        assert_unharmed(victim_in(agent, neighbour, "nobody"))
        assert_unharmed(victim_in(agent, neighbour, "root"))
        return
    # The count stays shared: then no runc sandbox takes from it (RLIMIT_MSGQUEUE 0), so what
    # one tenant does leaves host root's queues whole, and every sandbox is refused alike.
    assert held["queues"] == 0, held
    assert host_root_victim()["mq_errno"] == 0
    for user in ("nobody", "root"):
        got = victim_in(agent, neighbour, user)
        assert got["mq_errno"] == errno.EMFILE, got
        assert_unharmed(got, mq=False)


def test_what_the_attacker_held_is_its_own_memory(agent: AgentProcess, attacker: str) -> None:
    """The counts are lifted, not the bound: inotify marks are charged to the sandbox's memory
    cgroup, so what a tenant holds shows in its own usage (and its limit ends it)."""
    usage = Path(f"/sys/fs/cgroup/memory/warren/{attacker}/memory.kmem.usage_in_bytes")
    before = int(usage.read_text())
    hold(agent, attacker, "watches", "nobody")
    deadline = time.monotonic() + 30
    while (grown := int(usage.read_text()) - before) < (8 << 20):  # 262144 marks
        assert time.monotonic() < deadline, f"kernel memory of the sandbox grew by {grown} bytes only"
        time.sleep(0.2)
