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
"""

# ruff: noqa: SIM105

import _signal
import _socket
import errno
import os
import select
import sys

from .protocol import GuestFail, os_fail

TIMEOUT = 10.0
_REQ = 16  # two 8-byte integers: offset, length

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
    global _child
    if _child is None:
        _child = _start()
    sock = _child[1]
    try:
        msg = start.to_bytes(8, "little") + (end - start).to_bytes(8, "little")
        anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))]
        sock.sendmsg([msg], anc)
        if not select.select([sock], [], [], TIMEOUT)[0]:
            raise TimeoutError
        reply = sock.recv(8)
        if len(reply) != 8:
            raise ConnectionError("the allocator ended")
    except (OSError, TimeoutError):
        _stop()
        return None
    return reply


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
        data, anc, _flags, _addr = sock.recvmsg(_REQ, _socket.CMSG_SPACE(4), _socket.MSG_CMSG_CLOEXEC)
        if not data:
            return  # the guest closed its end
        fds = [
            int.from_bytes(raw[:4], sys.byteorder)
            for level, kind, raw in anc
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS
        ]
        err = 22  # EINVAL: a malformed request
        if len(data) == _REQ and len(fds) == 1:
            try:
                os.posix_fallocate(
                    fds[0], int.from_bytes(data[:8], "little"), int.from_bytes(data[8:], "little")
                )
                err = 0
            except OSError as e:
                err = e.errno or 5
        for fd in fds:
            os.close(fd)
        sock.send(err.to_bytes(8, "little"))
