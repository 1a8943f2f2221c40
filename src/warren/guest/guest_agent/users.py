"""Named users: resolved from the sandbox's own ``/etc/passwd`` and ``/etc/group``, and work done
as one of them in a forked child.

The guest runs inside the sandbox's mount namespace, so these are the sandbox's files (never the
host's), and the tenant controls every byte of them: reads are bounded, a file that is not a
regular file (a FIFO, a device, ``/dev/zero`` behind a symlink) is refused, malformed lines are
skipped as glibc does, and ids are range-checked. Imported only by requests that name a user:
the default (root) path never loads it.

The guest is one single-threaded process serving every connection, so it never changes its own
credentials: work as a user happens in a forked child that drops to the user's groups, gid and
uid (``setgroups``/``setresgid``/``setresuid``) and then execs a command, or runs one file
operation and sends back its JSON result and any file descriptors it opened (SCM_RIGHTS). The
kernel checks every path and open against the user's credentials, as for any of their processes.
"""

# ruff: noqa: SIM105

import _signal
import _socket
import _stat
import os
import select
import sys
import time

from .protocol import GuestFail, jdump, jload, os_fail

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .process import OomScore


PASSWD = "/etc/passwd"  # noqa: S105 (a path, not a password)


GROUP = "/etc/group"


# A real passwd or group file is a few KiB; past this the tenant is playing games.
MAX_DB_BYTES = 4 << 20


MAX_NAME = 32


MAX_ID = (1 << 32) - 2  # (uid_t) -1 means "unchanged" to the kernel


# Groups a user may be given (the kernel's NGROUPS_MAX).
MAX_GROUPS = 65536


# The most a file operation's child may send back: a listing page is ~1 MiB of JSON.
MAX_RESULT = 4 << 20


CHILD_TIMEOUT = 60.0  # a child as the user that neither answers nor exits is killed


# A child that has neither exec'd nor reported a failure in this long is killed. Once it took the
# user's ids, the user's own processes may stop it (`kill -STOP -1`) before its execve; without a
# bound the guest, PID 1, would wait on its report pipe for ever.
EXEC_TIMEOUT = 30.0


# A start refused memory kills to make room (room.py) and tries again, this many times at most:
# the guest waits meanwhile (room.VICTIM_WAIT a kill, at most).
ROOM_TRIES = 4


_NAME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")


_NAME_REST = _NAME_FIRST | frozenset("0123456789-.")


class User:
    __slots__ = ("gid", "groups", "home", "name", "shell", "uid")

    def __init__(self, name: str, uid: int, gid: int, home: str, shell: str, groups: "list[int]") -> None:
        self.name, self.uid, self.gid = name, uid, gid
        self.home, self.shell, self.groups = home, shell, groups

    @property
    def is_root(self) -> bool:
        return self.uid == 0 and self.gid == 0


def check_name(name: object) -> str:
    """A POSIX user name (what ``useradd`` accepts, plus a trailing ``$`` for machine accounts),
    or a numeric id."""
    if not isinstance(name, str):
        raise GuestFail("invalid_argument", "user must be a string")
    body = name[:-1] if name.endswith("$") else name
    numeric = name.isascii() and name.isdigit()
    if not numeric and (
        not body
        or len(name) > MAX_NAME
        or body[0] not in _NAME_FIRST
        or any(c not in _NAME_REST for c in body)
    ):
        raise GuestFail("invalid_argument", f"invalid user name: {name[:40]!r}")
    if numeric and _id(name.encode()) < 0:
        raise GuestFail("invalid_argument", f"invalid user id: {name[:40]!r}")
    return name


def read_db(path: str) -> "bytes | None":
    """The bytes of a passwd/group file (None when it does not exist), bounded."""
    try:
        # O_NONBLOCK: a FIFO planted at /etc/passwd must not hang the guest.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _unreadable(path, e) from e
    try:
        if not _stat.S_ISREG(os.fstat(fd).st_mode):
            raise GuestFail("invalid_argument", f"{path} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError as e:  # EIO from /proc/self/mem, EISDIR, ...
                raise _unreadable(path, e) from e
            if not data:
                break
            size += len(data)
            if size > MAX_DB_BYTES:
                raise GuestFail("invalid_argument", f"{path} is larger than {MAX_DB_BYTES} bytes")
            chunks.append(data)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _unreadable(path: str, e: OSError) -> "GuestFail":
    # The sandbox's own account database is broken: a bad request for a user, not a fault here.
    return GuestFail("invalid_argument", f"cannot read {path}: {e.strerror or e}")


def _id(field: bytes) -> int:
    """A numeric id field, or -1 when it is not one (the line is then skipped)."""
    if not field or len(field) > 10 or not field.isdigit():
        return -1
    n = int(field)
    return n if n <= MAX_ID else -1


def _passwd_entry(data: bytes, name: bytes, by_uid: bool) -> "tuple[str, int, int, str, str] | None":
    """(name, uid, gid, home, shell) of the first well-formed line for ``name`` (a numeric
    ``name`` with ``by_uid``: the first line with that uid)."""
    prefix = name + b":"
    uid_wanted = int(name) if by_uid else -1
    for line in data.split(b"\n"):
        if not by_uid and not line.startswith(prefix):
            continue
        f = line.split(b":")
        if len(f) != 7:
            continue
        uid, gid = _id(f[2]), _id(f[3])
        if uid < 0 or gid < 0 or (by_uid and uid != uid_wanted):
            continue
        home = f[5].decode("utf-8", "surrogateescape")
        if not home.startswith("/") or "\0" in home:
            home = "/"
        login = f[0].decode("utf-8", "surrogateescape")
        return login, uid, gid, os.path.normpath(home), f[6].decode("utf-8", "surrogateescape")
    return None


def _group_id(data: "bytes | None", group: str) -> int:
    """A group name's (or a numeric group's) gid, from /etc/group."""
    if group.isascii() and group.isdigit():
        return _id(group.encode())
    prefix = group.encode() + b":"
    for line in (data or b"").split(b"\n"):
        f = line.split(b":")
        if line.startswith(prefix) and len(f) == 4 and _id(f[2]) >= 0:
            return _id(f[2])
    raise GuestFail("invalid_argument", f"no such group: {group}")


def _member_groups(data: bytes, name: bytes, primary: int) -> "list[int]":
    """The primary gid and every group listing ``name`` as a member, in file order."""
    out = [primary]
    seen = {primary}
    for line in data.split(b"\n"):
        f = line.split(b":")
        if len(f) != 4 or name not in f[3].split(b","):
            continue
        gid = _id(f[2])
        if gid >= 0 and gid not in seen:
            seen.add(gid)
            out.append(gid)
            if len(out) >= MAX_GROUPS:
                break
    return out


def lookup(spec: str, passwd: str = PASSWD, group: str = GROUP) -> "User":
    """A user of this sandbox, as a template's USER names one: ``name``, a numeric uid, either
    with ``:group`` (a name or a gid). ``invalid_argument`` "no such user: x" when a name is
    unknown; a uid without an entry runs with gid 0 (the root group) and ``/`` as its home, as
    Docker does."""
    if not isinstance(spec, str) or len(spec) > 2 * MAX_NAME + 1:
        raise GuestFail("invalid_argument", "invalid user")
    name, sep, grp = spec.partition(":")
    check_name(name)
    if sep:
        check_name(grp)
    numeric = name.isdigit()
    pw = read_db(passwd)
    entry = _passwd_entry(pw, name.encode(), numeric) if pw is not None else None
    gr = read_db(group) if sep or entry is not None else None
    if entry is None:
        if name == "root":  # a sandbox without a passwd entry for root is still root's
            entry = ("root", 0, 0, "/root", "/bin/sh")
        elif numeric:
            entry = (name, int(name), 0, "/", "/bin/sh")
        else:
            raise GuestFail("invalid_argument", f"no such user: {name}")
    login, uid, gid, home, shell = entry
    if sep:  # an explicit group is the only one, as with `docker run --user u:g`
        gid = _group_id(gr, grp)
        return User(login, uid, gid, home, shell, [gid])
    groups = _member_groups(gr, login.encode(), gid) if gr is not None else [gid]
    return User(login, uid, gid, home, shell, groups)


def resolve(req: "dict[str, Any]") -> "User | None":
    """The request's ``user``: None (absent or empty) means the guest's own, root."""
    spec = req.get("user")
    if spec is None or spec == "":
        return None
    if not isinstance(spec, str):
        raise GuestFail("invalid_argument", "user must be a string")
    return lookup(spec)


def home_of(user: "User | None") -> str:
    return user.home if user is not None else "/root"


# ------------------------------------------------------------------------------ child setup


def drop_to(user: "User") -> None:
    """In a forked child: become ``user`` for good (every uid and gid, real to saved)."""
    try:
        os.setgroups(user.groups)
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
    except OSError as e:
        # EINVAL: an id the sandbox's user namespace does not map (only 0..65535 are).
        raise GuestFail(
            "invalid_argument",
            f"cannot become user {user.name} (uid {user.uid}, gid {user.gid}): {e.strerror}",
        ) from e


def _child_signals(sigdef: "set[int]") -> None:
    # The guest's wakeup pipe is shared across fork: a signal to the child must not look like
    # one to the guest. Signals the guest ignores would stay ignored across exec.
    try:
        _signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass
    for s in sigdef:
        _signal.signal(s, _signal.SIG_DFL)


def _fail_payload(e: BaseException) -> bytes:
    if isinstance(e, GuestFail):
        cause = e.__cause__
        err = cause.errno if isinstance(cause, OSError) and cause.errno else 0
        return jdump({"error": e.kind, "message": e.message, "errno": err})
    if isinstance(e, OSError):
        f = os_fail(e, "as user")
        return jdump({"error": f.kind, "message": f.message})
    return jdump({"error": "internal", "message": f"{type(e).__name__}: {e}"})


def spawn_as(
    user: "User | None",
    exe: str,
    argv: "list[str]",
    env: "dict[str, str]",
    cwd: str,
    fds: "tuple[int, int, int]",
    sigdef: "set[int]",
    oom: "OomScore",
) -> int:
    """fork + become ``user`` + exec, in its own process group; ``fds`` become 0, 1, 2 (a -1
    stdin is /dev/null). See :func:`fork_exec`."""

    def on_stdio() -> None:
        os.setpgid(0, 0)
        stdin, out, err = fds
        if stdin < 0:
            stdin = os.open("/dev/null", os.O_RDONLY)
        os.dup2(stdin, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)

    return fork_exec(user, exe, argv, env, cwd, sigdef, oom, on_stdio)


# Children forked here whose exec has not been seen yet. Until it, a child's resident set is the
# guest's own pages (copy-on-write): gVisor's memwatch passes them over, as killing one frees
# nothing and ends a command before it ran (a shell started while a killed hog's memory was
# still counted, its fork the largest process of the sandbox: CI, session 22).
starting: "set[int]" = set()


def fork_exec(
    user: "User | None",
    exe: str,
    argv: "list[str]",
    env: "dict[str, str]",
    cwd: str,
    sigdef: "set[int]",
    oom: "OomScore",
    setup: "Callable[[], None]",
) -> int:
    """fork; in the child, default signals, ``setup()`` (its session and fds 0-2), become
    ``user`` (None: stay root), chdir and exec. Returns the pid once the exec succeeded; a
    failure before it (a cwd the user cannot enter, a command they cannot run) raises here and
    the child is reaped. The child gives itself the children's score first (``oom``, the guest's
    ``OomScore``: the guest's own never moves). A start refused memory makes room and tries
    again (room.py)."""
    tries = 0
    while True:
        err_r, err_w = os.pipe()  # close-on-exec: EOF without a byte means the exec happened
        try:
            pid = os.fork()
        except BaseException:
            os.close(err_r)
            os.close(err_w)
            raise
        if pid == 0:  # the child: never returns
            try:
                oom.in_child()
                os.close(err_r)
                _child_signals(sigdef)
                setup()
                if user is not None:
                    drop_to(user)
                try:
                    os.chdir(cwd)
                except OSError as e:
                    raise os_fail(e, f"cwd {cwd}") from e
                try:
                    os.execve(exe, argv, env)  # noqa: S606 (no shell: the request's argv)
                except OSError as e:
                    raise os_fail(e, f"spawn {argv[0]}") from e
            except BaseException as e:
                try:
                    os.write(err_w, _fail_payload(e)[:4096])
                except BaseException:  # noqa: S110 (nowhere to report: the parent sees no reason)
                    pass
            finally:
                os._exit(127)
        starting.add(pid)
        os.close(err_w)
        try:
            report = await_exec(pid, err_r, EXEC_TIMEOUT)
        finally:
            starting.discard(pid)
            os.close(err_r)
        if not report:
            return pid
        _reap(pid)
        if tries < ROOM_TRIES and _refused_memory(report, argv, env):
            from .room import make_room  # loaded by the first start refused memory

            tries += 1
            if make_room(argv[0]):
                continue
        raise _guest_fail(report)


def _refused_memory(report: bytes, argv: "list[str]", env: "dict[str, str]") -> bool:
    try:
        err = jload(report).get("errno")
    except (GuestFail, AttributeError, UnicodeDecodeError):
        return False
    if not isinstance(err, int) or not err:
        return False
    from .room import for_memory

    return for_memory(err, argv, env)


def await_exec(pid: int, fd: int, timeout: float, cap: int = 4096) -> bytes:
    """What child ``pid`` reported on its close-on-exec pipe ``fd`` (empty: it exec'd), waiting
    at most ``timeout`` seconds; past that the child is killed and reaped, and the start fails
    with ``timeout``."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < cap:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            try:
                os.kill(pid, _signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap(pid)
            raise GuestFail("timeout", "the command as the user did not start in time")
        try:
            data = os.read(fd, cap - len(buf))
        except InterruptedError:
            continue
        if not data:
            break
        buf += data
    return bytes(buf)


def _reap(pid: int) -> None:
    # The guest's loop reaps with waitpid(-1) only when it runs again, after this returns: the
    # status is ours to collect here, synchronously.
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _guest_fail(payload: bytes) -> "GuestFail":
    try:
        obj = jload(payload)
        return GuestFail(str(obj["error"]), str(obj["message"]))
    except (GuestFail, KeyError, TypeError, UnicodeDecodeError):
        return GuestFail("internal", "the operation as the user failed without a reason")


def fork_with_pair(kind: int) -> "tuple[int, _socket.socket, _socket.socket]":
    """``fork()`` with a connected pair of Unix sockets of ``kind`` (close-on-exec) made first:
    the pid (0 in the child) and the parent's and the child's ends, both open on each side."""
    parent, child = _socket.socketpair(_socket.AF_UNIX, kind | _socket.SOCK_CLOEXEC)
    try:
        return os.fork(), parent, child
    except BaseException:
        parent.close()
        child.close()
        raise


def run_as(
    user: "User", fn: "Callable[[], tuple[dict[str, Any], list[int]]]", keep: "tuple[int, ...]" = ()
) -> "tuple[dict[str, Any], list[int]]":
    """Run ``fn`` in a forked child as ``user``: its JSON result and the fds it opened (received
    here as new fds of the guest). ``keep`` are guest fds the child needs; every other inherited
    fd is closed first, so nothing the guest holds as root is reachable from the child (not even
    through ``/proc/self/fd``). Blocks the guest for as long as ``fn`` takes, as the same
    operation as root would; a child that neither answers nor exits in CHILD_TIMEOUT is killed."""
    pid, parent, child = fork_with_pair(_socket.SOCK_STREAM)
    if pid == 0:
        _child_run(user, fn, child.fileno(), keep)
    child.close()
    try:
        return _collect(parent, pid)
    finally:
        parent.close()


def _child_run(user: "User", fn: "Callable[[], Any]", sock: int, keep: "tuple[int, ...]") -> None:
    try:
        from .process import enter_cmds

        enter_cmds()  # what it makes (inodes, a file's pages) is charged with the commands'
        _commands_score()
        _child_signals(set())
        _close_except(sorted({sock, *keep}))
        drop_to(user)
        result, fds = fn()
        payload = jdump(result)
        anc = []
        if fds:
            raw = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
            anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, raw)]
        _send_all(sock, b"R" + payload, anc)
    except BaseException as e:
        try:
            _send_all(sock, b"E" + _fail_payload(e), [])
        except BaseException:  # noqa: S110 (nowhere to report: the parent sees no reason)
            pass
    finally:
        os._exit(0)


def _commands_score() -> None:
    """A file operation's child is a copy of the guest (its size, its score 0) that never execs
    and may wait up to CHILD_TIMEOUT: it takes the commands' score (process.OomScore) first, so
    the sandbox's OOM killer never weighs the guest against its like (session 16)."""
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, b"1000")
    except OSError:
        pass
    finally:
        os.close(fd)


def _close_except(keep: "list[int]") -> None:
    low = 3
    for fd in keep:
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 1 << 20)


def _send_all(fd: int, data: bytes, anc: "list[tuple[int, int, bytes]]") -> None:
    s = _socket.socket(fileno=fd)
    try:
        s.setblocking(True)
        n = s.sendmsg([data], anc) if anc else s.send(data)
        if n < len(data):
            s.sendall(data[n:])
    finally:
        s.detach()


def _collect(sock: "_socket.socket", pid: int) -> "tuple[dict[str, Any], list[int]]":
    sock.settimeout(CHILD_TIMEOUT)
    buf = bytearray()
    fds: list[int] = []
    try:
        while True:
            # MSG_CMSG_CLOEXEC: the fds must not leak into commands the guest starts later.
            data, anc, _flags, _addr = sock.recvmsg(
                65536, _socket.CMSG_SPACE(4 * 4), _socket.MSG_CMSG_CLOEXEC
            )
            for level, kind, raw in anc:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    n = len(raw) // 4
                    fds += [int.from_bytes(raw[i * 4 : i * 4 + 4], sys.byteorder) for i in range(n)]
            if not data:
                break
            buf += data
            if len(buf) > MAX_RESULT:
                raise GuestFail("internal", "the operation as the user sent too much")
    except BaseException as e:
        _close_fds(fds)
        try:
            os.kill(pid, _signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap(pid)
        if isinstance(e, TimeoutError | _socket.timeout):
            raise GuestFail("timeout", "the operation as the user did not finish in time") from e
        raise
    _reap(pid)
    if buf[:1] == b"R":
        try:
            obj = jload(bytes(buf[1:]))
        except (GuestFail, UnicodeDecodeError) as e:
            _close_fds(fds)
            raise GuestFail("internal", "the operation as the user sent a malformed result") from e
        return obj, fds
    _close_fds(fds)
    raise _guest_fail(bytes(buf[1:]))


def _close_fds(fds: "list[int]") -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
