"""Pseudo-terminals: a command (by default the user's login shell) on a PTY, streamed to any
number of connections, outliving them, reaped with its exit code.

Loaded on the first ``pty_*`` request only. The child gets the PTY's slave side as its
controlling terminal (``login_tty``: ``setsid``, ``TIOCSCTTY``, fds 0-2) and becomes the
requested user the way ``exec`` does (``users.drop_to``). The master stays here, non-blocking in
the guest's epoll loop.

Bounds: at most :data:`MAX_PTYS` running terminals per sandbox; the last :data:`RING_BYTES` of
output are kept and replayed to a ``pty_connect``; input queued for a child that does not read is
capped (the sender is paused); a connection that cannot take output pauses reading the master
(the child blocks on write, like under any slow terminal) for at most :data:`STALL_LIMIT`
seconds, after which that connection is detached and reading resumes. Output with no connection
at all only goes to the ring (the oldest bytes are dropped), so the child never blocks for lack
of a reader.
"""

# ruff: noqa: SIM105

import fcntl
import os
import struct
import termios
import time
from _collections import deque

from .conn import LOW_WATER, Op
from .lag import cut, cut_if_behind
from .loop import EPOLLERRHUP, EPOLLIN, EPOLLOUT, Loop
from .process import DEFAULT_ENV, SIGKILL, _identity, _working_dir, parse_signal, which
from .protocol import K_DATA, K_END, K_SIGNAL, K_STDOUT, READ_CHUNK, GuestFail, jload, os_fail
from .stream import InputOp, Streamed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from .conn import Conn
    from .server import Guest
    from .users import User


K_RESIZE = 10  # client -> guest inside a PTY session: JSON {"cols", "rows"}


MAX_PTYS = 32  # running terminals per sandbox


# Connections to one terminal at a time (its start's and `pty_connect`s): each may hold up to
# HIGH_WATER of the guest's own memory before the terminal pauses for it (session 17, W2-D).
MAX_CLIENTS = 16
# ... and to all terminals together (one each for MAX_PTYS): each also holds ~120-210 KiB of
# socket buffers charged to the guest; 32 terminals of 16 unread clients held 64 MiB with the
# bound above alone, 32 unread clients 22-30 MiB, 18-22 MiB with server.SNDBUF (session 18).
MAX_CLIENTS_ALL = 32


KEEP_EXITED = 16  # exited terminals kept so a late `pty_connect` still sees the tail and exit


RING_BYTES = 64 << 10  # scrollback replayed to a `pty_connect`


MAX_DIM = 1000  # columns and rows are 1..MAX_DIM


STALL_LIMIT = 10.0  # seconds a congested connection may hold the terminal's output back


EXIT_GRACE = 0.1  # after the child exits, wait this long for the rest of its output


DEFAULT_TERM = "xterm-256color"


def _dim(v: object, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_DIM:
        raise GuestFail("invalid_argument", f"{what} must be an integer in 1..{MAX_DIM}")
    return v


def parse_size(obj: object) -> "tuple[int, int]":
    if not isinstance(obj, dict):
        raise GuestFail("invalid_argument", "a size is a JSON object {cols, rows}")
    return _dim(obj.get("cols"), "cols"), _dim(obj.get("rows"), "rows")


def _login_shell(user: "User | None") -> "tuple[str, list[str]]":
    """The user's shell from the sandbox's /etc/passwd, else /bin/bash, else /bin/sh, as a login
    shell (argv[0] "-name", as login(1) and sshd start it)."""
    shell = ""
    try:
        from .users import lookup

        shell = (user or lookup("root")).shell
    except GuestFail:
        pass
    for cand in (shell, "/bin/bash", "/bin/sh"):
        if cand.startswith("/") and os.access(cand, os.X_OK):
            return cand, ["-" + os.path.basename(cand)]
    raise GuestFail("not_found", "no shell found (/bin/bash, /bin/sh)")


def _command(req: "dict[str, Any]", user: "User | None", path: str) -> "tuple[str, list[str]]":
    """(executable, argv) of the request: its cmd and args, else the login shell."""
    cmd = req.get("cmd") or ""
    args = req.get("args") or []
    if not isinstance(cmd, str) or not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise GuestFail("invalid_argument", "cmd must be a string and args a list of strings")
    if not cmd:
        if args:
            raise GuestFail("invalid_argument", "args need a cmd")
        return _login_shell(user)
    return which(cmd, path), [cmd, *args]


class Pty(Streamed):
    pid: int
    exit_code: "int | None"

    def __init__(self, guest: "Guest", req: "dict[str, Any]") -> None:
        self.g = guest
        cols, rows = parse_size(req)
        if sum(1 for p in guest.ptys.values() if p.running) >= MAX_PTYS:
            raise GuestFail("too_large", f"at most {MAX_PTYS} terminals may run in a sandbox")
        _check_clients(guest)
        user = None
        if req.get("user"):
            from .users import resolve

            user = resolve(req)
        env_req = req.get("env")
        env_req = {} if env_req is None else env_req
        if not isinstance(env_req, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env_req.items()
        ):
            raise GuestFail("invalid_argument", "env must map strings to strings")
        env = {**DEFAULT_ENV, "TERM": DEFAULT_TERM, **guest.base_env, **_identity(user), **env_req}
        if not env.get("TERM"):
            env["TERM"] = DEFAULT_TERM
        timeout = req.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0
        ):
            raise GuestFail("invalid_argument", "timeout must be a non-negative number")
        exe, argv = _command(req, user, env.get("PATH", DEFAULT_ENV["PATH"]))
        cwd = _working_dir(req.get("cwd") or None, env)
        self.subs: list[Conn] = []
        self.ring: deque[bytes] = deque()
        self.ring_size = 0
        self.exit_code = None
        self.finished = False
        self.paused = False
        self.stall: list[Any] | None = None
        self.grace: list[Any] | None = None
        self.inbuf = bytearray()
        self.in_waiters: list[Conn] = []
        self.master = self._spawn(exe, argv, env, cwd, user, (cols, rows))
        self.started = time.time()
        # A lifetime (E2B's terminals have one): the whole session is killed when it runs out.
        self.timer = guest.loop.call_later(float(timeout), self._on_timeout) if timeout else None
        os.set_blocking(self.master, False)
        guest.loop.watch(self.master, EPOLLIN, self.on_master)
        guest.ptys[self.pid] = self

    # ------------------------------------------------------------------------------ spawn

    def _spawn(
        self, exe: str, argv: "list[str]", env: "dict[str, str]", cwd: str, user: "User | None",
        size: "tuple[int, int]",
    ) -> int:  # fmt: skip
        try:
            master, slave = os.openpty()
        except OSError as e:
            raise os_fail(e, "openpty") from e
        try:
            os.set_inheritable(slave, False)
            _set_size(master, *size)
            if user is not None:
                os.fchown(slave, user.uid, user.gid)  # the user's own terminal, as login does

            def on_slave() -> None:  # in the child: the slave is its controlling terminal
                os.close(master)
                os.set_inheritable(slave, True)
                os.login_tty(slave)  # setsid, TIOCSCTTY, dup to 0/1/2

            from .users import fork_exec

            self.pid = fork_exec(user, exe, argv, env, cwd, self.g.sigdef, self.g.oom, on_slave)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        return master

    # ----------------------------------------------------------------------------- output

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def on_master(self, ev: int) -> None:
        if ev & EPOLLOUT:
            self._flush_input()
        if self.master < 0:
            return
        if ev & (EPOLLIN | EPOLLERRHUP) and not self.paused:
            self._read_master()

    def _read_master(self) -> bool:
        """One read; False when there was nothing to read now."""
        try:
            data = os.read(self.master, READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError:  # EIO: every slave fd is closed (the session ended)
            data = b""
        if not data:
            self._close_master()
            self.maybe_finish()
            return False
        self.publish(data)
        return True

    def _drain_now(self) -> None:
        """What the master holds now, up to EOF (bounded by what it holds: nothing new is
        written once the session has ended)."""
        while self.master >= 0 and not self.paused and self._read_master():
            pass

    def publish(self, data: bytes) -> None:
        self.ring.append(data)
        self.ring_size += len(data)
        # Trimmed to exactly RING_BYTES (the oldest chunk is cut, not only dropped whole), so a
        # `pty_connect` replays the same amount of scrollback whatever the read sizes were.
        while self.ring_size > RING_BYTES:
            excess = self.ring_size - RING_BYTES
            head = self.ring[0]
            if len(head) <= excess:
                self.ring.popleft()
                self.ring_size -= len(head)
            else:
                self.ring[0] = head[excess:]
                self.ring_size -= excess
        for c in list(self.subs):
            c.send(K_STDOUT, data)
            cut_if_behind(self, c)  # within what all lagging clients may hold together (lag.py)
        congested = [c for c in self.subs if c.congested() and not c.closed]
        if congested and not self.paused:
            self._set_paused(True)
            for c in congested:
                c.on_drain = self._on_drain
            self.stall = self.g.loop.call_later(STALL_LIMIT, self._on_stall)

    def _on_drain(self) -> None:
        if not any(c.congested() for c in self.subs):
            self._set_paused(False)

    def _on_stall(self) -> None:
        """A connection held the output back too long: it is cut off (closed, what it had not
        read dropped rather than kept for it), the child goes on."""
        self.stall = None
        for c in [c for c in self.subs if c.congested()]:
            cut(self, c)
        self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        if self.paused == paused:
            return
        self.paused = paused
        if not paused:
            Loop.cancel(self.stall)
            self.stall = None
            for c in self.subs:
                c.on_drain = None
        self._update_mask()

    def _update_mask(self) -> None:
        if self.master < 0:
            return
        mask = (0 if self.paused else EPOLLIN) | (EPOLLOUT if self.inbuf else 0)
        self.g.loop.set_mask(self.master, mask)

    def _close_master(self) -> None:
        if self.master >= 0:
            self.g.loop.unwatch(self.master)
            os.close(self.master)
            self.master = -1
        self.inbuf.clear()
        self._wake_input()

    # ------------------------------------------------------------------------------ input

    def feed(self, data: bytes, conn: "Conn") -> None:
        if self.master < 0:
            return  # late keystrokes for a terminal that is gone: nothing to do
        self._take_input(data, conn)

    def _flush_input(self) -> None:
        if self.master < 0:
            return
        self._write_input(self.master)
        self._update_mask()
        if len(self.inbuf) < LOW_WATER:
            self._wake_input()

    def resize(self, cols: int, rows: int) -> None:
        if self.master >= 0:
            _set_size(self.master, cols, rows)  # the kernel sends SIGWINCH to the foreground

    def signal(self, sig: int) -> None:
        """To the terminal's foreground process group (what Ctrl-C would reach), else the
        session leader's group."""
        pgrp = -1
        if self.master >= 0:
            try:
                pgrp = os.tcgetpgrp(self.master)
            except OSError:
                pgrp = -1
        # SIGKILL means "end this terminal": the session leader's group too, not only a job.
        targets = (pgrp, self.pid) if sig != SIGKILL or pgrp == self.pid else (self.pid, pgrp)
        for target in targets:
            if target > 0:
                try:
                    os.killpg(target, sig)
                    if sig != SIGKILL:
                        return
                except (ProcessLookupError, PermissionError):
                    continue

    # -------------------------------------------------------------------------- lifecycle

    def killpg(self, sig: int) -> None:
        """To the session leader's group (the guest's shutdown), whatever the foreground is."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def _on_timeout(self) -> None:
        self.timer = None
        if self.running:
            self.signal(SIGKILL)

    def on_exit(self, status: int) -> None:
        self.exit_code = os.waitstatus_to_exitcode(status)
        Loop.cancel(self.timer)
        self.timer = None
        # The leader's fds were closed before its exit was reported, so the master reads its
        # last output and EOF now (and the exit goes out even if the guest is stopping) ...
        self._drain_now()
        self.maybe_finish()
        if not self.finished:
            # ... unless the session's other processes (`sleep &` in the shell) keep the slave
            # open: give the output a moment, then report the exit anyway.
            self.grace = self.g.loop.call_later(EXIT_GRACE, self._on_grace)

    def _on_grace(self) -> None:
        self.grace = None
        if self.finished:
            return
        self._drain_now()
        if self.paused:
            self.grace = self.g.loop.call_later(EXIT_GRACE, self._on_grace)
            return
        self._close_master()  # hangs up what is left of the session (SIGHUP), as a terminal does
        self.maybe_finish()

    def maybe_finish(self) -> None:
        if self.finished or self.exit_code is None or self.master >= 0:
            return
        self.finished = True
        Loop.cancel(self.grace)
        self._set_paused(False)
        self._end_subscribers()
        _retire(self.g)

    def replay(self) -> "Iterable[tuple[int, bytes]]":
        return ((K_STDOUT, data) for data in self.ring)

    def subscribe(self, c: "Conn", replay: bool) -> None:
        if not self.finished and len(self.subs) >= MAX_CLIENTS:
            raise GuestFail("too_large", f"at most {MAX_CLIENTS} connections to a terminal at a time")
        if not self.finished:
            _check_clients(self.g)
        super().subscribe(c, replay)  # the replay of the scrollback counts as lag too
        if c in self.subs:
            cut_if_behind(self, c)

    def waits_for(self, c: "Conn") -> bool:
        """A terminal waits for a congested client only up to STALL_LIMIT (``_on_stall``)."""
        return False

    def unsubscribe(self, c: "Conn") -> None:
        if c in self.subs:
            self.subs.remove(c)
        if c in self.in_waiters:
            self.in_waiters.remove(c)
        if c.on_drain == self._on_drain:
            c.on_drain = None
        if self.paused:
            self._on_drain()


def _set_size(fd: int, cols: int, rows: int) -> None:
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    except OSError as e:
        raise os_fail(e, "resize") from e


def _check_clients(guest: "Guest") -> None:
    if sum(len(p.subs) for p in guest.ptys.values()) >= MAX_CLIENTS_ALL:
        raise GuestFail("too_large", f"at most {MAX_CLIENTS_ALL} terminal connections in a sandbox at a time")


def _retire(guest: "Guest") -> None:
    """An exited terminal stays for a late `pty_connect`; the oldest beyond KEEP_EXITED go."""
    exited = [q for q in guest.ptys.values() if q.finished]
    exited.sort(key=lambda q: q.started)
    for q in exited[: max(0, len(exited) - KEEP_EXITED)]:
        guest.ptys.pop(q.pid, None)


# --------------------------------------------------------------------------------- ops


def _find(guest: "Guest", req: "dict[str, Any]") -> Pty:
    pid = req.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise GuestFail("invalid_argument", "pid must be a positive integer")
    p = guest.ptys.get(pid)
    if p is None:
        raise GuestFail("not_found", f"no terminal with pid {pid}")
    return p


class PtySessionOp(Op):
    """pty_start / pty_connect: output and events out; input, resizes and signals in."""

    def __init__(self, conn: "Conn", p: Pty, replay: bool) -> None:
        super().__init__(conn)
        self.p = p
        p.subscribe(conn, replay)

    def on_frame(self, kind: int, payload: bytes) -> None:
        p = self.p
        if kind == K_DATA:
            p.feed(payload, self.conn)
        elif kind == K_RESIZE:
            p.resize(*parse_size(jload(payload)))
        elif kind == K_SIGNAL:
            if p.running:
                p.signal(parse_signal(payload))
        elif kind == K_END:
            pass  # a terminal has no stdin to close: Ctrl-D (b"\x04") is the EOF key
        else:
            super().on_frame(kind, payload)

    def on_close(self) -> None:
        self.p.unsubscribe(self.conn)


class PtyInputOp(InputOp):
    """``pty_input``: refused once the terminal has exited (``exited``), as ``send_stdin`` is
    for a process that has (before, the input was answered as taken and dropped)."""

    def __init__(self, conn: "Conn", p: Pty) -> None:
        _check_input(p)
        super().__init__(conn, p)
        self.p = p

    def on_frame(self, kind: int, payload: bytes) -> None:
        if kind == K_DATA:
            _check_input(self.p)  # it exited while this op was open
        super().on_frame(kind, payload)


def _check_input(p: Pty) -> None:
    if not p.running or p.master < 0:  # its own kind, as a process's (process.SendStdinOp)
        raise GuestFail("exited", f"terminal {p.pid} has exited: it takes no input")


def start_op(guest: "Guest", conn: "Conn", op: str, req: "dict[str, Any]") -> "Op | None":
    if op == "pty_start":
        if guest.stopping:
            raise GuestFail("unavailable", "the sandbox is shutting down")
        return PtySessionOp(conn, Pty(guest, req), replay=False)
    if op == "pty_connect":
        return PtySessionOp(conn, _find(guest, req), replay=True)
    if op == "pty_input":
        return PtyInputOp(conn, _find(guest, req))
    p = _find(guest, req)
    if op == "pty_resize":
        p.resize(*parse_size(req))
    elif op == "pty_signal":
        sig = req.get("signal")
        if not isinstance(sig, int) or isinstance(sig, bool) or not 0 < sig < 65:
            raise GuestFail("invalid_argument", "signal must be an integer in 1..64")
        if not p.running:
            raise GuestFail("not_found", f"terminal {p.pid} has already exited")
        p.signal(sig)
    else:
        raise GuestFail("invalid_argument", f"unknown op {op!r}")
    Op(conn).reply({})
    return None
