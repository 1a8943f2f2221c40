"""Session 19: TCP sockets kept in flight in a unix socket, held by no socket descriptor (v1).

The agent's socket watchdog (runtime/socket_ceiling.py) kills, past a runc/crun sandbox's
ceiling, the ``cmds`` process holding the most socket descriptors. A socket sent over a unix
socket (SCM_RIGHTS) and closed by its sender is held by the unix socket's receive queue, by no
process: its holder (one unix socket) weighs 1. As the attacker runs it (a tenant key; a script
inside the sandbox as ``nobody`` or root): 1200 loopback TCP pairs, one 64 KiB send each never
read, both ends put in flight in one unix socket (the per-user in-flight limit is
RLIMIT_NOFILE; root spreads them over 3 uids), then

* decoys: a forker keeps 64 processes holding 32 socketpairs each (weight 64) alive; the
  watchdog kills 32 of them a tick, the forker replaces them, the holder is never reached;
* hidden: the main thread exits alone (``SYS_exit``) and a thread builds and keeps it all: the
  leader is a zombie whose ``/proc/<pid>/fd`` is empty and whose ``/proc/<pid>/cgroup`` says
  "/", while the process stays in ``cmds``' cgroup.procs (``unshare`` is refused by seccomp):
  no process shows a socket descriptor (``event=socket_memory_no_victim``).

Before session 19 each held 47 MiB (max 49-53) past a 32 MiB ceiling for good (runc and crun);
now, once the per-descriptor kills run out (no victim, or the tick's kills spent twice in a
row) every process of ``cmds`` is killed (``event=socket_memory_kill_all``), the in-flight
sockets go with their unix socket (0 MiB after), the sandbox and its guest live on.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.test_attack_pools_claim import _agent_log
from tests.security.test_attack_session18_socket_ceiling import _cmds_comms, _start
from tests.security.test_attack_session18_socket_memory import _memcg, _tcp
from warren.agent.runtime.socket_ceiling import ceiling

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

MiB = 1 << 20
PAIRS = 1200  # 2400 sockets in flight (< 4096 a uid); ~75 MiB charged past a 16 MiB bound
UIDS = 3  # root's variant: the pairs put in flight by this many uids' senders
SETTLE_S = 1.0  # sampled at least this long once the holder is built (or killed)
WAIT_S = 120.0

# argv: pairs, mode ("decoys" / "hidden"), uids (root: each sender setuid to its own uid).
# The holder names itself "built" (/proc/self/comm; the hidden one its thread, its leader
# "hider") once its pairs are in flight, which the host sees; the forker "forker", its decoys
# "decoy".
INFLIGHT = r"""
import array, ctypes, os, socket, sys, threading, time
pairs, mode, uids = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
BATCH = 20  # pairs a message: the holder weighs 3 + 40 while it builds, a decoy 64
def name(s, who="self"):
    with open(f"/proc/{who}/comm", "w") as f:
        f.write(s)
def forker():
    name("forker")
    alive = set()
    while True:
        while len(alive) < 64:
            pid = os.fork()
            if pid == 0:
                held = [socket.socketpair() for _ in range(32)]
                name("decoy")
                time.sleep(3600)
                os._exit(0)
            alive.add(pid)
        try:
            alive.discard(os.waitpid(-1, 0)[0])
        except ChildProcessError:
            alive.clear()
def put(send, n):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(256)
    for _ in range(0, n, BATCH):
        fds = []
        for _ in range(BATCH):
            c = socket.create_connection(ls.getsockname())
            s, _ = ls.accept()
            c.setblocking(False)
            try:
                c.send(b"x" * 65536)
            except BlockingIOError:
                pass
            fds += [c, s]
        rights = array.array("i", [f.fileno() for f in fds])
        send.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        for f in fds:
            f.close()
    ls.close()
libc = ctypes.CDLL(None, use_errno=True)
def as_uid(uid):  # this thread's credentials only (SYS_setresuid, not glibc's broadcast)
    assert libc.syscall(117, uid, uid, 0) == 0, ctypes.get_errno()
def build():
    keep, send = socket.socketpair()
    for i in range(uids):  # root: each share sent as its own uid (the in-flight limit's)
        if uids > 1:
            as_uid(20000 + i)
        put(send, pairs // uids)
        if uids > 1:
            as_uid(0)
    send.close()
    return keep
if mode == "decoys":
    if os.fork() == 0:
        forker()
    held = build()
    name("built")
    time.sleep(3600)
# hidden: the main thread exits alone (SYS_exit), its thread builds: the leader is a zombie
# whose /proc/<pid>/fd shows nothing, the process lives on in the thread
def hidden():  # names itself: a zombie's /proc/<pid> is not its to write
    time.sleep(0.5)
    held = build()
    name("built", "thread-self")
    time.sleep(3600)
"x".encode("idna")  # imported now: the thread cannot import once the main thread is gone
name("hider")
threading.Thread(target=hidden).start()
libc.syscall(60, 0)
"""


def _names(d: Path) -> list[str]:
    """The comm of every thread of the sandbox's ``cmds`` (a zombie leader's are its threads')."""
    got = []
    for pid in (d / "cmds" / "cgroup.procs").read_text().split():
        with contextlib.suppress(OSError):  # gone meanwhile
            for task in Path(f"/proc/{pid}/task").iterdir():
                got.append((task / "comm").read_text().strip())
    return got


def _lines(platform: Platform, sid: str, event: str) -> list[str]:
    return re.findall(rf"event={event} sandbox={sid} [^\n]*", _agent_log(platform))


def _attack(platform: Platform, t: Tenant, sid: str, mode: str, user: str) -> dict[str, int]:
    """Run the holder; sample the sandbox's TCP usage until the holder is built or killed (it
    has started and no ``python3`` or ``hider`` is left but a ``built``), then until the usage
    is back under the ceiling and ``cmds`` is empty (SETTLE_S at least, WAIT_S at most).
    Returns the figures, printed."""
    d = _memcg(platform, sid)
    top = ceiling(_tcp(d, "limit_in_bytes"))
    uids = UIDS if user == "root" else 1
    _start(t, sid, INFLIGHT, [str(PAIRS), mode, str(uids)], user, f"inflight-{mode}")
    began, seen, after, over_after, comms = time.monotonic(), 0, 0.0, 0, list[str]()
    started = False  # a process of the attack seen in cmds (or 3 s gone: it may die unseen)
    while True:
        usage = left = _tcp(d, "usage_in_bytes")
        seen = max(seen, usage)
        now = time.monotonic()
        if after:
            over_after = max(over_after, usage)
            # Until the usage is back under the ceiling and nothing is left in cmds (the
            # watchdog may still be at work on a loaded machine: two ticks of kills before it
            # kills all), SETTLE_S at least; before the fix it stays over: WAIT_S, then fails.
            if now - after >= SETTLE_S and ((usage <= top and not _cmds_comms(d)) or now - after >= WAIT_S):
                break
        else:
            comms = _names(d)
            started = started or bool(comms) or now - began > 3
            if started and ("built" in comms or not {"python3", "hider"} & set(comms)):
                after = now
        assert after or now - began < WAIT_S, f"the holder never finished: {comms}"
        time.sleep(0.05)
    comms = _names(d)
    # Hidden: the kill-all's line is logged once its processes are gone (cmds is empty by now).
    while mode == "hidden" and not _lines(platform, sid, "socket_memory_kill_all"):
        if time.monotonic() - after >= WAIT_S:
            break
        time.sleep(0.2)
    # The kernel's own peak too: the watchdog's workers (session 20) may kill before a sample.
    seen = max(seen, _tcp(d, "max_usage_in_bytes"))
    got = {
        "ceiling": top,
        "max_seen": seen,
        "max_after": over_after,
        "left": left,  # at the end of the settle: the processes' sockets are freed after them
        "built": comms.count("built"),
        "decoys": comms.count("decoy"),
        "kills": len(_lines(platform, sid, "socket_memory_kill")),
        "no_victim": len(_lines(platform, sid, "socket_memory_no_victim")),
        "kill_all": len(_lines(platform, sid, "socket_memory_kill_all")),
    }
    print(
        f"{mode} as {user} ({uids} uid): ceiling {top / MiB:.0f} MiB; max seen {seen / MiB:.1f} "
        f"MiB, after the attack {over_after / MiB:.1f} MiB at most, {left / MiB:.1f} MiB left "
        f"({now - after:.1f} s after); alive: holder "
        f"{got['built']}, decoys {got['decoys']}; lines: kill {got['kills']}, no_victim "
        f"{got['no_victim']}, kill_all {got['kill_all']}"
    )
    return got


@pytest.fixture
def sandbox(alice: Tenant, request: pytest.FixtureRequest) -> Iterator[str]:
    sid = alice.create(memory_mb=256, runtime=request.param)
    yield sid
    alice.w("DELETE", f"/v1/sandboxes/{sid}")


@pytest.mark.parametrize(
    ("sandbox", "mode", "user"),
    [("runc", "decoys", "nobody"), ("crun", "hidden", "root"), ("runc", "hidden", "nobody")],
    indirect=["sandbox"],
)
def test_sockets_in_flight_are_freed_past_the_ceiling(
    platform: Platform, alice: Tenant, sandbox: str, mode: str, user: str
) -> None:
    got = _attack(platform, alice, sandbox, mode, user)
    assert got["max_seen"] > got["ceiling"], got  # the attack did pass it
    # It does not stay past it (before the fix: 47 MiB for good). On a loaded machine the
    # kills may come seconds after the holder is built (CI: 42 MiB 5 s after), hence "left".
    assert got["left"] <= got["ceiling"], got
    if mode == "hidden":  # no process shows a socket: only the kill of all of cmds frees them
        assert got["kill_all"] >= 1, got
    # (decoys: a machine loaded ~2x once slowed the forker enough for the per-descriptor kills
    # to reach the holder, kill_all 0; the outcome, checked above and below, is the same.)
    assert not _cmds_comms(_memcg(platform, sandbox)), "cmds keeps processes"
    assert alice.sh(sandbox, "echo alive").strip() == "alive"  # the sandbox and its guest live on
