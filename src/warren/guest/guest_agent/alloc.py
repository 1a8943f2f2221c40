"""The allocator: one child of the guest, in the commands' cgroup, that allocates upload files'
pages so that they are charged there and not to the guest.

The guest writes an upload's bytes itself; the pages a write allocates are charged to the
writer's memory cgroup, and the guest's is the sandbox's own, above ``cmds`` (agent/runtime/
cmds_cgroup.py): a 70 MiB upload into a 128 MiB sandbox had the sandbox's own OOM killer weigh the
guest against the tenant's processes again, and take it (session 17). So before the guest
writes past what is allocated, this child ``fallocate``s the range (files.WriteOp): the guest then
writes into pages that are already there, charged to ``cmds``.

A child forked for each allocation (users.run_as) cost a small upload ~1-3 ms (1.4 ms before); this
one lives on and answers over a socket pair (the descriptor passed with each request). It runs
as root with nothing open but its socket, at the commands' OOM score; the tenant's root can stop
or kill it: a request not answered in :data:`TIMEOUT` kills it, and another is asked.

An allocator that does not answer twice running (started again in between) fails the allocation
``no_space``, and the upload with it: the guest never writes such pages itself. When the
commands' room is full of what no OOM kill frees (``nobody``'s SysV message queues: kernel
memory that the disk's size does not bound), the allocator's ``fallocate`` has the commands' OOM
killer take the allocator; the guest then wrote a 40 MiB upload itself, charged to its own
cgroup, and the sandbox's OOM killer, with no command left, took the guest (session 17, W2-D,
test_attack_session17_alloc_fallback). ``ENOMEM`` (the charge refused) is ``no_space`` too.

The same child makes root's file metadata (:func:`call`: rootops.ROOT_OPS, a fixed table: mkdir,
an upload's temp file and its rename, move, remove): the inodes and dentries they allocate are
charged to ``cmds`` too. Done by the guest, a mkdir flood through the API took it to 32-38 MiB
(reserve 24; session 17, W2-D). The child is a fork of the guest (its mount namespace, root,
cwd and umask), running the very functions the guest ran, so paths resolve exactly as before.
A child that ended is started again for a request it never got; one that got it and gave no
answer fails the operation ``no_space`` (:class:`Ended`): the guest never does it itself.
"""

# ruff: noqa: SIM105

import _signal
import _socket
import errno
import os
import select
import sys

from .protocol import GuestFail, jdump, jload, os_fail

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

TIMEOUT = 10.0
OP_TIMEOUT = 60.0  # a file operation (a tree's removal) as long as users.CHILD_TIMEOUT allows
_ALLOC = b"A"  # + two 8-byte integers: offset, length; the file's fd attached
_OP = b"F"  # + JSON {"fn", "args"}; fds attached; taken (_TAKEN), then b"R" + JSON or b"E" + a failure
# Sent by the child as it reads an operation: a child killed before it read one (the tenant's
# root kills it just before an upload) is then told from one that died doing it.
_TAKEN = b"K"
_REQ = 17
_MAX_MSG = 64 << 10  # requests and answers are small (paths, a few fields): no mmap per call
_MAX_FDS = 4

_child: "tuple[int, _socket.socket] | None" = None


class Ended(GuestFail):
    """No allocator answered (``no_space``): asking again with less would not help."""


def allocate(fd: int, start: int, end: int) -> None:
    """``fd``'s bytes ``start``..``end`` allocated in the commands' cgroup (GuestFail
    ``no_space`` when they do not fit or no allocator answers; another failure of
    ``fallocate`` raises GuestFail too)."""
    reply = _ask(fd, start, end) or _ask(fd, start, end)  # a second, new allocator
    if reply is None:
        raise Ended("no_space", "no room left to allocate the file in (the allocator ended)")
    err = int.from_bytes(reply, "little")
    if err == errno.ENOMEM:
        raise GuestFail("no_space", "allocate: the commands' memory is full")
    if err:
        raise os_fail(OSError(err, os.strerror(err)), "allocate")


def _ask(fd: int, start: int, end: int) -> "bytes | None":
    """The allocator's 8-byte answer, or None (it is stopped and killed) when it gives none."""
    msg = _ALLOC + start.to_bytes(8, "little") + (end - start).to_bytes(8, "little")
    try:
        sock = _send(msg, (fd,))
        if not select.select([sock], [], [], TIMEOUT)[0]:
            raise TimeoutError
        reply = sock.recv(8)
        if len(reply) != 8:
            raise ConnectionError("the allocator ended")
    except (OSError, TimeoutError):
        _stop()
        return None
    return reply


def call(fn: str, args: "dict[str, Any]", fds: "tuple[int, ...]" = ()) -> "tuple[dict[str, Any], list[int]]":
    """``rootops.ROOT_OPS[fn](args, fds)`` in the child, in ``cmds``: its JSON result and the fds
    it returned (new fds of the guest, close-on-exec); its GuestFail raised here. A child that
    never took the request (gone, or stopped: it is still unread after :data:`TIMEOUT`) is
    replaced once and asked again; one that took it and gave no answer in :data:`OP_TIMEOUT` is
    :class:`Ended`: the operation may be half done, and is not done again."""
    msg = _OP + jdump({"fn": fn, "args": args})
    for _attempt in (0, 1):
        try:
            sock = _send(msg, fds)
        except OSError:
            _stop()  # it ended before the request reached it: nothing was done
            continue
        if not _taken(sock):
            _stop()
            continue
        data = b""
        anc: list[tuple[int, int, bytes]] = []
        if select.select([sock], [], [], OP_TIMEOUT)[0]:  # the answer, or EOF
            try:
                data, anc, _flags, _addr = sock.recvmsg(
                    _MAX_MSG, _socket.CMSG_SPACE(4 * _MAX_FDS), _socket.MSG_CMSG_CLOEXEC
                )
            except OSError:
                pass
        got = _fds(anc)
        if data[:1] == b"R":
            return jload(data[1:]), got
        for f in got:
            os.close(f)
        if data[:1] == b"E":
            from .users import _guest_fail

            raise _guest_fail(data[1:])
        _stop()  # it took the request and gave no answer (killed, stopped mid-way)
        break
    raise Ended("no_space", f"{fn}: no room left in the commands' memory (the guest's helper ended)")


def _taken(sock: "_socket.socket") -> bool:
    """Whether the child read the request: it says so at once. No word in :data:`TIMEOUT` (it is
    stopped), or its end closed first (it was killed before it read it): never taken."""
    if not select.select([sock], [], [], TIMEOUT)[0]:
        return False
    try:
        return sock.recv(1) == _TAKEN
    except OSError:
        return False


def _send(msg: bytes, fds: "tuple[int, ...]") -> "_socket.socket":
    """``msg`` (with ``fds``) to the child, started first if there is none."""
    global _child
    if _child is None:
        _child = _start()
    sock = _child[1]
    anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _raw(fds))] if fds else []
    sock.sendmsg([msg], anc)
    return sock


def _raw(fds: "tuple[int, ...] | list[int]") -> bytes:
    return b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)


def _fds(anc: "list[tuple[int, int, bytes]]") -> "list[int]":
    return [
        int.from_bytes(raw[i : i + 4], sys.byteorder)
        for level, kind, raw in anc
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS
        for i in range(0, len(raw) - 3, 4)
    ]


def _stop() -> None:
    global _child
    if _child is None:
        return
    pid, sock = _child
    _child = None
    sock.close()
    try:
        os.kill(pid, _signal.SIGKILL)
    except ProcessLookupError:
        pass
    # Reaped by the guest's loop (waitpid(-1)): an unknown pid is an orphan to it.


def _start() -> "tuple[int, _socket.socket]":
    from .users import fork_with_pair

    pid, parent, child = fork_with_pair(_socket.SOCK_SEQPACKET)
    if pid == 0:
        try:
            _serve(child)
        finally:
            os._exit(0)
    child.close()
    return pid, parent


def _serve(sock: "_socket.socket") -> None:
    from .process import enter_cmds
    from .users import _child_signals, _close_except, _commands_score

    enter_cmds()
    _commands_score()
    # The guest's handlers are Python functions of the guest: never run them here.
    _child_signals({_signal.SIGTERM, _signal.SIGINT, _signal.SIGCHLD, _signal.SIGHUP})
    _close_except([sock.fileno()])
    while True:
        data, anc, _flags, _addr = sock.recvmsg(
            _MAX_MSG, _socket.CMSG_SPACE(4 * _MAX_FDS), _socket.MSG_CMSG_CLOEXEC
        )
        if not data:
            return  # the guest closed its end
        fds = _fds(anc)
        try:
            if data[:1] == _OP:
                sock.send(_TAKEN)
                _serve_op(sock, data[1:], fds)
            else:
                sock.send(_allocate(data, fds).to_bytes(8, "little"))
        finally:
            for fd in fds:
                os.close(fd)


def _allocate(data: bytes, fds: "list[int]") -> int:
    if len(data) != _REQ or data[:1] != _ALLOC or len(fds) != 1:
        return errno.EINVAL  # a malformed request
    try:
        os.posix_fallocate(fds[0], int.from_bytes(data[1:9], "little"), int.from_bytes(data[9:], "little"))
    except OSError as e:
        return e.errno or errno.EIO
    return 0


def _serve_op(sock: "_socket.socket", data: bytes, fds: "list[int]") -> None:
    """One file operation of rootops.ROOT_OPS, answered R (+ fds) or E (a failure's payload)."""
    from .rootops import ROOT_OPS
    from .users import _fail_payload

    out: list[int] = []
    try:
        req = jload(data)
        fn = ROOT_OPS[req["fn"]]
        result, out = fn(req["args"], fds)
        reply = b"R" + jdump(result)
    except BaseException as e:
        reply = b"E" + _fail_payload(e)
    try:
        sock.sendmsg([reply], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _raw(out))] if out else [])
    finally:
        for fd in out:
            os.close(fd)
