"""Byte streams to sandbox ports over the agent's dial data port (agent/dial_data.py,
docs/networking.md §3), with DialPort over gRPC as the fallback.

:func:`open_stream` asks the agent for a ticket (``OpenDialTicket``: the agent dials the port
now, so every DialPort error — port_not_open, paused, unknown sandbox, too many dials — comes
out of that call as it would from DialPort), connects to the ticket's data port over mutual TLS
(the CP's client certificate, the host's certificate checked against its ``host-…`` name, as the
gRPC channel does; loopback below) and sends the ticket line and the first frames at once; the
agent's accept byte is read with the first response bytes, not waited for.

On a loopback address (the agent on the CP's machine) the data port is plain TCP: the bytes never
leave the machine and the ticket admits. An agent without a data port (UNIMPLEMENTED, an older
agent, ``WARREN_AGENT_DIAL_DATA_PORT=-1``), one that offers plain TCP on another address, or a
data port that cannot be reached: that host's connections go over DialPort for ``FALLBACK_S``.

A :class:`DataStream` is an ``asyncio.Protocol``: a response frame wakes the reader directly (no
task, no queue hand-off, no protobuf), which is what takes the added latency of a small GET
under a millisecond. Bounded both ways: at most ``_HIGH`` bytes wait to be read before the agent
is paused (TCP pushes back), and a write waits for the transport's buffer to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import struct
import tempfile
import time
import weakref
from collections import deque
from typing import cast

from warren.cp.hosts.client_pool import HostClient
from warren.cp.proxy.stream import CHUNK, ByteStream, DialStream
from warren.cp.security.ca import CertificateAuthority
from warren.errors import AgentError
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.proxy")

CONNECT_TIMEOUT_S = 10.0
FALLBACK_S = 60.0  # a host whose data port failed is reached over DialPort this long
MAX_FRAME = 1 << 20
# Bytes received and not yet read, before the agent is paused (its socket's buffers and the
# sandbox's hold the rest), and the most one read off the data connection takes.
_HIGH = 32 << 10
READ_PIECE = 32 << 10
_READ_BUF = memoryview(bytearray(READ_PIECE))
_HEADER = struct.Struct("!I")
_ACCEPTED = 1
_EOF_FRAME = _HEADER.pack(0)

_no_data_port: dict[str, float] = {}  # host id → monotonic time until which DialPort is used
_contexts: weakref.WeakKeyDictionary[CertificateAuthority, tuple[int, ssl.SSLContext]] = (
    weakref.WeakKeyDictionary()
)


class _Fallback(Exception):
    """The data path is not available for this host: use DialPort."""


def client_context(ca: CertificateAuthority) -> ssl.SSLContext:
    """The CP's client certificate and CA as a TLS context (renewed with the certificate)."""
    cert = ca.client_cert()
    cached = _contexts.get(ca)
    if cached is not None and cached[0] == ca.client_generation:
        return cached[1]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=ca.cert_pem)
    # load_cert_chain takes files only: a 0600 temporary file that lives for the call.
    with tempfile.NamedTemporaryFile("w", prefix="warren-proxy-", suffix=".pem") as f:
        f.write(cert.key_pem + "\n" + cert.cert_pem)
        f.flush()
        ctx.load_cert_chain(f.name)
    _contexts[ca] = (ca.client_generation, ctx)
    return ctx


class _Protocol(asyncio.BufferedProtocol):
    """The CP's end of one data connection. A buffered protocol, so that each read off the
    socket is at most ``READ_PIECE`` bytes (a plain protocol gets whatever the loop read, up to
    256 KiB with uvloop), and frames are parsed as they stream: payload bytes are queued as they
    come, never a whole frame first. What one connection holds unread is then ``_HIGH`` plus one
    read (session 15: it was 2 MiB plus one read of up to 256 KiB: ~2.2 MiB an unread preview response)."""

    def __init__(self) -> None:
        self.t: asyncio.Transport | None = None
        self.frames: deque[bytes] = deque()
        self.queued = 0
        self.head = bytearray()  # a frame header read in part
        self.left = 0  # payload bytes of the current frame still to come
        self.accepted = False
        self.ended = False  # the sandbox side's end frame came
        self.error: BaseException | None = None  # the connection ended (after what is queued)
        self.waiter: asyncio.Future[None] | None = None
        self.drain: asyncio.Future[None] | None = None
        self.write_paused = False
        self.read_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)  # (uvloop's transports are not subclasses)
        # Over TLS: the decrypted bytes the TLS layer holds unread count too (default 256 KiB).
        with contextlib.suppress(AttributeError, NotImplementedError):
            self.t.set_read_buffer_limits(high=_HIGH)  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        # One buffer for every connection: the loop reads into it and calls buffer_updated at
        # once, before any other read (asyncio's, uvloop's and their TLS layers' contract), and
        # the payload is copied out there.
        return _READ_BUF

    def buffer_updated(self, nbytes: int) -> None:
        self._parse(_READ_BUF[:nbytes])
        self._wake()

    def _parse(self, data: memoryview) -> None:
        i, n = 0, len(data)
        if not self.accepted and n:
            if data[0] != _ACCEPTED:
                self._fail(ConnectionError("the agent refused the data connection"))
                return
            self.accepted, i = True, 1
        while i < n:
            if self.left:
                take = min(self.left, n - i)
                self._push(bytes(data[i : i + take]))
                self.left -= take
                i += take
                continue
            need = 4 - len(self.head)
            self.head += data[i : i + need]
            i += need
            if len(self.head) < 4:
                return
            (size,) = _HEADER.unpack(self.head)
            self.head.clear()
            if size > MAX_FRAME or (size and self.ended):
                self._fail(ConnectionError("the agent broke the data framing"))
                return
            if size:
                self.left = size
            else:
                self.ended = True

    def _push(self, data: bytes) -> None:
        self.frames.append(data)
        self.queued += len(data)
        if self.queued > _HIGH and not self.read_paused and self.t is not None:
            self.read_paused = True
            self.t.pause_reading()

    def taken(self, n: int) -> None:
        self.queued -= n
        if self.read_paused and self.queued <= _HIGH // 2 and self.t is not None:
            self.read_paused = False
            self.t.resume_reading()

    def _fail(self, e: BaseException) -> None:
        if self.error is None:
            self.error = e
        if self.t is not None:
            self.t.abort()
        self._wake()

    def _wake(self) -> None:
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            self.error = ConnectionError(f"the data connection ended{f': {exc}' if exc else ''}")
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        d, self.drain = self.drain, None
        if d is not None and not d.done():
            d.set_result(None)


class DataStream:
    """One connection over the data port, with :class:`DialStream` 's interface."""

    def __init__(self, client: HostClient, sandbox_id: str, port: int) -> None:
        self.sandbox_id, self.port = sandbox_id, port
        self._client = client
        self._p = _Protocol()
        self._buf = memoryview(b"")

    async def open(self) -> None:
        """The ticket (AgentError as DialPort's), then the connection (_Fallback if unusable)."""
        c = self._client
        try:
            ticket = await c.stub.OpenDialTicket(
                pb.DialOpen(sandbox_id=self.sandbox_id, port=self.port), timeout=CONNECT_TIMEOUT_S
            )
        except AgentError as e:
            if e.rpc_code == "UNIMPLEMENTED":
                _avoid(c.host_id, "no data port")
                raise _Fallback from None
            raise
        host = c.address.rsplit(":", 1)[0].strip("[]")
        if not ticket.data_port or c.ca is None or not (ticket.tls or _loopback(host)):
            # Plain text only where it never leaves the machine (the agent's own rule too).
            _avoid(c.host_id, "no mutual TLS on its data port")
            raise _Fallback
        loop = asyncio.get_running_loop()
        tls = client_context(c.ca) if ticket.tls else None
        try:
            t, _ = await loop.create_connection(
                lambda: self._p, host, ticket.data_port, ssl=tls, server_hostname=c.host_id if tls else None,
                ssl_handshake_timeout=CONNECT_TIMEOUT_S if tls else None,
            )  # fmt: skip
        except (OSError, ssl.SSLError) as e:
            _avoid(c.host_id, f"data port: {e}")
            raise _Fallback from None
        sock = t.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        line = b"WDIAL1 %s %s %d\n" % (ticket.ticket.hex().encode(), self.sandbox_id.encode(), self.port)
        t.write(line)  # the first request follows at once: the accept byte is checked on read

    @property
    def readable(self) -> bool:
        """Bytes (or the end) already arrived: for an idle pooled connection, the server hung up."""
        p = self._p
        return bool(self._buf) or bool(p.frames) or p.ended or p.error is not None

    async def read(self, max_bytes: int) -> bytes:
        if not self._buf:
            p = self._p
            while not p.frames:
                if p.ended:
                    return b""
                if p.error is not None:
                    raise p.error
                p.waiter = asyncio.get_running_loop().create_future()
                await p.waiter
            item = p.frames.popleft()
            p.taken(len(item))
            if len(item) <= max_bytes:
                return item
            self._buf = memoryview(item)
        out, self._buf = self._buf[:max_bytes], self._buf[max_bytes:]
        return bytes(out)

    async def _send(self, frame: bytes) -> None:
        p = self._p
        if p.error is not None or p.t is None or p.t.is_closing():
            raise ConnectionError("the data connection has ended")
        p.t.write(frame)
        if p.write_paused:
            p.drain = asyncio.get_running_loop().create_future()
            await p.drain

    async def write(self, data: bytes) -> None:
        for i in range(0, len(data), CHUNK):
            chunk = data[i : i + CHUNK]
            await self._send(_HEADER.pack(len(chunk)) + chunk)

    async def close_write(self) -> None:
        await self._send(_EOF_FRAME)

    def close_nowait(self) -> None:
        if self._p.t is not None:
            self._p.t.abort()

    async def aclose(self) -> None:
        self.close_nowait()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _avoid(host_id: str, why: str) -> None:
    if host_id not in _no_data_port:  # once a FALLBACK_S per host: an agent to upgrade or fix
        log.warning("event=proxy_dialport_fallback host_id=%s reason=%s", host_id, why)
    _no_data_port[host_id] = time.monotonic() + FALLBACK_S


def _data_path(client: HostClient) -> bool:
    if client.ca is None or client.address.startswith("unix:"):
        return False
    until = _no_data_port.get(client.host_id)
    if until is None:
        return True
    if time.monotonic() < until:
        return False
    del _no_data_port[client.host_id]
    return True


async def open_stream(client: HostClient, sandbox_id: str, port: int) -> ByteStream:
    """A connected byte stream to ``port`` in the sandbox: the data port, else DialPort.
    Raises what DialPort raises (AgentError: port_not_open, paused, not found, too many)."""
    if _data_path(client):
        stream = DataStream(client, sandbox_id, port)
        try:
            await stream.open()
            return stream
        except _Fallback:
            pass
        except BaseException:
            stream.close_nowait()
            raise
    dial = DialStream(client, sandbox_id, port)
    await dial.open()
    return dial
