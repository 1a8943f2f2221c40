"""Session 17 (W2-D): can a tenant's process stay in (or get back to) the guest's cgroup?

Every tenant command enters ``cmds`` (agent/runtime/cmds_cgroup.py) through the guest's fds 3, 4
before anything of it runs; the guest alone stays in the sandbox's own memory and pids cgroups
(what its 24 MiB / 16 pids reserve is for). As the attacker runs it, with every way the guest
forks a process of its own started at once: a template's ``start_cmd``, a background and a
foreground command, a terminal (as root and ``nobody``), and the upload allocator (a file operation's
child as a user lives only as long as its operation: not caught here). Then root inside looks at
every process's cgroups and tries the ways back up it has: the cgroup files (mounted read-only,
host root's), the parent's ``cgroup.procs`` through ``..`` of the guest's descriptors, ptrace and
``process_vm_writev`` on the allocator (a root process of the guest's own). Held on this tree:
nothing of the tenant's outside ``cmds``, every escape refused; asserted so that a fork path that
skips ``enter_cmds`` (or a seccomp rule lost) fails here.
"""

from __future__ import annotations

import contextlib
import json
import queue
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

# Root in the sandbox: every process's memory and pids cgroups, and each escape tried.
PROBE = r"""
import ctypes, json, os
me = os.getpid()
out = {"outside": {}, "escapes": {}, "seen": []}
for p in os.listdir("/proc"):
    if not p.isdigit() or p == "1":
        continue
    try:
        groups = open("/proc/%s/cgroup" % p).read().split("\n")
        cmd = open("/proc/%s/cmdline" % p, "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        continue
    out["seen"].append(cmd)
    for line in groups:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1] in ("memory", "pids") and parts[2] != "/cmds":
            out["outside"][p] = [cmd, line]
def attempt(name, fn):
    try:
        fn()
        out["escapes"][name] = "done"
    except OSError as e:
        out["escapes"][name] = e.strerror
def write(path):
    def go():
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    return go
for c in ("memory", "pids"):
    for path in ("/sys/fs/cgroup/%s/cgroup.procs" % c, "/sys/fs/cgroup/%s/tasks" % c):
        attempt(path, write(path))
for n in os.listdir("/proc/1/fd"):
    t = os.readlink("/proc/1/fd/" + n)
    if t.endswith("/cmds/cgroup.procs"):
        attempt("fd%s/../cgroup.procs" % n, write("/proc/1/fd/%s/../../cgroup.procs" % n))
# The allocator: the guest's child that stays (its program, parent 1, not this one's).
libc = ctypes.CDLL(None, use_errno=True)
for p in os.listdir("/proc"):
    if not p.isdigit() or p in ("1", str(me)):
        continue
    try:
        stat = open("/proc/%s/stat" % p).read()
        cmd = open("/proc/%s/cmdline" % p, "rb").read()
    except OSError:
        continue
    if stat.rpartition(")")[2].split()[1] == "1" and b"/.warren/guest/guest.py" in cmd.split(b"\0"):
        out["allocator"] = True
        def ptrace():
            if libc.ptrace(16, int(p), 0, 0) != 0:  # PTRACE_ATTACH
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        attempt("ptrace", ptrace)
        def vm_write():
            buf = ctypes.create_string_buffer(8)
            iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)
            riov = (ctypes.c_void_p * 2)(0x400000, 8)
            if libc.process_vm_writev(int(p), iov, 1, riov, 1, 0) < 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        attempt("process_vm_writev", vm_write)
print(json.dumps(out))
"""


@pytest.fixture(scope="module", params=["runc", "crun"])
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, request.param) as a:
        yield a


@contextlib.contextmanager
def sandbox(agent: AgentProcess) -> Iterator[str]:
    cfg = pb.TemplateConfig(start_cmd="exec sleep 600")
    sb = agent.create(memory_mb=256, chain=pb.TemplateChain(base="minimal", config=cfg)).sandbox_id
    try:
        yield sb
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)


def terminal(agent: AgentProcess, sb: str, user: str) -> tuple[queue.Queue[pb.PtyRequest | None], object]:
    q: queue.Queue[pb.PtyRequest | None] = queue.Queue()
    q.put(
        pb.PtyRequest(
            start=pb.PtyStart(sandbox_id=sb, size=pb.PtySize(cols=80, rows=24), user=user, cmd="/bin/sh")
        )
    )
    events = agent.stub.PtyStream(iter(q.get, None))
    next(events)  # started
    return q, events


def test_nothing_of_the_tenant_outside_cmds(agent: AgentProcess) -> None:
    with sandbox(agent) as sb:
        agent.stub.WriteFile(pb.WriteFileRequest(sandbox_id=sb, path="/tmp/up", content=b"u" * 5000))
        start = pb.ExecStart(sandbox_id=sb, cmd="sleep", args=["600"], background=True)
        bg = agent.stub.ExecStream(iter([pb.ExecStreamRequest(start=start)]))
        next(bg)
        bg.cancel()
        terms = [terminal(agent, sb, user) for user in ("", "nobody")]
        time.sleep(1)
        res = agent.exec(sb, "python3", "-c", PROBE, timeout_sec=60)
        assert res.exit_code == 0, res.stderr
        found = json.loads(res.stdout)
        for q, events in terms:
            q.put(None)
            events.cancel()  # type: ignore[attr-defined]
        # start_cmd's sleep, bg sleep, two shells, the allocator, this probe.
        assert len(found["seen"]) >= 6, [c[:30] for c in found["seen"]]
        assert found.get("allocator"), found
        assert found["outside"] == {}, found
        assert found["escapes"] and all(v != "done" for v in found["escapes"].values()), found
        groups = "grep -E ':(memory|pids):' /proc/1/cgroup | cut -d: -f2- | sort"
        assert agent.exec(sb, "sh", "-c", groups).stdout == b"memory:/\npids:/\n"
