"""The namespace maker: a small root process the agent starts once, which makes each network
slot's user namespace (and the netns inside it) by forking, without an exec.

Run as ``python -I -S ns_maker.py`` (slot_userns.Maker starts it): it imports nothing but the
standard library, so it starts in ~20 ms, holds nothing of the agent (no keys, no gRPC threads:
gRPC's fork handlers forbid forking the agent itself, docs/agent.md), and forks in well under a
millisecond. One request a line on stdin, one answer a line on stdout, in the requests' order:

    make <uid> <map> <netns path> <userns path>   ->  ok | err <why>
    user <uid> <map> <userns path>                ->  ok | err <why>
    probe <uid>                                   ->  ok | err <why>

``make``: a child takes ``uid`` as its real, effective and saved uid and gid (no groups) and
unshares a user and a network namespace together, so the user namespace is owned by ``uid`` and
the netns belongs to it. The maker (root) then writes the uid and gid maps (``<map>``: "inner
outer count", the slot's own range), bind-mounts the child's two namespace files on
the paths given, and lets the child exit. On any failure nothing of it is left mounted and the
answer says why; a child that does not report within ``CHILD_TIMEOUT`` is killed and reported.
``user``: the same with a user namespace alone (an id-mapped mount's map, idmap.py); its map
also keeps host root as itself.
``probe``: the same child, made and let go (whether this host lets an unprivileged uid do it).
Requests are pipelined: every request read is forked at once and its children unshare side by
side (creates arriving together do not queue behind each other's namespaces).

The maker ends when the agent does (stdin reaches end of file); its children die with it
(``PR_SET_PDEATHSIG``), and would in any case find their pipe closed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import time
from collections import deque

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
MS_BIND, MNT_DETACH, PR_SET_PDEATHSIG = 4096, 2, 1
CHILD_TIMEOUT = 10.0
_libc = ctypes.CDLL(None, use_errno=True)


class MakerError(Exception):
    pass


def _check(ret: int, what: str) -> None:
    if ret != 0:
        raise MakerError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _child(uid: int, flags: int, maker: int, ready_w: int, go_r: int) -> None:
    """In the forked child: become ``uid``, unshare, say so, wait to be let go. Never returns."""
    code, step = 0, "setgroups"
    # Nothing else of the maker's: the agent's pipes and the other children's, whose ends of
    # file must not wait for this child.
    low, high = sorted((ready_w, go_r))
    os.closerange(0, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, 1 << 20)
    try:
        step = "setgroups"
        os.setgroups([])
        step = "setresgid"
        os.setresgid(uid, uid, uid)
        step = "setresuid"
        os.setresuid(uid, uid, uid)
        # Armed after the uid change: the kernel clears the death signal when the effective
        # uid or gid changes (prctl(2)), so armed before it was never armed at all.
        step = "prctl"
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
        if os.getppid() != maker:  # the maker died before the death signal was armed
            os._exit(1)
        step = "unshare"
        _check(_libc.unshare(flags), f"unshare {flags:#x}")
        os.write(ready_w, b"R")
        os.read(go_r, 1)  # "go", or end of file when the maker is gone
    except BaseException as e:
        code = 1
        with contextlib.suppress(OSError):
            os.write(ready_w, f"E{step}: {e}".encode()[:400])
    os._exit(code)


class Job:
    """One request: its child (while it has one) and, once known, its answer."""

    __slots__ = ("answer", "deadline", "go_w", "pid", "ready_r", "targets")

    def __init__(self) -> None:
        self.answer: str | None = None
        self.pid = self.ready_r = self.go_w = -1
        # (map, netns path or "" for none, userns path)
        self.targets: tuple[str, str, str] | None = None
        self.deadline = time.monotonic() + CHILD_TIMEOUT


def _uid(word: str) -> int:
    """An owner uid: never root (the namespace would be root's), never (uid_t)-1 ("unchanged")."""
    uid = int(word)
    if not 0 < uid < 2**32 - 1:
        raise ValueError(f"uid {uid} out of range")
    return uid


def start(line: str) -> Job:
    """A job for one request line, its child forked (or its answer already known)."""
    job, words = Job(), line.split(" ")
    flags = CLONE_NEWUSER | CLONE_NEWNET
    try:
        if words[0] == "make" and len(words) == 7:
            job.targets = (" ".join(words[2:5]), words[5], words[6])
        elif words[0] == "user" and len(words) == 6:
            # Host root stays itself: layer dirs it owns (a layer image's root, 0700) remain
            # reachable for the overlay's mounter through the id-mapped mount.
            job.targets, flags = ("0 0 1\n" + " ".join(words[2:5]), "", words[5]), CLONE_NEWUSER
        elif not (words[0] == "probe" and len(words) == 2):
            raise ValueError(f"bad request {line[:80]!r}")
        uid = _uid(words[1])
        job.pid, job.ready_r, job.go_w = _fork(uid, flags)
    except (OSError, ValueError) as e:
        job.answer = f"err {e}"
    return job


def _fork(uid: int, flags: int) -> tuple[int, int, int]:
    """(pid, its ready pipe's read end, its go pipe's write end) of a child made for ``uid``."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    maker = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
        raise
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        _child(uid, flags, maker, ready_w, go_r)
    os.close(ready_w)
    os.close(go_r)
    return pid, ready_r, go_w


def finish(job: Job, unreaped: set[int]) -> None:
    """The child reported (or died): bind what it made, let it go, set the answer."""
    msg = os.read(job.ready_r, 512)
    try:
        if msg != b"R":
            raise MakerError(msg[1:].decode(errors="replace") if msg else "the child died")
        if job.targets is not None:
            _bind_pair(job.pid, *job.targets)
        job.answer = "ok"
    except (MakerError, OSError) as e:
        job.answer = f"err {e}"
    _let_go(job, unreaped, kill=job.answer != "ok")


def _let_go(job: Job, unreaped: set[int], *, kill: bool) -> None:
    if kill:
        with contextlib.suppress(ProcessLookupError):
            os.kill(job.pid, signal.SIGKILL)
    os.close(job.ready_r)
    os.close(job.go_w)  # end of file: the child exits
    unreaped.add(job.pid)


def _bind_pair(pid: int, id_map: str, netns: str, userns: str) -> None:
    """Write the child's maps and bind its two namespaces; on failure nothing stays bound."""
    proc, bound = f"/proc/{pid}", []
    try:
        for name in ("uid_map", "gid_map"):
            fd = os.open(f"{proc}/{name}", os.O_WRONLY)
            try:
                os.write(fd, f"{id_map}\n".encode())
            finally:
                os.close(fd)
        for kind, target in (("net", netns), ("user", userns)):
            if not target:
                continue
            _bind(f"{proc}/ns/{kind}", target)
            bound.append(target)
    except BaseException:
        for target in bound:
            _unbind(target)
        raise


def _bind(source: str, target: str) -> None:
    # O_EXCL: never stack a namespace on one that is still there.
    os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    if _libc.mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        os.unlink(target)
        raise MakerError(f"bind-mounting {source} on {target}: {os.strerror(err)}")


def _unbind(target: str) -> None:
    _libc.umount2(target.encode(), MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(target)


def _reap(unreaped: set[int]) -> None:
    for pid in list(unreaped):
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                continue
        unreaped.discard(pid)


def _answer(jobs: deque[Job], unreaped: set[int]) -> None:
    """Children past their deadline killed and reported; every answer known, in order, sent."""
    now = time.monotonic()
    for job in jobs:
        if job.answer is None and now > job.deadline:
            job.answer = f"err no answer from the child in {CHILD_TIMEOUT:.0f} s"
            _let_go(job, unreaped, kill=True)
    out = b""
    while jobs and jobs[0].answer is not None:
        out += (jobs.popleft().answer or "").replace("\n", " ").encode() + b"\n"
    while out:
        out = out[os.write(1, out) :]


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent's Ctrl-C is the agent's to handle
    jobs: deque[Job] = deque()
    unreaped: set[int] = set()
    buf = b""
    while True:
        waiting = {job.ready_r: job for job in jobs if job.answer is None}
        timeout = min((j.deadline for j in waiting.values()), default=None)
        if timeout is not None:
            timeout = max(0.0, timeout - time.monotonic())
        if unreaped:
            timeout = 0.05 if timeout is None else min(timeout, 0.05)
        readable = select.select([0, *waiting], [], [], timeout)[0]
        for fd in readable:
            if fd in waiting:
                finish(waiting[fd], unreaped)
        if 0 in readable:
            data = os.read(0, 65536)
            if not data:
                return  # the agent is gone; children waiting die with the maker
            buf += data
            *lines, buf = buf.split(b"\n")
            jobs.extend(start(raw.decode(errors="replace")) for raw in lines)
        _answer(jobs, unreaped)
        _reap(unreaped)


if __name__ == "__main__":
    main()
