"""Session 17 (W2-D): can a tenant make its own sandbox's destroy fail, and so keep host slots?

A destroy that leaves a process of the sandbox alive keeps its slot quarantined (network, host
uid range, namespace owner) until a sweep finds nothing left (agent/teardown.py, commit 294c0ee).
A tenant able to cause that at will could hold slots past its sandboxes' lives: a host-wide
denial of service (slots are few: the host's network slots and uid ranges). What the tenant
controls is what runs inside (root and ``nobody``, no mount, no ptrace, no userfaultfd, no
io_uring, no namespaces: bundle.py's seccomp), so the attacks are processes that try to outlive
or outrun the kill: fork bombs that exit and re-fork (new pids between the kill's read and its
signal), stopped processes and stopped zombie parents, a thread group whose leader has exited,
children blocked on a FIFO, a lock and a full pipe, a vfork child blocked, sessions of their own,
and a memory cgroup held at its limit (the OOM killer and the destroy's kill at once).

Held on this tree (runc and crun): every destroy succeeds the first time, no slot is
quarantined, the claim is let go at once, and the sandbox's cgroups are gone. Asserted, so that
a change that lets one of these survive the kill fails here.
"""

from __future__ import annotations

import json
import shlex
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.agent.network import CLAIMS_DIR
from warren.agent.runtime.oci import CONTROLLERS, cgroup_dir
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

# Each an attack started in the background (sh -c '... &'), as root or nobody.
CHURN = r"""
import os
os.setsid()
while True:
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        try:
            os.fork()  # one more, then this one goes: new pids all the time
        except OSError:
            pass
        os._exit(0)
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        pass
"""
ZOMBIES = r"""
import os, signal, threading, time
# Children left unreaped by a stopped parent; a group whose leader exits with threads alive.
for _ in range(50):
    if os.fork() == 0:
        os._exit(0)
if os.fork() == 0:
    t = threading.Thread(target=time.sleep, args=(3000,))
    t.start()
    import _thread
    _thread.exit()  # only the leader thread: a zombie leader, its thread alive
os.kill(os.getpid(), signal.SIGSTOP)
"""
BLOCKED = r"""
import fcntl, os, time
os.mkfifo("/tmp/f%d" % os.getpid())
if os.fork() == 0:
    open("/tmp/f%d" % os.getppid(), "w")  # blocks: no reader ever
fd = os.open("/tmp/lock", os.O_CREAT | os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
if os.fork() == 0:
    fcntl.flock(os.open("/tmp/lock", os.O_RDWR), fcntl.LOCK_EX)  # blocks on its parent's lock
r, w = os.pipe()
if os.fork() == 0:
    while True:
        os.write(w, b"x" * 4096)  # blocks: the pipe is full, nobody reads
pid = os.fork()
if pid == 0:
    os.execv("/bin/sh", ["sh", "-c", "sleep 3000 | sleep 3000"])
time.sleep(3000)
"""
VFORK = r"""
import os
# posix_spawn is clone(CLONE_VFORK): the parent waits (state D, killable) while the child runs
# its file actions, here an open of a FIFO nobody reads: blocked before its exec, forever.
fifo = "/tmp/vf%d" % os.getpid()
os.mkfifo(fifo)
os.posix_spawn("/bin/true", ["true"], {}, file_actions=[(os.POSIX_SPAWN_OPEN, 3, fifo, os.O_WRONLY, 0)])
"""
HOG = r"""
import os
os.setsid()
while True:
    if os.fork() == 0:
        hog = []
        while True:
            hog.append(bytearray(1 << 20))
    os.wait()
"""
ATTACKS = {"churn": CHURN, "zombies": ZOMBIES, "blocked": BLOCKED, "vfork": VFORK, "hog": HOG}
# When each is under way, from the host: its processes' states in ``cmds`` ("comm:state" ->
# how many) and the OOM kills there. The churn forking (R), the stopped parents (T), root's
# blockers forked before its last step (the two sleeps), the vfork parents (D), the hog at the
# limit. (The tests slept 3 s instead: ~25 s of this module's time.)
UNDER_WAY: dict[str, Callable[[Counter[str], int], bool]] = {
    "churn": lambda states, _: states["python3:R"] >= 4,
    "zombies": lambda states, _: states["python3:T"] >= 2,
    "blocked": lambda states, _: states["sleep:S"] >= 2,
    "vfork": lambda states, _: states["python3:D"] >= 2,
    "hog": lambda _, kills: kills >= 1,
}
SETTLE_S = 0.5  # after that, for the last forked children to block


@pytest.fixture(scope="module", params=["runc", "crun"])
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, request.param) as a:
        yield a


def claim_holder(slot: int) -> str | None:
    try:
        return (CLAIMS_DIR / str(slot)).read_text().split("\n")[1]
    except FileNotFoundError:
        return None


def start(agent: AgentProcess, sb: str, script: str, user: str, copies: int) -> None:
    bg = f"(python3 -c {shlex.quote(script)} >/dev/null 2>&1 &)"
    res = agent.exec(sb, "sh", "-c", "; ".join([bg] * copies), user=user, timeout_sec=60)
    assert res.exit_code == 0, res.stderr


def cmds_states(sb: str) -> tuple[Counter[str], int]:
    """The sandbox's commands: "comm:state" -> how many, and the OOM kills in ``cmds``."""
    states: Counter[str] = Counter()
    for pid in (cgroup_dir("pids", sb) / "cmds" / "cgroup.procs").read_text().split():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        comm, _, rest = stat[stat.index("(") + 1 :].rpartition(")")
        states[f"{comm}:{rest.split()[0]}"] += 1
    control = (cgroup_dir("memory", sb) / "cmds" / "memory.oom_control").read_text()
    return states, int(dict(line.split() for line in control.splitlines())["oom_kill"])


def wait_under_way(sb: str, under_way: Callable[[Counter[str], int], bool]) -> None:
    deadline = time.monotonic() + 60
    while not under_way(*(got := cmds_states(sb))):
        assert time.monotonic() < deadline, f"the attack never under way: {got}"
        time.sleep(0.1)
    time.sleep(SETTLE_S)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_tenant_cannot_make_its_destroy_keep_the_slot(agent: AgentProcess, attack: str) -> None:
    sb = agent.create(memory_mb=256).sandbox_id
    rec = json.loads((agent.data_dir / "sandboxes" / sb / "record.json").read_text())
    slot = int(rec["slot"])
    assert claim_holder(slot) == sb
    for user in ("", "nobody"):
        start(agent, sb, ATTACKS[attack], user, copies=2 if attack in ("churn", "hog") else 1)
    wait_under_way(sb, UNDER_WAY[attack])  # (the churn at its fastest, the hog at the limit)
    procs = (cgroup_dir("pids", sb) / "cmds" / "cgroup.procs").read_text().split()
    assert len(procs) >= 4, procs  # the attack's processes are there
    t0 = time.monotonic()
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=120)  # raises if it failed
    print(f"{attack}: {len(procs)} processes, destroyed in {time.monotonic() - t0:.2f} s")
    assert claim_holder(slot) != sb, "the slot is still claimed by the destroyed sandbox"
    log = agent.log_tail(400)
    assert f"event=sandbox_destroyed sandbox_id={sb}" in log  # the log is the agent's, read
    assert f"event=slot_quarantined sandbox_id={sb}" not in log
    left = [c for c in (*CONTROLLERS, "unified") if cgroup_dir(c, sb).exists()]
    assert left == [], left
    with pytest.raises(grpc.RpcError):
        agent.exec(sb, "true")


def test_a_paused_sandbox_full_of_churn_is_destroyed_and_its_slot_freed(agent: AgentProcess) -> None:
    """Frozen tasks cannot die: the destroy thaws first (oci.destroy). The churn and a vfork
    parent frozen mid-way, then the owner deletes the paused sandbox."""
    sb = agent.create(memory_mb=256).sandbox_id
    slot = int(json.loads((agent.data_dir / "sandboxes" / sb / "record.json").read_text())["slot"])
    for script in (CHURN, VFORK):
        start(agent, sb, script, "", copies=1)
    # One churn forking, one vfork parent blocked (this was a 2 s sleep).
    wait_under_way(sb, lambda states, _: states["python3:R"] >= 1 and states["python3:D"] >= 1)
    agent.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=sb), timeout=60)
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=120)
    assert claim_holder(slot) != sb
    log = agent.log_tail(400)
    assert f"event=sandbox_destroyed sandbox_id={sb}" in log  # the log is the agent's, read
    assert f"event=slot_quarantined sandbox_id={sb}" not in log
    assert [c for c in (*CONTROLLERS, "unified") if cgroup_dir(c, sb).exists()] == []
