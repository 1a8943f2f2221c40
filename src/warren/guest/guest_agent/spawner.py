"""Commands as a user without forking the guest on the request's path.

Becoming a user needs a child of its own (``posix_spawn`` cannot change credentials), and
forking the guest, a ~10 MB Python process, costs far more than the spawn itself: its page
tables are copied, the child's Python work takes copy-on-write faults, and its exec tears the
copy down again (~2 ms of CPU per command against ~0.2 ms for root's ``posix_spawn``, measured
by ``bench/e2b_compat.py``'s notes in docs/e2b.md). So the guest, as PID 1, keeps one *spare*: a
child forked ahead of time, off any request's path, waiting on a socketpair with no other fd.
A command as a user is handed to it (argv, env, cwd, the user's ids and groups, and the stdio
fds by SCM_RIGHTS). The spare becomes the user for good (every uid and gid, as
``users.drop_to``), enters the cwd as the user, starts the command with ``posix_spawn`` (vfork:
nothing is copied) in its own process group, answers its pid and exits. The command, orphaned,
is re-parented to PID 1, the guest, which reaps it like its own children (a zombie is handed to
the new parent with a SIGCHLD, so no exit status is lost). A new spare is forked when a command
as a user finishes, between requests.

Only as PID 1 (re-parenting to the guest needs it to be the namespace's init); otherwise, and
whenever no spare is ready or it died unused, ``users.spawn_as`` forks as before. The spare is a
user process only between its credential drop and its exit: a user's own process can then stop
or kill it, which fails that user's command (never runs it twice); the guest waits at most
``SPAWN_TIMEOUT`` for it, where the fork path's child could be stopped for ever.
"""

# ruff: noqa: SIM105

import _signal
import _socket
import os
import sys

from .protocol import GuestFail, jdump, jload, os_fail
from .users import User, _child_signals, _close_except, _fail_payload, _guest_fail, drop_to

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .server import Guest


SPAWN_TIMEOUT = 10.0  # a spare that neither answers nor exits in this long is killed


MAX_REQUEST = 16 << 20  # argv and env together (the guest's frames are at most 8 MiB)


_spare: "tuple[int, _socket.socket] | None" = None  # (pid, the guest's end) of the one spare


_refill_pending = False


def spawn(
    guest: "Guest",
    user: "User",
    exe: str,
    argv: "list[str]",
    env: "dict[str, str]",
    cwd: str,
    fds: "tuple[int, int, int]",
) -> "int | None":
    """The pid of ``argv`` started as ``user`` by the spare (``fds``: stdin or -1, stdout,
    stderr), or None when there is no live spare (the caller forks instead). Raises GuestFail
    when the command could not be started (or its spare was stopped or killed while starting
    it: the command may then run, unsupervised, as the user)."""
    global _spare
    if _spare is None or not guest.is_init:
        return None
    pid, sock = _spare
    _spare = None
    try:
        return _hand_over(guest, pid, sock, user, exe, argv, env, cwd, fds)
    finally:
        sock.close()


def _hand_over(
    guest: "Guest",
    pid: int,
    sock: "_socket.socket",
    user: "User",
    exe: str,
    argv: "list[str]",
    env: "dict[str, str]",
    cwd: str,
    fds: "tuple[int, int, int]",
) -> "int | None":
    stdin, out, err = fds
    req = {
        "exe": exe, "argv": argv, "env": env, "cwd": cwd, "name": user.name, "uid": user.uid,
        "gid": user.gid, "groups": user.groups, "stdin": stdin >= 0, "sigdef": sorted(guest.sigdef),
    }  # fmt: skip
    payload = jdump(req)
    pass_fds = [out, err, *([stdin] if stdin >= 0 else [])]
    raw = b"".join(fd.to_bytes(4, sys.byteorder) for fd in pass_fds)
    sock.settimeout(SPAWN_TIMEOUT)
    try:
        data = len(payload).to_bytes(4, "big") + payload
        n = sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, raw)])
        if n < len(data):
            sock.sendall(data[n:])
    except OSError:
        # The spare died unused (the OOM killer prefers it): nothing was started.
        _kill(pid)
        return None
    try:
        reply = _read_reply(sock)
    except OSError as e:
        _kill(pid)
        raise GuestFail("internal", f"starting the command as user {user.name} was interrupted") from e
    if reply[:1] == b"P" and reply[1:].isdigit():
        return int(reply[1:])
    if reply[:1] == b"E":
        raise _guest_fail(reply[1:])
    _kill(pid)
    raise GuestFail("internal", f"starting the command as user {user.name} was interrupted")


def _read_reply(sock: "_socket.socket") -> bytes:
    buf = bytearray()
    while len(buf) < 4096:
        data = sock.recv(4096 - len(buf))
        if not data:
            break
        buf += data
    return bytes(buf)


def _kill(pid: int) -> None:
    # Reaped by the guest's loop (waitpid(-1)) like any orphan.
    try:
        os.kill(pid, _signal.SIGKILL)
    except ProcessLookupError:
        pass


def refill_soon(guest: "Guest") -> None:
    """Fork a new spare once the loop is through with the current events (a command as a user
    just finished, or found no spare), unless one is ready or the guest is stopping."""
    global _refill_pending
    if _spare is not None or _refill_pending or not guest.is_init or guest.stopping:
        return
    _refill_pending = True
    guest.loop.call_later(0.0, lambda: _refill(guest))


def _refill(guest: "Guest") -> None:
    global _spare, _refill_pending
    _refill_pending = False
    if _spare is not None or guest.stopping:
        return
    parent, child = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    guest.oom.for_child()  # the spare, and so the command, start at the children's score
    try:
        pid = os.fork()
    except OSError:
        guest.oom.restore()
        parent.close()
        child.close()
        return
    if pid == 0:
        _spare_main(child.fileno())
    guest.oom.restore()
    child.close()
    _spare = (pid, parent)


# ------------------------------------------------------------------------------ the spare


def _spare_main(sock: int) -> None:
    """The spare's whole life: wait for one command, start it as its user, answer, exit."""
    try:
        _child_signals(set())
        _close_except([sock])
        got = _recv_request(sock)
        if got is None:
            os._exit(0)  # the guest went away (or dropped us): nothing to do
        req, fds = got
        pid = _start(req, fds)
        _answer(sock, b"P%d" % pid)
    except BaseException as e:
        try:
            _answer(sock, b"E" + _fail_payload(e))
        except BaseException:  # noqa: S110 (nowhere to report: the guest sees no answer)
            pass
    finally:
        os._exit(0)


def _recv_request(sock: int) -> "tuple[dict[str, Any], list[int]] | None":
    s = _socket.socket(fileno=sock)
    try:
        buf = bytearray()
        fds: list[int] = []
        need = 4
        while len(buf) < need:
            data, anc, _flags, _addr = s.recvmsg(1 << 20, _socket.CMSG_SPACE(3 * 4), _socket.MSG_CMSG_CLOEXEC)
            for level, kind, raw in anc:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    fds += [int.from_bytes(raw[i : i + 4], sys.byteorder) for i in range(0, len(raw) - 3, 4)]
            if not data:
                return None
            buf += data
            if need == 4 and len(buf) >= 4:
                need = 4 + int.from_bytes(buf[:4], "big")
                if need > MAX_REQUEST:
                    raise GuestFail("invalid_argument", "command too large")
        return jload(bytes(buf[4:need])), fds
    finally:
        s.detach()


def _start(req: "dict[str, Any]", fds: "list[int]") -> int:
    if len(fds) != (3 if req["stdin"] else 2):
        raise GuestFail("internal", "the spare got the wrong descriptors")
    drop_to(User(req["name"], req["uid"], req["gid"], "/", "", req["groups"]))
    cwd = req["cwd"]
    try:
        os.chdir(cwd)
    except OSError as e:
        raise os_fail(e, f"cwd {cwd}") from e
    actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_DUP2, fds[0], 1), (os.POSIX_SPAWN_DUP2, fds[1], 2)]
    if req["stdin"]:
        actions.insert(0, (os.POSIX_SPAWN_DUP2, fds[2], 0))
    else:
        actions.insert(0, (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0))
    argv = req["argv"]
    try:
        return os.posix_spawn(
            req["exe"], argv, req["env"], file_actions=actions, setpgroup=0, setsigdef=req["sigdef"]
        )
    except ValueError as e:
        raise GuestFail("invalid_argument", str(e)) from e
    except OSError as e:
        raise os_fail(e, f"spawn {argv[0]}") from e


def _answer(sock: int, data: bytes) -> None:
    s = _socket.socket(fileno=sock)
    try:
        s.setblocking(True)
        s.sendall(data[:4096])
    finally:
        s.detach()
