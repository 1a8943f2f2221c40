"""The agent's dial data port: DialPort's byte stream without gRPC's per-message machinery
(docs/networking.md §3).

``OpenDialTicket`` (an ordinary RPC on the mTLS channel) dials the port inside the sandbox's
netns now, counts it against the sandbox's dial limit, and holds the connected socket for a
ticket: 32 random bytes, single use, bound to the sandbox and port, void after
``WARREN_AGENT_DIAL_TICKET_TTL_S`` (10 s).
The proxy opens a connection to this port (mutual TLS with the gRPC port's certificates; plain
TCP on a loopback address, or when the agent runs without mTLS, which is loopback only), sends
one preamble line ``WDIAL1 <ticket hex> <sandbox_id> <port>\\n`` and, without waiting, its
first frames. The agent answers one byte (``ACCEPTED``) and relays; anything else (a wrong,
reused, expired or mismatched ticket, garbage, a line past ``MAX_PREAMBLE``, silence past
``PREAMBLE_TIMEOUT_S``, the oldest of ``MAX_PENDING_CONNS`` waiting) is closed with nothing
said, and a ticket presented for another sandbox or port is burnt.

Frames both ways: a 4-byte big-endian length, then that many bytes (at most ``MAX_FRAME``);
length 0 is a half-close (the proxy's ``close_write``; the sandbox's end of output). TLS in
asyncio cannot half-close, hence the framing. The relay is two ``asyncio.Protocol`` s wired to
each other (no task, no queue per message); each pauses the other's reading while its own
transport's buffer is full, so memory stays bounded whichever side is slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import secrets
import ssl
import struct
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from warren.agent.control_plane import HostCredentials, credentials_path, load_credentials
from warren.agent.dial import Dialer, TooManyDials, dialer_for
from warren.agent.manager import SandboxManager
from warren.errors import InvalidRequest
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.agent.dial")

MAGIC = b"WDIAL1"
ACCEPTED = b"\x01"
TICKET_BYTES = 32
TICKET_TTL_S = 10.0
MAX_PREAMBLE = 128  # "WDIAL1 " + 64 hex + " " + a sandbox id (≤ 43) + " " + a port + "\n"
PREAMBLE_TIMEOUT_S = 5.0  # from the TCP accept to the ticket (the TLS handshake included)
MAX_UNREDEEMED = 1024  # tickets held at once by the agent (each holds a dialled socket)
MAX_PENDING_CONNS = 128  # data connections without a ticket yet; past it the oldest is closed
MAX_FRAME = 1 << 20
HEADER = struct.Struct("!I")
EOF_FRAME = HEADER.pack(0)
CREDS_CHECK_S = 60.0


@dataclass(slots=True)
class _Held:
    sandbox_id: str
    port: int
    side: _SandboxSide
    deadline: float
    timer: asyncio.TimerHandle


class _Relayed(asyncio.Protocol):
    """Either end of a relay: while this end's writes are past their high-water mark, the other
    end reads nothing."""

    def _other_transport(self) -> asyncio.Transport | None:
        raise NotImplementedError

    def pause_writing(self) -> None:
        if (t := self._other_transport()) is not None:
            t.pause_reading()

    def resume_writing(self) -> None:
        if (t := self._other_transport()) is not None:
            t.resume_reading()


class _SandboxSide(_Relayed):
    """The socket dialled in the sandbox's netns. Reads nothing until a data connection links."""

    def __init__(self, touch: Callable[[], None], release: Callable[[], None]) -> None:
        self.touch, self.release = touch, release
        self.peer: _DataSide | None = None
        self.t: asyncio.Transport | None = None
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.t = cast(asyncio.Transport, transport)  # (uvloop's transports are not subclasses)
        t.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.touch()
        if self.peer is not None:
            self.peer.send(HEADER.pack(len(data)) + data)

    def eof_received(self) -> bool:
        self.eof = True
        if self.peer is not None:
            self.peer.send(EOF_FRAME)
            self.peer.maybe_done()
        return True  # the sandbox may still read: keep our write side

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        if self.peer is not None:
            self.peer.sandbox_gone()

    def _other_transport(self) -> asyncio.Transport | None:
        return self.peer.t if self.peer is not None else None


class _DataSide(_Relayed):
    """One connection to the data port: preamble, then frames to and from the sandbox side."""

    def __init__(self, port: DataPort) -> None:
        self.port = port
        self.t: asyncio.Transport | None = None
        self.buf = bytearray()
        self.sb: _SandboxSide | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.counted = False
        self.client_eof = False
        self.closed = False
        self.ready = port.tls is None  # with TLS: once start_tls has given its transport

    # -- the connection and its preamble ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.t = cast(asyncio.Transport, transport)  # (uvloop's transports are not subclasses)
        waiting = self.port.waiting
        if len(waiting) >= MAX_PENDING_CONNS:
            # The oldest gives way, not the newest: anyone who can connect (a local user, on
            # loopback) holding every place with silent connections shut the proxy out.
            next(iter(waiting)).abort()
        waiting[self] = None
        self.counted = True
        self.timer = asyncio.get_running_loop().call_later(PREAMBLE_TIMEOUT_S, self.abort)
        if self.port.tls is not None:
            t.pause_reading()
            task = asyncio.create_task(self._start_tls(t, self.port.tls))
            self.port.tasks.add(task)
            task.add_done_callback(self.port.tasks.discard)

    async def _start_tls(self, raw: asyncio.Transport, ctx: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                raw, self, ctx, server_side=True, ssl_handshake_timeout=PREAMBLE_TIMEOUT_S
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as e:
            log.info("event=dial_data_tls_refused error=%s", e)
            self.abort()
            return
        if tls is None or self.closed:
            raw.abort()
            return
        self.t = tls
        self.ready = True
        if self.buf:  # what came in the handshake's last flight, before start_tls returned
            self.data_received(b"")

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.port.waiting.pop(self, None)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def abort(self) -> None:
        self._uncount()
        self.closed = True
        if self.t is not None:
            self.t.abort()
        if self.sb is not None and self.sb.t is not None:
            self.sb.t.abort()

    def data_received(self, data: bytes) -> None:
        if self.sb is not None:
            self._frames(data)
            return
        self.buf += data
        if not self.ready:
            if len(self.buf) > MAX_PREAMBLE + 4 + MAX_FRAME:
                self.abort()
            return
        end = self.buf.find(b"\n", 0, MAX_PREAMBLE)
        if end < 0:
            if len(self.buf) >= MAX_PREAMBLE:
                self.abort()
            return
        line, rest = bytes(self.buf[:end]), bytes(self.buf[end + 1 :])
        self.buf.clear()
        held = self.port.redeem(line)
        if held is None or self.t is None:
            self.abort()
            return
        self._uncount()
        sb = self.sb = held.side
        sb.peer = self
        self.t.write(ACCEPTED)
        assert sb.t is not None
        sb.t.resume_reading()
        if rest:
            self._frames(rest)

    # -- the relay -------------------------------------------------------------------------

    def _frames(self, data: bytes) -> None:
        sb = self.sb
        assert sb is not None and sb.t is not None
        buf = self.buf
        if not buf and len(data) >= 4 and HEADER.unpack_from(data)[0] == len(data) - 4:
            if len(data) == 4:
                self._client_eof()
            elif not self.client_eof:
                sb.t.write(memoryview(data)[4:])
            else:
                self.abort()
            return  # the common case: exactly one frame
        buf += data
        while len(buf) >= 4:
            (n,) = HEADER.unpack_from(buf)
            if n > MAX_FRAME or (n and self.client_eof):
                self.abort()
                return
            if len(buf) < 4 + n:
                return
            if n:
                sb.t.write(bytes(buf[4 : 4 + n]))
            else:
                self._client_eof()
            del buf[: 4 + n]

    def _client_eof(self) -> None:
        self.client_eof = True
        sb = self.sb
        if sb is not None and sb.t is not None and not sb.t.is_closing() and sb.t.can_write_eof():
            sb.t.write_eof()
        self.maybe_done()

    def send(self, frame: bytes) -> None:
        if self.t is not None and not self.t.is_closing():
            self.t.write(frame)

    def maybe_done(self) -> None:
        """Both directions ended: the dial is over (as a DialPort call ends)."""
        if self.client_eof and self.sb is not None and self.sb.eof:
            self.sandbox_gone()

    def sandbox_gone(self) -> None:
        if self.sb is not None and self.sb.t is not None:
            self.sb.t.close()
        if self.t is not None and not self.t.is_closing():
            if self.sb is not None and not self.sb.eof:
                self.sb.eof = True
                self.t.write(EOF_FRAME)
            self.t.close()  # after what is buffered

    def eof_received(self) -> bool:
        return False  # the proxy went away: close (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self._uncount()
        self.closed = True
        if self.sb is not None and self.sb.t is not None:
            self.sb.t.abort()

    def _other_transport(self) -> asyncio.Transport | None:
        return self.sb.t if self.sb is not None else None


class DataPort:
    """The data listener and the tickets it redeems; one per agent."""

    def __init__(
        self, dialer: Dialer, *, tls: ssl.SSLContext | None, ticket_ttl_s: float = TICKET_TTL_S
    ) -> None:
        self.dialer = dialer
        self.ttl = ticket_ttl_s
        self.tls = tls
        self.port = 0
        # Connections without a ticket yet, oldest first (a dict: ordered, O(1) removal).
        self.waiting: dict[_DataSide, None] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._held: dict[bytes, _Held] = {}  # by sha256(ticket): lookups never touch the secret
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _DataSide(self), host or None, port, backlog=128)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for h in list(self._held.values()):
            self._expire(h)
        for t in list(self.tasks):
            t.cancel()

    @property
    def pending(self) -> int:
        return len(self.waiting)

    @property
    def unredeemed(self) -> int:
        return len(self._held)

    async def issue(self, sandbox_id: str, port: int) -> pb.DialTicket:
        """Dial the port now and hold the socket for a new ticket (PortNotOpen, TooManyDials,
        NotFound, InvalidState as DialPort)."""
        if not 1 <= port <= 65535:
            raise InvalidRequest("port must be 1..65535")
        if len(self._held) >= MAX_UNREDEEMED:
            raise TooManyDials(f"at most {MAX_UNREDEEMED} unredeemed dial tickets per host")
        release = self.dialer.acquire(sandbox_id)
        try:
            sock = await self.dialer.connect_socket(sandbox_id, port)
            loop = asyncio.get_running_loop()
            manager = self.dialer.m
            _, side = await loop.create_connection(
                lambda: _SandboxSide(lambda: manager.touch(sandbox_id), release), sock=sock
            )
        except BaseException:
            release()
            raise
        ticket = secrets.token_bytes(TICKET_BYTES)
        key = hashlib.sha256(ticket).digest()
        held = _Held(
            sandbox_id,
            port,
            side,
            loop.time() + self.ttl,
            loop.call_later(self.ttl, self._expire_key, key),
        )
        self._held[key] = held
        return pb.DialTicket(
            ticket=ticket,
            data_port=self.port,
            expires_in_ms=int(self.ttl * 1000),
            tls=self.tls is not None,
        )

    def _expire_key(self, key: bytes) -> None:
        h = self._held.get(key)
        if h is not None:
            self._expire(h)

    def _expire(self, h: _Held) -> None:
        h.timer.cancel()
        for k, v in list(self._held.items()):
            if v is h:
                del self._held[k]
        if h.side.t is not None:
            h.side.t.abort()  # connection_lost releases the dial's count

    def redeem(self, line: bytes) -> _Held | None:
        """The held dial a preamble line names, taken (single use); None for anything else."""
        parts = line.split(b" ")
        if len(parts) != 4 or parts[0] != MAGIC or len(parts[1]) != 2 * TICKET_BYTES:
            return None
        try:
            ticket = bytes.fromhex(parts[1].decode("ascii"))
            sandbox_id, port = parts[2].decode("ascii"), int(parts[3])
        except (ValueError, UnicodeDecodeError):
            return None
        h = self._held.pop(hashlib.sha256(ticket).digest(), None)
        if h is None:
            return None
        h.timer.cancel()
        if h.sandbox_id != sandbox_id or h.port != port or asyncio.get_running_loop().time() > h.deadline:
            log.warning("event=dial_ticket_mismatch sandbox_id=%s port=%s", sandbox_id, port)
            self._expire(h)  # a ticket shown for another sandbox or port is burnt
            return None
        if h.side.t is None or h.side.t.is_closing():
            return None
        return h


# -------------------------------------------------------------------------------- mutual TLS


_ports: weakref.WeakKeyDictionary[SandboxManager, DataPort] = weakref.WeakKeyDictionary()


def data_port_for(manager: SandboxManager) -> DataPort | None:
    """The agent's data listener, None when it runs without one."""
    return _ports.get(manager)


async def start(
    manager: SandboxManager,
    listen: str,
    port: int,
    *,
    ticket_ttl_s: float = TICKET_TTL_S,
    data_dir: Path | None,
    tls_on_loopback: bool = False,
) -> DataPort | None:
    """The data listener on the gRPC address's host (``port`` 0: an ephemeral one; -1 or a
    ``unix:`` gRPC address: none). ``data_dir`` (an agent with mTLS): mutual TLS with the
    host's certificates, except on a loopback address unless ``tls_on_loopback`` — there the
    bytes never leave the machine and the ticket alone admits (docs/networking.md §3)."""
    if port < 0 or listen.startswith("unix:"):
        return None
    host = listen.rsplit(":", 1)[0].strip("[]")
    tls = None
    if data_dir is not None and (tls_on_loopback or not is_loopback(host)):
        tls = server_context(data_dir)
        if tls is None:
            return None  # mTLS on gRPC but no certificates to serve: no plain-text twin
    dp = DataPort(dialer_for(manager), tls=tls, ticket_ttl_s=ticket_ttl_s)
    await dp.start(host, port)
    if tls is not None and data_dir is not None:
        task = asyncio.create_task(follow_credentials(tls, data_dir))
        dp.tasks.add(task)
        task.add_done_callback(dp.tasks.discard)
    _ports[manager] = dp
    log.info("event=dial_data_ready port=%d tls=%s", dp.port, tls is not None)
    return dp


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def server_context(data_dir: Path) -> ssl.SSLContext | None:
    """The gRPC port's certificates (``host-credentials.json``) as a server context that
    requires a client certificate of the CP's CA (clientAuth: host certificates are refused)."""
    creds = load_credentials(data_dir)
    if creds is None or not creds.has_tls:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load(ctx, creds, data_dir)
    return ctx


def _load(ctx: ssl.SSLContext, creds: HostCredentials, data_dir: Path) -> None:
    # load_cert_chain takes files only: a 0600 file in the agent's own directory, for the call.
    with tempfile.NamedTemporaryFile("w", prefix=".dial-tls-", suffix=".pem", dir=data_dir) as f:
        f.write(creds.key_pem + "\n" + creds.cert_pem)
        f.flush()
        ctx.load_cert_chain(f.name)
    ctx.load_verify_locations(cadata=creds.ca_cert_pem)


async def follow_credentials(ctx: ssl.SSLContext, data_dir: Path) -> None:
    """Reload refreshed certificates into ``ctx`` (new handshakes use them), as the gRPC port's
    ``TlsMaterial`` hot-swaps its own; the link saves them to the same file."""
    path = credentials_path(data_dir)
    seen = _mtime(path)
    while True:
        await asyncio.sleep(CREDS_CHECK_S)
        now = _mtime(path)
        if now == seen:
            continue
        seen = now
        creds = load_credentials(data_dir)
        if creds is not None and creds.has_tls:
            with contextlib.suppress(ssl.SSLError, OSError):
                _load(ctx, creds, data_dir)
                log.info("event=dial_data_tls_reloaded")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
