"""The namespace maker: a small root process the agent starts once, which makes each network
slot's user namespace (and the netns inside it) by forking, without an exec.

Run as ``python -I -S ns_maker.py`` (slot_userns.Maker starts it): it imports nothing but the
standard library, so it starts in ~20 ms, holds nothing of the agent (no keys, no gRPC threads:
gRPC's fork handlers forbid forking the agent itself, docs/agent.md), and forks in well under a
millisecond. One request a line on stdin, one answer a line on stdout:

    make <uid> <map> <netns path> <userns path>   ->  ok | err <why>
    probe <uid>                                   ->  ok | err <why>

``make``: a child takes ``uid`` as its real, effective and saved uid and gid (no groups) and
unshares a user and a network namespace together, so the user namespace is owned by ``uid`` and
the netns belongs to it. The maker (root) then writes the uid and gid maps (``<map>``: "inner
outer count", the sandboxes' one mapped range), bind-mounts the child's two namespace files on
the paths given, and lets the child exit. On any failure nothing of it is left mounted and the
answer says why; a child that does not report within ``CHILD_TIMEOUT`` is killed and reported.
``probe``: the same child, made and let go (whether this host lets an unprivileged uid do it).

The maker ends when the agent does (stdin reaches end of file); its children die with it
(``PR_SET_PDEATHSIG``), and would in any case find their pipe closed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
MS_BIND, MNT_DETACH, PR_SET_PDEATHSIG = 4096, 2, 1
CHILD_TIMEOUT = 10.0
_libc = ctypes.CDLL(None, use_errno=True)


class MakerError(Exception):
    pass


def _check(ret: int, what: str) -> None:
    if ret != 0:
        raise MakerError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _child(uid: int, ready_w: int, go_r: int) -> None:
    """In the forked child: become ``uid``, unshare, say so, wait to be let go. Never returns."""
    code, step = 0, "prctl"
    try:
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
        if os.getppid() == 1:  # the maker died before the death signal was armed
            os._exit(1)
        step = "setgroups"
        os.setgroups([])
        step = "setresgid"
        os.setresgid(uid, uid, uid)
        step = "setresuid"
        os.setresuid(uid, uid, uid)
        step = "unshare"
        _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "CLONE_NEWUSER|CLONE_NEWNET")
        os.write(ready_w, b"R")
        os.read(go_r, 1)  # "go", or end of file when the maker is gone
    except BaseException as e:
        code = 1
        with contextlib.suppress(OSError):
            os.write(ready_w, f"E{step}: {e}".encode()[:400])
    os._exit(code)


def _spawn(uid: int) -> tuple[int, int]:
    """Fork a child that made its namespaces; (its pid, the fd that lets it go). Raises
    MakerError with the child's own reason if it could not."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        _child(uid, ready_w, go_r)
    os.close(ready_w)
    os.close(go_r)
    try:
        if not select.select([ready_r], [], [], CHILD_TIMEOUT)[0]:
            raise MakerError(f"no answer from the child in {CHILD_TIMEOUT:.0f} s")
        msg = os.read(ready_r, 512)
        if msg != b"R":
            raise MakerError(msg[1:].decode(errors="replace") if msg else "the child died")
    except BaseException:
        os.close(go_w)
        _reap(pid, kill=True)
        raise
    finally:
        os.close(ready_r)
    return pid, go_w


def _reap(pid: int, *, kill: bool = False) -> None:
    if kill:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


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


def make(uid: int, id_map: str, netns: str, userns: str) -> int:
    """Make the pair and bind it; the child's pid (let go, to be reaped) on success."""
    pid, go_w = _spawn(uid)
    bound: list[str] = []
    try:
        proc = f"/proc/{pid}"
        for name in ("uid_map", "gid_map"):
            fd = os.open(f"{proc}/{name}", os.O_WRONLY)
            try:
                os.write(fd, f"{id_map}\n".encode())
            finally:
                os.close(fd)
        for kind, target in (("net", netns), ("user", userns)):
            _bind(f"{proc}/ns/{kind}", target)
            bound.append(target)
    except BaseException:
        for target in bound:
            _unbind(target)
        os.close(go_w)
        _reap(pid, kill=True)
        raise
    os.close(go_w)  # end of file: the child exits
    return pid


def _uid(word: str) -> int:
    """An owner uid: never root (the namespace would be root's), never (uid_t)-1 ("unchanged")."""
    uid = int(word)
    if not 0 < uid < 2**32 - 1:
        raise ValueError(f"uid {uid} out of range")
    return uid


def _handle(line: str) -> tuple[str, int | None]:
    """The answer to one request, and a child to reap once it is sent."""
    words = line.split(" ")
    try:
        if words[0] == "make" and len(words) == 7:
            return "ok", make(_uid(words[1]), " ".join(words[2:5]), words[5], words[6])
        if words[0] == "probe" and len(words) == 2:
            pid, go_w = _spawn(_uid(words[1]))
            os.close(go_w)
            return "ok", pid
        return f"err bad request {line[:80]!r}", None
    except (MakerError, OSError, ValueError) as e:
        return "err " + str(e).replace("\n", " "), None


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent's Ctrl-C is the agent's to handle
    for raw in sys.stdin.buffer:
        answer, child = _handle(raw.decode(errors="replace").rstrip("\n"))
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()
        if child is not None:
            os.waitpid(child, 0)  # after the answer: the child's exit is off the caller's path


if __name__ == "__main__":
    main()
