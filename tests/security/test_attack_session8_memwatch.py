"""Session 8's gVisor memory watchdog (guest_agent/memwatch.py) attacked from inside a sandbox,
as ``nobody`` and as sandbox root. The promise (docs/security.md §1b): past its limit a process
of the sandbox gets SIGKILL inside and the sandbox lives; the host's memory for it never passes
its limit + ``MEMORY_HEADROOM``, and the host's OOM killer never has to act in its cgroup (that
would end the whole sandbox, the Sentry).

Each probe reads the host cgroup's ``oom_kill`` counter (cgroup v1 ``memory.oom_control``):
nonzero means the host killed inside the sandbox's cgroup, i.e. the watchdog was outrun or
fooled. Found here (session 9): the sandbox's disk is a host tmpfs written by the Gofer, in the
sandbox's cgroup but not in gVisor's ``/proc/meminfo``; a tenant that filled its disk and then
allocated up to its limit took the cgroup past limit + headroom and the host killed the Sentry.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.harness.agent import AgentProcess, scratch_agent
from tests.harness.leaks import runsc_leftovers, wait_no_leaks
from warren.agent.runtime.gvisor import MEMORY_HEADROOM
from warren.agent.sandbox_fs import disk_size, gvisor_tmp_mb
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

MEMORY_MB = 256
# Its disk: (256 - 32 - 48) * 4/5 = 140 MiB of host tmpfs, beside gVisor's 48 MiB /tmp (session
# 32). "Full": 9 MiB short of it (the layer's own files take some).
DISK_FILL_MB = disk_size(MEMORY_MB, 5120, beside_mb=gvisor_tmp_mb(MEMORY_MB)).mb - 9
# Where the host cgroup's limit is reached (the host ends that sandbox: an outcome some tests
# allow), the kernel may charge a few pages past it (charges it must not fail are forced; CI saw
# max_usage_in_bytes at limit + 4096). The limit still held.
FORCED_CHARGE = 1 << 20


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    with scratch_agent("attack-memwatch") as a:
        yield a


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := fn()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return got


def cgroup(sb_id: str) -> Path:
    return Path(f"/sys/fs/cgroup/memory/warren/{sb_id}")


def host_oom_kills(sb_id: str) -> int:
    for line in (cgroup(sb_id) / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    raise AssertionError("no oom_kill in memory.oom_control (kernel too old for this probe)")


def sh(a: AgentProcess, sb_id: str, script: str, user: str = "nobody", timeout: int = 120) -> pb.ExecResponse:
    return a.exec(sb_id, "/bin/sh", "-c", script, user=user, timeout_sec=timeout)


def sh_until_ended(a: AgentProcess, sb_id: str, script: str, timeout: int) -> int:
    """Run ``script`` as ``nobody`` until it ends or the host ends its sandbox (its cgroup is
    then gone; the exec then ends at once, agent/container_exits.py). The cgroup's highest
    ``memory.max_usage_in_bytes`` seen meanwhile, read all along (0 if it was never read)."""
    args = ["-c", script]
    req = pb.ExecRequest(sandbox_id=sb_id, cmd="/bin/sh", args=args, user="nobody", timeout_sec=timeout)
    call = a.stub.Exec.future(req, timeout=timeout + 60)
    peak = 0

    def read_peak() -> None:
        nonlocal peak
        with contextlib.suppress(OSError):  # gone with its sandbox
            peak = max(peak, int((cgroup(sb_id) / "memory.max_usage_in_bytes").read_text()))

    def over() -> bool:
        read_peak()
        return call.done() or not cgroup(sb_id).exists()

    try:
        wait_for("the command to end or its sandbox to be ended", over, timeout=timeout + 60)
    finally:
        call.cancel()  # an ended sandbox's exec: the agent gives up on it at its timeout
    read_peak()
    return peak


def alive(a: AgentProcess, sb_id: str) -> bool:
    try:
        return sh(a, sb_id, "echo alive", timeout=20).stdout == b"alive\n"
    except grpc.RpcError:
        return False


@pytest.fixture
def sandbox(agent: AgentProcess) -> Iterator[str]:
    r = agent.create(memory_mb=MEMORY_MB, runtime="gvisor")
    limit = int((cgroup(r.sandbox_id) / "memory.limit_in_bytes").read_text())
    assert limit == (MEMORY_MB << 20) + MEMORY_HEADROOM
    try:
        yield r.sandbox_id
    finally:
        try:
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id), timeout=120)
        except grpc.RpcError as e:  # the host ended it (the defect): the agent removed it
            assert e.code() == grpc.StatusCode.NOT_FOUND, e  # type: ignore[attr-defined]
        assert wait_no_leaks(agent, r.sandbox_id, r.host_ip) == []
        wait_for("runsc to leave nothing", lambda: runsc_leftovers(agent.data_dir, r.sandbox_id) == [])


def hog(mib: int, then: str = "print('survived')") -> str:
    """A process that touches ``mib`` MiB, 8 MiB at a time (an allocation loop), then ``then``."""
    code = f"b = []\nfor _ in range({mib // 8}): b.append(bytearray(8 << 20))\n{then}"
    return f"python3 -c {shlex.quote(code)}"


def assert_held(a: AgentProcess, sb_id: str, res: pb.ExecResponse) -> None:
    assert res.exit_code in (-9, 137) and b"survived" not in res.stdout, res
    # Alive: a command runs again (one started while the victim's memory was still counted
    # may be the watchdog's next victim, as under Linux's OOM killer); an ended sandbox never does.
    wait_for("a command to run in the sandbox", lambda: alive(a, sb_id))
    assert host_oom_kills(sb_id) == 0
    peak = int((cgroup(sb_id) / "memory.max_usage_in_bytes").read_text())
    assert peak <= (MEMORY_MB << 20) + MEMORY_HEADROOM


# Alone (serial), as the late hog below: on top of a full disk the watchdog has only the headroom
# to catch the hog in; beside the parallel pass on a loaded machine it was once outrun and the host
# ended the sandbox (CI, session 27: the self-harm case of docs/security.md §1b).
@pytest.mark.serial
@pytest.mark.parametrize(("user", "where"), [("nobody", "/var/tmp"), ("root", "/dev/shm")])
def test_a_full_disk_then_a_hog_is_killed_inside_and_the_sandbox_lives(
    agent: AgentProcess, sandbox: str, user: str, where: str
) -> None:
    """The disk (and /dev/shm on it) is a host tmpfs the Gofer writes: in the host cgroup, not
    in gVisor's meminfo. Before session 9 the watchdog let the hog reach the limit on top of a
    full disk, and the host's OOM killer ended the whole sandbox."""
    filled = sh(agent, sandbox, f"head -c {DISK_FILL_MB}M /dev/zero > {where}/fill && echo ok", user=user)
    assert filled.stdout == b"ok\n", filled
    assert_held(agent, sandbox, sh(agent, sandbox, hog(MEMORY_MB * 2), user=user, timeout=60))
    # The tenant's files are still there (the sandbox was not ended), and it can go on.
    assert (
        sh(agent, sandbox, f"wc -c < {where}/fill", user=user).stdout
        == str(DISK_FILL_MB << 20).encode() + b"\n"
    )


def test_many_processes_at_once_cannot_take_the_host_past_the_cgroup_nor_harm_a_neighbour(
    agent: AgentProcess, sandbox: str
) -> None:
    """Eight 48 MiB allocators at once (384 MiB together, none near the limit alone) on one
    vCPU: the watchdog shares that CPU with them and is outrun (known, docs/security.md §1b: the
    host then ends this sandbox, as before the watchdog). What holds: the host's memory for it
    never passes limit + headroom, a neighbour goes on, and nothing of it is left behind."""
    neighbour = agent.create(memory_mb=128, runtime="gvisor")
    try:
        one = hog(48, then="import time; time.sleep(5)")
        # Ended by the host: an outcome allowed here.
        peak = sh_until_ended(agent, sandbox, f"for i in 1 2 3 4 5 6 7 8; do {one} & done; wait", 60)
        assert peak <= (MEMORY_MB << 20) + MEMORY_HEADROOM + FORCED_CHARGE
        assert alive(agent, neighbour.sandbox_id)
        assert host_oom_kills(neighbour.sandbox_id) == 0
    finally:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=neighbour.sandbox_id), timeout=120)
        assert wait_no_leaks(agent, neighbour.sandbox_id, neighbour.host_ip) == []


def test_nobody_cannot_signal_the_guest_and_the_watch_goes_on(agent: AgentProcess, sandbox: str) -> None:
    """``nobody`` cannot stop or kill PID 1 (the watchdog's process); afterwards a hog is still
    killed inside. (Sandbox root can kill the guest: it loses its own sandbox only, §1b.)"""
    res = sh(agent, sandbox, "for s in STOP KILL SEGV TERM; do kill -$s 1 2>/dev/null || echo refused; done")
    assert res.stdout == b"refused\n" * 4, res
    assert alive(agent, sandbox)
    assert_held(agent, sandbox, sh(agent, sandbox, hog(MEMORY_MB * 2), timeout=60))


# Alone (serial): its late hog must be caught by the watchdog inside the 96 MiB of headroom; with
# the other worker's suite on the same two cores the Sentry was once seen thrashing at the host
# cgroup's limit instead, the exec timing out (the self-harm case of docs/security.md §1b).
@pytest.mark.serial
def test_sandbox_root_cannot_replace_the_limit_file(agent: AgentProcess, sandbox: str) -> None:
    """The limit the watchdog re-reads every second: sandbox root can neither remove, rename,
    rewrite nor shadow it, and a hog is still killed inside afterwards."""
    limit = str(MEMORY_MB << 20).encode()
    script = (
        "f=/run/warren/memory-limit; rm -f $f; mv $f $f.x; echo 99999999999999 > $f; "
        "chmod 666 $f; ln -sf /proc/self/cmdline $f.new && mv -f $f.new $f; "
        "mount -t tmpfs none /run/warren; cat $f"
    )
    res = sh(agent, sandbox, script, user="root")
    assert res.stdout == limit, res
    assert sh(agent, sandbox, "cat /run/warren/memory-limit").stdout == limit
    late_hog = sh(agent, sandbox, "sleep 1.5; " + hog(MEMORY_MB * 2), user="root", timeout=60)
    assert_held(agent, sandbox, late_hog)


def test_sandbox_root_killing_the_guest_loses_only_its_own_sandbox(agent: AgentProcess) -> None:
    """Sandbox root may kill PID 1 (gVisor delivers it): the watchdog goes with it, and its own
    sandbox is what it loses; the host cgroup holds and nothing is left behind."""
    r = agent.create(memory_mb=128, runtime="gvisor")
    try:
        with contextlib.suppress(grpc.RpcError):
            sh(agent, r.sandbox_id, "kill -KILL 1; sleep 1", user="root", timeout=30)
            sh(agent, r.sandbox_id, hog(512), user="root", timeout=30)
        with contextlib.suppress(OSError):  # gone with its sandbox
            peak = int((cgroup(r.sandbox_id) / "memory.max_usage_in_bytes").read_text())
            assert peak <= (128 << 20) + MEMORY_HEADROOM + FORCED_CHARGE
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id), timeout=120)
        assert wait_no_leaks(agent, r.sandbox_id, r.host_ip) == []
        wait_for("runsc to leave nothing", lambda: runsc_leftovers(agent.data_dir, r.sandbox_id) == [])


def test_a_file_read_back_is_not_held_twice_and_a_hog_under_the_limit_lives(
    agent: AgentProcess, sandbox: str
) -> None:
    """The page cache of a disk file the tenant wrote and reads back: gVisor does not keep a
    second copy in the Sentry here, so the disk (counted) plus a process under the limit fit in
    the host cgroup: the process lives, and the host never kills."""
    script = "head -c 100M /dev/urandom > /var/tmp/f && cat /var/tmp/f /var/tmp/f > /dev/null"
    res = sh(agent, sandbox, script)
    assert res.exit_code == 0, res
    lives = sh(agent, sandbox, hog(96, then="import time; time.sleep(2); print('lived')"), timeout=60)
    assert lives.stdout == b"lived\n", lives
    assert host_oom_kills(sandbox) == 0


def test_a_full_gvisor_tmpfs_ends_in_enospc_not_at_the_host(agent: AgentProcess, sandbox: str) -> None:
    """/tmp under gVisor is its own tmpfs: memory that no kill frees. Since session 32 it has a
    size (agent/create.py, gvisor_tmp_mb): writing twice the limit there ends in ENOSPC, the
    host never kills, and the tenant frees it again with an rm."""
    res = sh(agent, sandbox, f"head -c {MEMORY_MB * 2}M /dev/zero > /tmp/fill; echo wrote", timeout=60)
    assert b"No space left on device" in res.stderr, res
    assert host_oom_kills(sandbox) == 0
    assert sh(agent, sandbox, "rm -f /tmp/fill && echo ok").stdout == b"ok\n"
    assert alive(agent, sandbox)


SOCKET_HOARD = r"""
import os, socket
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(128)
held = []
for _ in range(int(os.environ["PAIRS"])):
    c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 24)
    c.connect(srv.getsockname()); s, _ = srv.accept()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24); c.setblocking(False)
    try:
        while True: c.send(b"x" * 65536)
    except BlockingIOError: pass
    held.append((c, s))
print("survived")
"""


def test_socket_buffers_can_end_only_their_own_sandbox(agent: AgentProcess, sandbox: str) -> None:
    """Loopback TCP buffers are the Sentry's own heap: in the host cgroup, in no figure the
    guest can read (five full pairs hold ~60 MiB while /proc/meminfo's MemFree does not move).
    ``nobody`` filling fifty pairs outruns the watchdog and the host ends that sandbox (known,
    self-harm only, docs/security.md §1b). What holds: the host cgroup, the neighbour
    (``sandbox``), and nothing left behind."""
    hoarder = agent.create(memory_mb=128, runtime="gvisor")
    try:
        hoard = f"PAIRS=50 python3 -c {shlex.quote(SOCKET_HOARD)}"
        peak = sh_until_ended(agent, hoarder.sandbox_id, hoard, 30)
        assert peak <= (128 << 20) + MEMORY_HEADROOM + FORCED_CHARGE
        assert alive(agent, sandbox)
        assert host_oom_kills(sandbox) == 0
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=hoarder.sandbox_id), timeout=120)
        assert wait_no_leaks(agent, hoarder.sandbox_id, hoarder.host_ip) == []
        wait_for("runsc to leave nothing", lambda: runsc_leftovers(agent.data_dir, hoarder.sandbox_id) == [])
