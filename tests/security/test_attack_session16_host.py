"""Session 16: what held of session 15's host uid ranges and id-mapped lowers, attacked from inside.

Each runc/crun sandbox runs as a host uid range of its own and sees the canonical layers through
id-mapped lower mounts (agent/idmap.py). Attacked here as sandbox root:

- two live sandboxes never share a host uid, and neither runs as the canonical range the layers
  are stored in;
- a lower file chowned, chmodded or hard-linked in one sandbox is copied up: the neighbour on the
  same layer and the host's layer file keep their owners and modes;
- a snapshot export of that sandbox holds owners of 0..65535 only (an owner the sandbox sees as
  unmapped becomes nobody, without set-uid), no socket or device, and hard links as links;
- ``nobody`` cannot raise the guest's OOM score, and the id maps' user namespaces
  (``/run/warren/userns/idmap-*``, one per slot base, so as many as slots were ever used at
  once, whatever the templates) are nowhere in a sandbox;
- nothing a sandbox leaves (a process in its own session, an abstract socket held only in
  flight with its uid's whole count of descriptors in flight, SysV IPC, a POSIX queue, /dev/shm
  and /tmp files) reaches the next sandbox on its slot
  and host uid range, and no host process keeps the range (a slot's user namespace and netns are
  made anew for each sandbox; only the range is reused).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import tarfile
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess, scratch_agent
from tests.harness.machine import MINIMAL_CACHE
from tests.harness.shared_agent import shared_agent
from warren.agent import slot_userns
from warren.agent.templates import MAPPED_BASE, MAPPED_SIZE
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

LOWER_FILES = ("etc/passwd", "usr/bin/true", "usr/bin/env")
STAT = "stat -c '%u %g %a %h' " + " ".join(f"/{p}" for p in LOWER_FILES)
# As sandbox root: everything it may do to the lower files, and files of every odd kind.
TAMPER = """
set -e
chown 1234:1234 /etc/passwd && chmod 666 /etc/passwd
chown 65534:65534 /usr/bin/true && chmod 4755 /usr/bin/true
chmod 6755 /usr/bin/env && ln /usr/bin/env /root/envlink
mkdir /data && cd /data
mkfifo fifo
python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind("/data/sock")'
cp /bin/true suid && chmod 6755 suid && ln suid suid2
touch top && chown 65535:65535 top && chmod 4755 top
! mknod cdev c 1 3 2>/dev/null
! mknod wh c 0 0 2>/dev/null
"""


# The worker's shared agent (tests/harness/shared_agent.py) for the tests that only create and
# destroy sandboxes of their own and read what those see; ``unpooled`` is an agent of its own.
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


@pytest.fixture
def two(agent: AgentProcess) -> Iterator[tuple[str, str]]:
    sids = (agent.create(memory_mb=128).sandbox_id, agent.create(memory_mb=128).sandbox_id)
    try:
        yield sids
    finally:
        for sid in sids:
            with contextlib.suppress(grpc.RpcError):
                agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=60)


def sh(agent: AgentProcess, sb: str, script: str) -> str:
    res = agent.exec(sb, "sh", "-c", script, timeout_sec=60)
    assert res.exit_code == 0, res.stderr.decode()[-2000:]
    return res.stdout.decode()


def host_stat() -> list[tuple[int, int, int]]:
    out = []
    for p in LOWER_FILES:
        st = os.lstat(MINIMAL_CACHE / "rootfs" / p)
        out.append((st.st_uid, st.st_gid, st.st_mode))
    return out


def test_live_sandboxes_never_share_a_host_uid(agent: AgentProcess, two: tuple[str, str]) -> None:
    ranges = []
    for sid in two:
        inside, base, size = map(int, sh(agent, sid, "cat /proc/self/uid_map").split())
        assert (inside, size) == (0, MAPPED_SIZE)
        ranges.append(range(base, base + size))
    a, b = ranges
    assert a.start >= b.stop or b.start >= a.stop, ranges
    canonical = range(MAPPED_BASE, MAPPED_BASE + MAPPED_SIZE)
    assert all(r.start >= canonical.stop for r in ranges), ranges


def test_a_lower_changed_in_one_sandbox_stays_for_its_neighbour_and_the_host(
    agent: AgentProcess, two: tuple[str, str]
) -> None:
    attacker, neighbour = two
    before, on_host = sh(agent, neighbour, STAT), host_stat()
    sh(agent, attacker, TAMPER)
    assert sh(agent, attacker, STAT) != before  # the attacker's own view did change
    assert sh(agent, neighbour, STAT) == before
    assert host_stat() == on_host
    assert all(MAPPED_BASE <= uid < MAPPED_BASE + MAPPED_SIZE for uid, _, _ in on_host), on_host


def test_an_export_holds_sandbox_owners_and_plain_files_only(
    agent: AgentProcess, two: tuple[str, str]
) -> None:
    attacker = two[0]
    sh(agent, attacker, TAMPER)
    agent.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=attacker), timeout=60)
    data = b"".join(
        msg.chunk
        for msg in agent.stub.ExportSnapshot(pb.ExportSnapshotRequest(sandbox_id=attacker), timeout=120)
        if msg.HasField("chunk")
    )
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name: (m.type, m.mode, m.uid, m.gid, m.linkname) for m in tar.getmembers()}
    assert all(0 <= uid <= 65535 and 0 <= gid <= 65535 for _, _, uid, gid, _ in got.values()), got
    assert {t for t, *_ in got.values()} <= {
        tarfile.REGTYPE,
        tarfile.DIRTYPE,
        tarfile.LNKTYPE,
        tarfile.FIFOTYPE,
    }
    assert "data/sock" not in got and "data/cdev" not in got and "data/wh" not in got
    assert got["etc/passwd"][1:4] == (0o666, 1234, 1234)
    assert got["usr/bin/true"][1:4] == (0o4755, 65534, 65534)
    assert got["data/top"][1:4] == (0o4755, 65535, 65535)
    assert got["data/fifo"][0] == tarfile.FIFOTYPE
    links = {name: link for name, (t, _, _, _, link) in got.items() if t == tarfile.LNKTYPE}
    assert links == {"data/suid2": "data/suid", "usr/bin/env": "root/envlink"}, links


# As sandbox root, everything that might outlive the sandbox: a process in a session of its own,
# an abstract unix socket whose only reference is in flight (a cycle: both ends sent through
# themselves, then closed) with every descriptor this uid may have in flight, SysV IPC and a
# POSIX queue left undeleted, files in /dev/shm and /tmp.
LEAVE = r"""
import array, ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
assert libc.shmget(0x5116, 1 << 20, 0o1666) >= 0 and libc.msgget(0x5116, 0o1666) >= 0
assert libc.semget(0x5116, 1, 0o1666) >= 0
assert libc.mq_open(b"/s16-left", os.O_CREAT | os.O_RDWR, 0o666, None) >= 0
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(b"\0s16-left")
s.listen()
a, b = socket.socketpair()
fds = array.array("i", [a.fileno(), b.fileno(), s.fileno()])
b.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
null, held = os.open("/dev/null", os.O_RDONLY), 0
while True:  # the kernel's count of this uid's descriptors in flight, to its limit
    try:
        a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [null] * 253).tobytes())])
    except OSError:
        break
    held += 253
assert held >= 4096, held
open("/dev/shm/s16-left", "w").write("x")
open("/tmp/s16-left", "w").write("x")
if os.fork() == 0:
    os.setsid()
    os.execv("/bin/sleep", ["sleep", "3000"])
print("left")
"""
# In the sandbox after it, on the same host uid range: what of the above it sees.
FIND = r"""
import array, ctypes, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
comm = lambda pid: open(f"/proc/{pid}/comm").read()
a, b = socket.socketpair()
try:
    a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0]).tobytes())])
    sent = 0
except OSError as e:
    sent = e.errno
print(json.dumps({
    "ipc": [libc.shmget(0x5116, 0, 0), libc.msgget(0x5116, 0), libc.semget(0x5116, 0, 0)],
    "mq": libc.mq_open(b"/s16-left", os.O_RDWR, 0, None),
    "abstract": "@s16-left" in open("/proc/net/unix").read(),
    "in_flight": sent,
    "files": sorted(os.listdir("/dev/shm")) + [p for p in ("/tmp/s16-left",) if os.path.exists(p)],
    "sleepers": [p for p in os.listdir("/proc") if p.isdigit() and comm(p) == "sleep\n"],
}))
"""


@pytest.fixture(scope="module")
def unpooled() -> Iterator[AgentProcess]:
    """No ready slots: a create takes the lowest free slot, so the next one takes the last's."""
    with scratch_agent("attack16-host-slots", env={"WARREN_AGENT_NET_POOL": "0"}) as a:
        yield a


def uid_base(agent: AgentProcess, sb: str) -> int:
    return int(sh(agent, sb, "cat /proc/self/uid_map").split()[1])


def host_uids() -> set[int]:
    uids = set()
    for p in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if p.isdigit():
                uids.add(os.stat(f"/proc/{p}").st_uid)
    return uids


def test_nothing_of_a_sandbox_reaches_the_next_on_its_uid_range(unpooled: AgentProcess) -> None:
    agent = unpooled
    first = agent.create(memory_mb=128).sandbox_id
    base = uid_base(agent, first)
    assert sh(agent, first, f"python3 -c {shlex.quote(LEAVE)}") == "left\n"
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=first), timeout=60)
    assert not {u for u in host_uids() if base <= u < base + MAPPED_SIZE}
    made: list[str] = []
    try:
        # Other agents on this machine take slots too: a lower one freed meanwhile goes first.
        for _ in range(10):
            made.append(agent.create(memory_mb=128).sandbox_id)
            if uid_base(agent, made[-1]) == base:
                break
        else:
            bases = [uid_base(agent, sid) for sid in made]
            pytest.skip(f"the slot ({base}) went to another agent of this machine: {bases}")
        got = json.loads(sh(agent, made[-1], f"python3 -c {shlex.quote(FIND)}"))
        assert got == {
            "ipc": [-1, -1, -1],
            "mq": -1,
            "abstract": False,
            "in_flight": 0,
            "files": [],
            "sleepers": [],
        }
    finally:
        for sid in made:
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=60)


def test_the_guests_score_and_the_id_map_namespaces_are_out_of_reach(
    agent: AgentProcess, two: tuple[str, str]
) -> None:
    sb = two[0]
    res = agent.exec(sb, "sh", "-c", "echo 1000 > /proc/1/oom_score_adj", user="nobody", timeout_sec=30)
    assert res.exit_code != 0 and b"Permission denied" in res.stderr, res
    assert sh(agent, sb, "cat /proc/1/oom_score_adj") == "0\n"
    # The id maps' namespaces are host files of the agent's (0700 root); the sandbox's own
    # /run/warren is its 64 KiB tmpfs with its guest's socket alone.
    st = os.stat(slot_userns.USERNS_DIR)
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700)
    assert "userns" not in sh(agent, sb, "ls -a /run/warren /run")
