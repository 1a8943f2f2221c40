"""Session 16: a sandbox's tenant (``nobody`` too) makes the guest (PID 1) its sandbox's OOM victim.

The guest starts every command at ``oom_score_adj`` 1000 and keeps its own at 0, so that the
memory cgroup's OOM killer takes a tenant process first (session 15). But a process may lower its
own score down to ``oom_score_adj_min``, a floor only a writer with CAP_SYS_RESOURCE sets and
every process inherits at fork. The runtime's write had left the guest's floor at 0, so any
tenant process could write 0 to its own ``/proc/self/oom_score_adj``: then, with the memory held
by processes each smaller than the guest (~9 MiB), or held where no process's size shows it (pipe
buffers), the guest was the largest at 0 and died, and the sandbox with it ("its container
exited"). Before the fix, runc and crun: the guest killed at the first commands.

The first fix (the floor at 1000, ``runtime/guest_oom.py``) needs CAP_SYS_RESOURCE, which the
reference test machines' root lacks. The fix that holds everywhere: the agent chooses the victim
itself (``runtime/oom_guard.py``): the kernel's killer is off in the sandbox's memory cgroup
(``oom_kill_disable``) and on its OOM event the agent kills the largest process that is not the
guest. Scores no longer decide anything inside the sandbox.

As the attacker runs it: a script in a 128 MiB sandbox (runc and crun), as ``nobody`` and as
root, that takes the lowest score it can get and fills the sandbox (many small processes, or
memory in pipe buffers that small processes hold); then commands, which must be served. A plain
hog (one big process) still dies with SIGKILL and the sandbox lives.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess, scratch_agent
from warren.agent.runtime import guest_oom
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

# The lowest score the kernel lets this process take (the floor: 0 without the agent's write).
LOWEST = r"""
import os, time
for score in (b"-1000", b"-1", b"0", b"999", b"1000"):
    try:
        with open("/proc/self/oom_score_adj", "wb", buffering=0) as f:
            f.write(score)
        break
    except OSError:
        pass
"""
# Many small processes: ``sleep``s forked until the cgroup refuses (memory or pids), forever.
SMALL = (
    LOWEST
    + r"""
while True:
    try:
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", "300"])
    except OSError:
        time.sleep(0.05)
"""
)
# Memory no process's size shows: 1 MiB pipes, filled, each pair held by a ``sleep`` (~1 MiB of
# its own) that the filler forks and leaves them to; the filler closes its copies.
PIPES = (
    LOWEST
    + r"""
import fcntl
while True:
    try:
        fds = []
        for _ in range(4):
            r, w = os.pipe()
            fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
            os.set_blocking(w, False)
            try:
                while True:
                    os.write(w, b"x" * 65536)
            except BlockingIOError:
                pass
            fds += [r, w]
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", "300"])
        for fd in fds:
            os.close(fd)
    except OSError:
        time.sleep(0.05)
"""
)
# One process that grows until it is killed (it touches every page it takes).
BIG = (
    LOWEST
    + r"""
held = []
while True:
    held.append(bytearray(b"x" * (4 << 20)))
"""
)
COMMANDS = 20


@pytest.fixture(scope="module", params=["runc", "crun"])
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with scratch_agent(f"attack16-guest-oom-{request.param}", runtime=request.param) as a:
        yield a


@pytest.fixture
def sandbox(agent: AgentProcess) -> Iterator[str]:
    sb = agent.create(memory_mb=128).sandbox_id
    try:
        yield sb
    finally:
        with contextlib.suppress(grpc.RpcError):  # a dead guest's sandbox is gone already
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=60)


def sh(agent: AgentProcess, sb: str, script: str, user: str = "", timeout: int = 30) -> str:
    res = agent.exec(sb, "sh", "-c", script, timeout_sec=timeout, user=user)
    assert res.exit_code == 0, res.stderr.decode()[-2000:]
    return res.stdout.decode()


def py(script: str) -> str:
    return f"python3 -c {shlex.quote(script)}"


def oom_lines(agent: AgentProcess) -> str:
    """The agent's last words on OOM kills, for a failure's message."""
    return "\n".join([x for x in agent.log_path.read_text().splitlines() if "oom" in x or "guest" in x][-20:])


# What a command started while its sandbox is held at the limit may meet besides a kill: the
# kernel refuses the memory of a system call (a fork's, a pipe's, an exec's) with ENOMEM rather
# than killing (the agent, not the kernel, kills there, a moment later). The guest answers.
# A reply refused its socket memory ends its connection ("guest closed the connection").
REFUSED = (
    "Cannot allocate memory", "Too many open files in system", "Argument list too long",
    "guest closed the connection",
    "command not found: true",  # its lookup refused (it is there)
)  # fmt: skip


def served(agent: AgentProcess, sb: str) -> None:
    """Commands keep being answered: the guest lives. A command may be a victim itself (killed,
    or its memory refused: exit 127 from a child that could not exec, SIGSEGV from an exec
    that could not map its program), and the guest may refuse a request for memory."""
    alive = 0
    for i in range(COMMANDS):
        try:
            res = agent.exec(sb, "true", timeout_sec=30)
        except grpc.RpcError as e:
            code, details = e.code(), e.details()  # type: ignore[attr-defined]
            # FAILED_PRECONDITION "its container exited": the guest was the OOM killer's victim.
            if code == grpc.StatusCode.FAILED_PRECONDITION or not any(r in details for r in REFUSED):
                pytest.fail(f"command {i}: {code}: {details}\n{oom_lines(agent)}")
            continue
        assert res.exit_code in (0, -9, 137, 127, -11), (i, res)
        alive += res.exit_code == 0
    assert alive > 0, "every command was killed"


def stop_and_serve(agent: AgentProcess, sb: str) -> None:
    """With the fillers gone (root ends every process but the guest), the sandbox serves as new."""
    deadline = time.monotonic() + 30
    while True:
        try:
            agent.exec(sb, "sh", "-c", "kill -9 -1", timeout_sec=30)  # may itself be refused
            if agent.exec(sb, "echo", "alive", timeout_sec=30).stdout == b"alive\n":
                return
        except grpc.RpcError as e:
            assert e.code() != grpc.StatusCode.FAILED_PRECONDITION, e.details()  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, oom_lines(agent)
        time.sleep(0.5)


def test_the_lowest_score_a_tenant_process_gets(agent: AgentProcess, sandbox: str) -> None:
    """Where the agent holds CAP_SYS_RESOURCE the floor stands too (1000 for every tenant
    process); where it does not, its log says so and the guard below is what holds."""
    show = py(LOWEST + "print(open('/proc/self/oom_score_adj').read().strip())")
    got = {name: sh(agent, sandbox, show, user) for name, user in (("nobody", "nobody"), ("root", ""))}
    assert sh(agent, sandbox, "cat /proc/1/oom_score_adj") == "0\n"
    if guest_oom.able():
        assert got == {"nobody": "1000\n", "root": "1000\n"}, got
    else:
        assert got == {"nobody": "0\n", "root": "0\n"}, got
        assert "event=guest_oom_floor_unavailable" in agent.log_path.read_text()


@pytest.mark.parametrize(
    ("user", "filler"),
    [("nobody", SMALL), ("", SMALL), ("nobody", PIPES), ("", PIPES)],
    ids=["nobody-small", "root-small", "nobody-pipes", "root-pipes"],
)
def test_a_tenant_at_its_lowest_score_cannot_make_the_guest_the_victim(
    agent: AgentProcess, sandbox: str, user: str, filler: str
) -> None:
    sh(agent, sandbox, f"(while :; do {py(filler)}; done) >/dev/null 2>&1 &", user)
    # The fillers reach the limit within a second or two; the guest must outlive this.
    time.sleep(5)
    served(agent, sandbox)
    stop_and_serve(agent, sandbox)


@pytest.mark.parametrize("user", ["nobody", ""], ids=["nobody", "root"])
def test_one_big_process_dies_and_its_sandbox_lives(agent: AgentProcess, sandbox: str, user: str) -> None:
    # Killed with SIGKILL, as the kernel's killer did: the shell reports 137.
    assert sh(agent, sandbox, f"{py(BIG)}; echo rc=$?", user, timeout=60) == "rc=137\n"
    assert sh(agent, sandbox, "echo alive") == "alive\n"
    served(agent, sandbox)
