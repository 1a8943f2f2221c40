"""The guest's TCP listener, for runtimes whose unix sockets the host cannot reach (gVisor).

Under gVisor a socket bound inside the sandbox lives in its user-space kernel: the host sees no
socket file, and a host-backed one (``--host-uds``) cannot be checkpointed. So the guest also
listens on TCP (``--tcp PORT``) on every address of the sandbox, and the agent connects over
the sandbox's veth. Anything in the netns could reach that port (a sandbox user who is not
root, too), so every connection starts with the sandbox's secret (``--secret-file``, 0600
sandbox root, written by the agent): exactly ``len(secret)`` bytes, compared in constant time;
anything else closes the connection before a frame is read. At most ``MAX_UNAUTHED``
connections wait for their secret (a flood from inside the sandbox closes its own oldest, never
the guest's files), and the port is bound without ``SO_REUSEADDR`` (so no process in the sandbox
can bind it beside the guest and be handed the agent's connection, secret first). After the
secret the protocol is the unix socket's (PROTOCOL.md).

``rekey`` (a request on an authenticated connection, ``{"op": "rekey", "secret": hex,
"hostname": name}``) replaces the secret: a sandbox restored from another's memory image starts
with that sandbox's secret in memory, and the agent gives it its own at once, with its own
``HOSTNAME`` for the commands it starts from then on.
"""

# ruff: noqa: SIM105

import _socket
import _thread
import os
import time

from .conn import Conn
from .loop import EPOLLIN
from .protocol import K_REQ, K_RESULT, GuestFail, jload, log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .server import Guest

SECRET_LEN = 64  # hex characters (32 random bytes)
# Connections that have not sent the secret yet, at most: past it the oldest is closed. Code in
# the sandbox (any user) can open connections faster than the guest may hold files; the agent's
# own connection sends the secret at once, so it is never the oldest for long.
MAX_UNAUTHED = 256


def _same(a: bytes, b: bytes) -> bool:
    """Constant-time equality (hmac is not imported: the guest loads as little as it can)."""
    if len(a) != len(b):
        return False
    diff = 0
    for x, y in zip(a, b, strict=True):
        diff |= x ^ y
    return diff == 0


def _check_secret(secret: bytes) -> bytes:
    if len(secret) != SECRET_LEN or not all(c in b"0123456789abcdef" for c in secret):
        raise ValueError("the secret must be 64 lower-case hex characters")
    return secret


class Keys:
    """The secret every new connection must present (replaced by ``rekey``)."""

    def __init__(self, secret: bytes) -> None:
        self.secret = _check_secret(secret)


class AuthConn(Conn):
    """A TCP connection: the secret first, then the usual frames."""

    def __init__(
        self, guest: "Guest", sock: "_socket.socket", keys: Keys, unauthed: "dict[int, AuthConn]"
    ) -> None:
        self.keys = keys
        self.authed = False
        self.unauthed = unauthed
        super().__init__(guest, sock)
        unauthed[id(self)] = self  # insertion-ordered: the first is the oldest
        if len(unauthed) > MAX_UNAUTHED:
            unauthed[next(iter(unauthed))].close()

    def close(self) -> None:
        self.unauthed.pop(id(self), None)
        super().close()

    def parse(self) -> None:
        if not self.authed:
            if len(self.inbuf) < SECRET_LEN:
                return
            given = bytes(self.inbuf[:SECRET_LEN])
            if not _same(given, self.keys.secret):
                self.close()
                return
            del self.inbuf[:SECRET_LEN]
            self.authed = True
            self.unauthed.pop(id(self), None)
        super().parse()

    def dispatch(self, kind: int, payload: bytes) -> None:
        if self.op is None and kind == K_REQ and b'"rekey"' in payload:
            req = jload(payload)
            if isinstance(req, dict) and req.get("op") == "rekey":
                try:
                    self.keys.secret = _check_secret(str(req.get("secret", "")).encode())
                except ValueError as e:
                    self.fail(GuestFail("invalid_argument", f"rekey: {e}"))
                    return
                hostname = req.get("hostname")
                if isinstance(hostname, str) and 0 < len(hostname) <= 64:
                    self.g.base_env["HOSTNAME"] = hostname
                self.send(K_RESULT, b"{}")
                self.finish()
                return
        super().dispatch(kind, payload)


def listen(guest: "Guest", port: int, secret_file: str) -> None:
    """Listen on ``0.0.0.0:port`` next to the unix socket (every address: a sandbox restored
    into another network slot keeps its listener on the new address).

    The listener is not in the guest's epoll set: this gVisor version refuses to checkpoint a
    TCP endpoint that epoll watches ("endpoint still has waiters upon save"), while a thread
    blocked in accept(2) is interrupted by the checkpoint and resumes after the restore. So a
    thread accepts and hands each connection to the loop through a pipe (4-byte fd numbers);
    connections themselves are watched as usual, and the agent holds none during a checkpoint.
    """
    with open(secret_file, "rb") as f:
        keys = Keys(f.read(SECRET_LEN + 1).strip())
    unauthed: dict[int, AuthConn] = {}
    lsock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    # No SO_REUSEADDR: gVisor's netstack lets a socket with it bind a specific address of a
    # port a SO_REUSEADDR wildcard listener holds, and the more specific listener gets the
    # connections. Any user in the sandbox could then take the agent's connection to
    # <sandbox ip>:port, and the secret it sends first. Without it every such bind is EADDRINUSE.
    lsock.bind(("0.0.0.0", port))
    lsock.listen(512)
    r, w = os.pipe()
    os.set_blocking(r, False)

    def accept_loop() -> None:
        while True:
            try:
                fd, _addr = lsock._accept()  # type: ignore[attr-defined]
            except InterruptedError:
                continue
            except OSError as e:
                log(f"accept failed: {e}")
                time.sleep(0.1)
                continue
            os.write(w, fd.to_bytes(4, "big"))

    def on_ready(ev: int) -> None:
        try:
            data = os.read(r, 4 * 64)
        except BlockingIOError:
            return
        for i in range(0, len(data) - len(data) % 4, 4):
            sock = _socket.socket(fileno=int.from_bytes(data[i : i + 4], "big"))
            sock.setblocking(False)
            try:
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            except OSError:
                pass
            AuthConn(guest, sock, keys, unauthed)

    guest.tcp_listener = lsock  # type: ignore[attr-defined]  # kept alive with the guest
    guest.loop.watch(r, EPOLLIN, on_ready)
    _thread.start_new_thread(accept_loop, ())
