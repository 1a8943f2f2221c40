"""Session 13's attack on session 12's runtimes: crun through the fork-based OCI spawner (the
agent's default where crun is installed) and gVisor beside it, as a tenant would drive them: its
sandboxes created and deleted in a loop, and scripts inside them.

Fixed: every crun sandbox left a zombie ``crun`` process on the host for the agent's life
(``crun run --detach`` daemonizes; its grandchild exits after crun itself and is re-parented to
the agent, the subreaper, which never waited for it), and every gVisor sandbox that ended left
its runsc processes (``exe``: the gofer, a ptrace stub per tenant process: 2 a sandbox idle,
~25 with 20 processes, up to its pids limit) the same way. A pid each, for the agent's life:
with this host's 32768 pids, a tenant's create/delete loop (an estimate: ~6 crun creates a
second per agent) or a few dozen gVisor sandboxes full of processes would stop every fork on
the host, other tenants' and the platform's. The agent now reaps them (``runtime/oci.py:
reap_orphans``, every second).

Fixed: crun hands the container's stdio to its root (``fchown``), and the agent gave it the
host's /dev/null: the host's one null device belonged to every crun sandbox's root, which could
``chmod 000`` it for every non-root process on the host and in every other sandbox (the same
inode is bound into each). runsc did the same with its own user (nobody). The runtimes now get
an unnamed file on the sandbox's own run tmpfs instead, and an agent that starts gives a
/dev/null an older one handed over back to root.

Fixed: ``AF_VSOCK`` sockets, which no network namespace holds: on a VM host (this one is a
Firecracker guest with virtio-vsock) they reach the hypervisor's services past every network
rule, ``internet=false`` included. Refused on every ABI (i386's ``socketcall`` cannot be
inspected by seccomp: socket creation through it is refused whatever the family).

Fixed: the runtime inherited the agent's whole environment; with ``NOTIFY_SOCKET`` in it (a
service manager's Type=notify sets it) runc and crun took it as the container's and every create
failed. The runtime now gets PATH alone.

Fixed (a second wall): ``pidfd_getfd``, which copies another process's descriptor as ptrace
could, was not in the seccomp deny-list beside ptrace and ``process_vm_readv``.

Held: sandbox root of an ``internet=false`` sandbox cannot leave the blocked device group nor
make a way around it over netlink (no ``CAP_NET_ADMIN`` over the netns it owns);
an exec'd process inside a crun sandbox holds no descriptor but its own stdio, and no
process in the sandbox sees anything of the agent's (or the spawner's) environment.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.agent import AgentProcess, scratch_agent
from warren.agent.network import BLOCKED_GROUP
from warren.agent.templates import MAPPED_BASE
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

# In the agent's environment, so in the spawner's and crun's: it must reach no sandbox process.
CANARY = "WARREN_SESSION13_CANARY"


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    with scratch_agent("attack-session13-runtime", runtime="crun", env={CANARY: "agent-only"}) as a:
        yield a


def _zombies(agent: AgentProcess) -> dict[str, int]:
    """The agent's zombie children, counted by name (the oracle: the host's /proc)."""
    assert agent.proc is not None
    out: dict[str, int] = {}
    # Listed, then read: a process that exits between the two is skipped (pathlib's glob
    # stats each entry and raised ESRCH for one that had just gone: failed once in CI).
    for pid in (name for name in os.listdir("/proc") if name.isdigit()):
        try:
            comm, _, rest = Path(f"/proc/{pid}/stat").read_text().partition("(")[2].rpartition(")")
            state, ppid = rest.split()[:2]
        except (OSError, ValueError):
            continue
        if state == "Z" and int(ppid) == agent.proc.pid:
            out[comm] = out.get(comm, 0) + 1
    return out


def _settled_zombies(agent: AgentProcess) -> dict[str, int]:
    """The agent's zombies once they stop going away: none within 30 s, else what stays."""
    deadline = time.monotonic() + 30
    while (found := _zombies(agent)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def _destroy(agent: AgentProcess, sb_id: str) -> None:
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb_id), timeout=120)


def test_a_create_delete_loop_on_crun_leaves_no_zombies(agent: AgentProcess) -> None:
    loops = 8
    for _ in range(loops):
        sb = agent.create(memory_mb=128).sandbox_id
        _destroy(agent, sb)
    # Before the fix: {"crun": 8}, for as long as the agent ran.
    assert _settled_zombies(agent) == {}


# Inside a gVisor sandbox: twenty processes alive (each a ptrace stub on the host) when it ends.
FORK_AND_WAIT = "for i in $(seq 20); do sleep 600 & done; echo started"


@pytest.mark.parametrize("children", [0, 20], ids=["idle", "with-20-processes"])
def test_ended_gvisor_sandboxes_leave_no_zombies(agent: AgentProcess, children: int) -> None:
    sbs = [agent.create(memory_mb=256, runtime="gvisor").sandbox_id for _ in range(2)]
    try:
        if children:
            for sb in sbs:
                res = agent.exec(sb, "sh", "-c", FORK_AND_WAIT)
                assert res.stdout.strip() == b"started", res
    finally:
        for sb in sbs:
            _destroy(agent, sb)
    # Before the fix: 2 "exe" per sandbox (idle), more with processes in it.
    assert _settled_zombies(agent) == {}


# Inside a crun sandbox, as root: every descriptor of the exec'd process, and every process's
# environment (PID 1, the guest, included).
INSIDE = r"""
import json, os
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass  # the listing's own descriptor, closed by now
envs = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        envs[pid] = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
    except OSError:
        pass
print(json.dumps({"fds": fds, "envs": envs}))
"""


def test_crun_sandboxes_hold_no_host_descriptor_or_agent_environment(agent: AgentProcess) -> None:
    sb = agent.create(memory_mb=128).sandbox_id
    try:
        out = json.loads(agent.py(sb, INSIDE).stdout)
    finally:
        _destroy(agent, sb)
    fds = {fd: target for fd, target in out["fds"].items() if fd not in ("0", "1", "2")}
    assert fds == {}, fds
    assert "1" in out["envs"], out  # the guest's own environment was read
    leaked = {pid: env for pid, env in out["envs"].items() if CANARY in env or "WARREN_" in env}
    assert leaked == {}, leaked
    # The oracle: the canary is in the agent's environment (crun gets PATH alone).
    assert agent.proc is not None
    assert CANARY.encode() in Path(f"/proc/{agent.proc.pid}/environ").read_bytes()


# Inside the sandbox, as root: what PID 1's stdio is (before the fix, the host's null device,
# which crun had made this sandbox root's own: ``chmod 000 /dev/null`` here reached the host).
STDIO = "for fd in 0 1 2; do stat -L -c '%F %t:%T %u' /proc/1/fd/$fd; done"


def _is_char(path: str, rdev: int) -> bool:
    st = os.stat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == rdev


def _init_pid(agent: AgentProcess, sb_id: str) -> int:
    return int((agent.data_dir / "sandboxes" / sb_id / "init.pid").read_text())


def _unnamed_on(pids: list[int], dev: int) -> list[str]:
    """Descriptors of ``pids`` open on an unnamed file (the runtime's stdio) of device ``dev``."""
    found = []
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                st = os.stat(fd)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_dev == dev and st.st_nlink == 0:
                found.append(f"{pid}/{fd.name}")
    return found


@pytest.mark.parametrize("runtime", ["crun", "runc", "gvisor"])
def test_the_runtime_never_gets_the_hosts_dev_null(agent: AgentProcess, runtime: str) -> None:
    sb = agent.create(memory_mb=256, runtime=runtime).sandbox_id
    bundle = agent.data_dir / "sandboxes" / sb
    try:
        # The host's view (the oracle): the sandbox processes' descriptors. The runtime's
        # stdio, which runc and crun pass to the container's init and runsc keeps in its
        # sandbox process, is an unnamed file of the sandbox's run tmpfs, never /dev/null.
        pid, null = _init_pid(agent, sb), os.stat("/dev/null").st_rdev
        targets = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)}
        runsc = (bundle / "runsc.pids").read_text().split() if runtime == "gvisor" else []
        held = _unnamed_on([pid, *map(int, runsc)], os.stat(bundle / "run").st_dev)
        nulls = [fd for fd in (0, 1, 2) if _is_char(f"/proc/{pid}/fd/{fd}", null)]
        inside = agent.exec(sb, "sh", "-c", STDIO).stdout.decode()
    finally:
        _destroy(agent, sb)
    assert held, targets
    if runtime != "gvisor":  # gVisor's sandbox process opens a /dev/null of its own as stdio
        assert nulls == [], targets
        assert "character special file 1:3" not in inside, inside


# Inside the sandbox: a child holds a pipe; pidfd_getfd would copy its descriptor (ptrace's
# reach, without ptrace). Prints the call's result and errno.
PIDFD_GETFD = r"""
import ctypes, json, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    time.sleep(60)
    os._exit(0)
pidfd = libc.syscall(434, pid, 0)  # pidfd_open: allowed (a process's own handle)
ctypes.set_errno(0)
got = libc.syscall(438, pidfd, r, 0)  # pidfd_getfd
err = ctypes.get_errno()
os.kill(pid, 9)
print(json.dumps([pidfd >= 0, got, err]))
"""


@pytest.mark.parametrize("runtime", ["crun", "runc"])
def test_pidfd_getfd_is_refused_like_ptrace(agent: AgentProcess, runtime: str) -> None:
    sb = agent.create(memory_mb=128, runtime=runtime).sandbox_id
    try:
        opened, got, err = json.loads(agent.py(sb, PIDFD_GETFD).stdout)
    finally:
        _destroy(agent, sb)
    assert opened and (got, err) == (-1, 1), (got, err)  # EPERM from the filter


# Inside an internet=false sandbox, as root, over rtnetlink: eth0 into group 0, a new bridge,
# an address, a route. Prints each request's errno (0: the kernel did it; 1: EPERM).
NETLINK = r"""
import json, socket, struct, sys
RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 20, 24
ACK, NEW = 0x1 | 0x4, 0x1 | 0x4 | 0x400 | 0x200  # REQUEST|ACK (+ CREATE|EXCL)
def attr(kind, data):
    n = 4 + len(data)
    return struct.pack("HH", n, kind) + data + b"\0" * ((4 - n % 4) % 4)
def ask(kind, flags, body):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    s.sendall(struct.pack("IHHII", 16 + len(body), kind, flags, 1, 0) + body)
    return -struct.unpack("i", s.recv(4096)[16:20])[0]
dev = socket.if_nametoindex(sys.argv[1])
link = struct.pack("BxHiII", 0, 0, dev, 0, 0)
out = {"group 0": ask(RTM_NEWLINK, ACK, link + attr(27, struct.pack("I", 0)))}
out["new bridge"] = ask(
    RTM_NEWLINK, NEW, struct.pack("BxHiII", 0, 0, 0, 0, 0) + attr(3, b"b0\0") + attr(18, attr(1, b"bridge"))
)
addr = struct.pack("BBBBI", 2, 24, 0, 0, dev)
out["address"] = ask(RTM_NEWADDR, NEW, addr + attr(2, bytes([192, 0, 2, 9])))
route = struct.pack("BBBBBBBBI", 2, 24, 0, 0, 254, 4, 253, 1, 0)  # main table, static, scope link
route += attr(1, bytes([198, 51, 100, 0])) + attr(4, struct.pack("i", dev))
out["route"] = ask(RTM_NEWROUTE, NEW, route)
print(json.dumps(out))
"""


def test_internet_off_holds_against_netlink_from_inside(agent: AgentProcess) -> None:
    # The probe works: with CAP_NET_ADMIN (host root, a network namespace of its own) the
    # kernel gets past its permission check on every request.
    oracle = subprocess.run(
        ["unshare", "-n", "python3", "-c", NETLINK, "lo"], capture_output=True, text=True, check=True
    )
    assert 1 not in json.loads(oracle.stdout).values(), oracle.stdout
    sb = agent.create(memory_mb=128, internet=False)
    try:
        out = json.loads(agent.py(sb.sandbox_id, NETLINK, "eth0").stdout)
        slot = (int(ipaddress.IPv4Address(sb.host_ip)) - int(ipaddress.IPv4Address("10.11.0.0"))) // 4
        group = int(Path(f"/sys/class/net/wv{slot}/netdev_group").read_text())
    finally:
        _destroy(agent, sb.sandbox_id)
    assert out == dict.fromkeys(out, 1) and len(out) == 4, out  # EPERM, every one
    assert group == BLOCKED_GROUP


def test_an_agent_repairs_a_dev_null_an_older_agent_handed_over() -> None:
    """What an older agent's crun left: the host's /dev/null owned by sandbox root (mapped uid
    0). A starting agent gives it back to root, 0666, before any sandbox can use it."""
    os.chown("/dev/null", MAPPED_BASE, MAPPED_BASE)
    try:
        # (Not this agent's log line: under xdist another worker's agent may start first.)
        with scratch_agent("attack-session13-dev-null", runtime="crun"):
            st = os.stat("/dev/null")
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o666)
    finally:
        os.chown("/dev/null", 0, 0)


# Inside the sandbox: socket() of a few families, directly and through i386's int 0x80 (the
# direct socket call, 359, and socketcall, 102, whose arguments seccomp cannot read). Prints
# "ok" or the errno (i386: the child's exit status).
SOCKETS = r"""
import ctypes, json, os, socket, struct
out = {}
for fam, name in ((40, "vsock"), (2, "inet"), (1, "unix")):
    try:
        socket.socket(fam, socket.SOCK_STREAM).close()
        out[name] = "ok"
    except OSError as e:
        out[name] = e.errno
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
i = ctypes.c_int
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, i, i, i, ctypes.c_long]
page = libc.mmap(None, 4096, 7, 0x22 | 0x40, -1, 0)  # rwx, private anonymous, below 4 GiB
code = bytes.fromhex("53" "89f8" "89f3" "4189c8" "89d1" "4489c2" "cd80" "5b" "c3")
ctypes.memmove(page, code, len(code))
call = ctypes.CFUNCTYPE(i, i, i, i, i)(page)
args = page + 256
for fam, name in ((40, "vsock"), (2, "inet")):
    ctypes.memmove(args, struct.pack("III", fam, 1, 0), 12)
    for nr, how, a1, a2 in ((102, "socketcall", 1, args), (359, "direct", fam, 1)):
        pid = os.fork()
        if pid == 0:
            rc = call(nr, a1, a2, 0)
            os._exit(0 if rc >= 0 else min(-rc, 254))
        out[f"i386 {how} {name}"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(out))
"""


@pytest.mark.parametrize("runtime", ["crun", "runc"])
def test_vsock_sockets_are_refused_on_every_abi(agent: AgentProcess, runtime: str) -> None:
    sb = agent.create(memory_mb=128, runtime=runtime).sandbox_id
    try:
        out = json.loads(agent.py(sb, SOCKETS).stdout)
    finally:
        _destroy(agent, sb)
    # Before the fix: "ok" and 0 for every vsock entry.
    vsock = {k: v for k, v in out.items() if "vsock" in k}
    assert vsock == dict.fromkeys(vsock, 1) and len(vsock) == 3, out  # EPERM
    assert out["inet"] == out["unix"] == "ok" and out["i386 direct inet"] == 0, out


@pytest.fixture(scope="module")
def notified_agent() -> Iterator[tuple[AgentProcess, socket.socket]]:
    """An agent whose service manager set NOTIFY_SOCKET (systemd's Type=notify does), with a
    socket of the test's own at that path, to see what reaches it."""
    where = Path(tempfile.mkdtemp(prefix="warren-notify-"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(where / "notify.sock"))
    listener.setblocking(False)
    try:
        env = {"NOTIFY_SOCKET": str(where / "notify.sock")}
        with scratch_agent("attack-session13-notify", runtime="crun", env=env) as a:
            yield a, listener
    finally:
        listener.close()
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.parametrize("runtime", ["crun", "runc"])
def test_the_runtime_gets_nothing_of_the_agents_environment(
    notified_agent: tuple[AgentProcess, socket.socket], runtime: str
) -> None:
    agent, listener = notified_agent
    # Before the fix: the runtime waited for READY=1 from the container (120 s, then failed).
    req = pb.CreateSandboxRequest(memory_mb=128, runtime=runtime)
    sb = agent.stub.CreateSandbox(req, timeout=60).sandbox_id
    try:
        script = "grep -c 'notify.sock\\|/run/notify' /proc/self/mountinfo; env"
        inside = agent.exec(sb, "sh", "-c", script).stdout.decode()
    finally:
        _destroy(agent, sb)
    assert inside.splitlines()[0] == "0" and "NOTIFY" not in inside, inside
    with pytest.raises(BlockingIOError):
        listener.recv(4096)  # nothing was sent as the agent's service
