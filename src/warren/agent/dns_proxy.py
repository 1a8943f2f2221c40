"""The resolver of a sandbox with name rules: a small DNS proxy on its gateway address.

One per sandbox whose egress rules name domains (``egress_rules.py``), on ``<gateway>:53``
over UDP and TCP, in the host's netns; the sandbox's ``/etc/resolv.conf`` names it, and its
rules refuse DNS to any other resolver. Each query is judged by the sandbox's rules
(:meth:`warren.egress_rules.EgressRules.verdict`): a denied name gets NXDOMAIN at once; an
allowed one is forwarded to the host's upstream resolver and the A records of the answer are
added to the sandbox's allowed addresses (``learn``) *before* the answer is returned, so the
connection that follows finds its rule in place; any other name is forwarded as it is.

Bounded: queries in flight and TCP connections per sandbox, queries forwarded at once by all
the resolvers together (each resolver keeps a floor of its own beside that count), message
sizes (a UDP datagram, a TCP message's 2-byte length), an idle TCP connection's life, the
time a TCP client has to read its answers (then it is reset), the upstream's time to answer.
A query from any address but the sandbox's own is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence

from warren.egress_rules import Verdict

log = logging.getLogger("warren.agent.dns")

PORT = 53
MAX_INFLIGHT = 16  # UDP queries per sandbox being answered at once; more are dropped
MAX_TCP = 4  # TCP connections per sandbox
# Queries being forwarded at once by all the agent's resolvers (each holds a socket): a tenant
# flooding its resolver cannot run the agent out of file descriptors. Past it: SERVFAIL.
MAX_UPSTREAM_TOTAL = 256
# Of those, one tenant's resolvers together (HostSandbox.tenant: the owning team) hold at most
# half: a tenant's many sandboxes filling the count left every other team's resolvers only their
# floor (below), 2 queries at once, the rest answered SERVFAIL.
PER_TENANT_SHARE = MAX_UPSTREAM_TOTAL // 2
# Queries each resolver may forward at once besides, whatever the others hold: a tenant whose
# many sandboxes fill the shared count (queries the upstream never answers hold a place 2 s)
# must not leave every other sandbox's resolver with none. File descriptors stay bounded:
# MAX_UPSTREAM_TOTAL + OWN_FLOOR per sandbox with name rules.
OWN_FLOOR = 2
TCP_IDLE_S = 10.0
UPSTREAM_TIMEOUT_S = 2.0
MAX_UDP = 4096
RCODE_SERVFAIL, RCODE_NXDOMAIN = 2, 3
TYPE_A, CLASS_IN = 1, 1

Upstream = tuple[str, int]
Learn = Callable[[list[tuple[str, int]]], Awaitable[None]]


class DnsFormatError(ValueError):
    pass


# ------------------------------------------------------------------------------ the wire


def _skip_name(msg: bytes, off: int) -> int:
    """The offset after the (possibly compressed) name at ``off``."""
    for _ in range(128):
        if off >= len(msg):
            raise DnsFormatError("name runs past the message")
        n = msg[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        if n & 0xC0:
            raise DnsFormatError("bad label type")
        off += 1 + n
    raise DnsFormatError("name too long")


def question(msg: bytes) -> tuple[str, int, int]:
    """(name, qtype, offset after the question) of a query with exactly one question."""
    if len(msg) < 12:
        raise DnsFormatError("short header")
    flags, qd = struct.unpack_from("!H H", msg, 2)
    if flags & 0x8000 or qd != 1:
        raise DnsFormatError("not a query with one question")
    off, labels = 12, []
    while True:
        if off >= len(msg):
            raise DnsFormatError("question runs past the message")
        n = msg[off]
        if n == 0:
            off += 1
            break
        if n & 0xC0:
            raise DnsFormatError("compressed question")
        labels.append(msg[off + 1 : off + 1 + n].decode("latin-1"))
        off += 1 + n
        if off > 12 + 255:
            raise DnsFormatError("name too long")
    if off + 4 > len(msg):
        raise DnsFormatError("short question")
    qtype = struct.unpack_from("!H", msg, off)[0]
    return ".".join(labels), qtype, off + 4


def a_records(resp: bytes) -> list[tuple[str, int]]:
    """(address, TTL) of every IN A record in the answer section of ``resp``."""
    if len(resp) < 12:
        raise DnsFormatError("short header")
    qd, an = struct.unpack_from("!H H", resp, 4)
    off = 12
    for _ in range(qd):
        off = _skip_name(resp, off) + 4
    out = []
    for _ in range(an):
        off = _skip_name(resp, off)
        if off + 10 > len(resp):
            raise DnsFormatError("short record")
        rtype, rclass, ttl, rdlen = struct.unpack_from("!H H I H", resp, off)
        off += 10
        if off + rdlen > len(resp):
            raise DnsFormatError("short record data")
        if rtype == TYPE_A and rclass == CLASS_IN and rdlen == 4:
            out.append((socket.inet_ntoa(resp[off : off + 4]), ttl))
        off += rdlen
    return out


def refusal(query: bytes, q_end: int, rcode: int) -> bytes:
    """An answer to ``query`` with no records and ``rcode`` (its question echoed)."""
    rd = struct.unpack_from("!H", query, 2)[0] & 0x0100
    header = struct.pack("!H H H H H H", struct.unpack_from("!H", query)[0], 0x8080 | rd | rcode, 1, 0, 0, 0)
    return header + query[12:q_end]


def upstreams_from(text: str, resolv_conf: str = "/etc/resolv.conf") -> list[Upstream]:
    """``WARREN_AGENT_DNS_UPSTREAM`` (``ip`` or ``ip:port``, comma-separated), else the host's
    own IPv4 nameservers (loopback ones too: the proxy runs in the host's netns)."""
    out: list[Upstream] = []
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        with contextlib.suppress(OSError), open(resolv_conf) as f:
            items = [p[1] for line in f if len(p := line.split()) >= 2 and p[0] == "nameserver"]
    for item in items:
        host, _, port = item.partition(":") if item.count(":") == 1 else (item, "", "")
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            continue
        if addr.version == 4:
            out.append((str(addr), int(port) if port.isdigit() else PORT))
    return out


# ----------------------------------------------------------------------------- the proxy


class Budget:
    """A count shared by every resolver of the agent (:data:`MAX_UPSTREAM_TOTAL`), at most
    ``per_tenant`` of it for one tenant's resolvers (:data:`PER_TENANT_SHARE`)."""

    def __init__(self, limit: int = MAX_UPSTREAM_TOTAL, per_tenant: int | None = None) -> None:
        self.limit = limit
        self.per_tenant = limit // 2 if per_tenant is None else per_tenant
        self.used = 0
        self._by_tenant: Counter[str] = Counter()

    def held(self, tenant: str) -> int:
        return self._by_tenant[tenant]

    @contextlib.contextmanager
    def take(self, tenant: str = "") -> Iterator[bool]:
        ok = self.used < self.limit and (not tenant or self._by_tenant[tenant] < self.per_tenant)
        if ok:
            self.used += 1
            if tenant:
                self._by_tenant[tenant] += 1
        try:
            yield ok
        finally:
            if ok:
                self.used -= 1
                if tenant:
                    self._by_tenant[tenant] -= 1
                    if self._by_tenant[tenant] <= 0:
                        del self._by_tenant[tenant]


class DnsProxy:
    """The resolver of one sandbox (``client_ip``), listening on ``listen_ip``:53."""

    def __init__(
        self,
        listen_ip: str,
        client_ip: str,
        *,
        verdict: Callable[[str], Verdict],
        learn: Learn,
        upstreams: Sequence[Upstream],
        budget: Budget | None = None,
        tenant: str = "",
    ) -> None:
        self.listen_ip = listen_ip
        self.client_ip = client_ip
        self.tenant = tenant or client_ip  # whose share of the budget it takes
        self.verdict = verdict
        self.learn = learn
        self.upstreams = list(upstreams)
        self.budget = budget or Budget()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._inflight = 0
        self._tcp_conns = 0
        self._own = 0  # queries forwarded on this resolver's own floor (OWN_FLOOR)
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=(self.listen_ip, PORT), reuse_port=False
        )
        self._udp = transport
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, self.listen_ip, PORT, reuse_address=True)
        except BaseException:
            transport.close()
            raise

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for t in list(self._tasks):
            t.cancel()
        for w in list(self._tcp_writers):  # Server.close leaves open connections open
            if w.transport.get_write_buffer_size():
                _reset(w)
            else:
                w.close()
        self._udp = self._tcp = None

    # ------------------------------------------------------------------------- answering

    async def answer(self, query: bytes, *, tcp: bool) -> bytes | None:
        """The reply to one query (None: nothing is sent back, as for garbage)."""
        try:
            name, _qtype, q_end = question(query)
        except DnsFormatError:
            return None
        verdict = self.verdict(name)
        if verdict == "deny":
            return refusal(query, q_end, RCODE_NXDOMAIN)
        resp = await self._forward(query, tcp=tcp)
        if resp is None or resp[:2] != query[:2]:
            return refusal(query, q_end, RCODE_SERVFAIL)
        if verdict == "allow":
            try:
                learned = a_records(resp)
            except DnsFormatError:
                return refusal(query, q_end, RCODE_SERVFAIL)
            if learned:
                await self.learn(learned)  # before the answer: the connection that follows finds it
        return resp

    async def _forward(self, query: bytes, *, tcp: bool) -> bytes | None:
        if self._own < OWN_FLOOR:
            self._own += 1
            try:
                return await self._ask(query, tcp=tcp)
            finally:
                self._own -= 1
        with self.budget.take(self.tenant) as ok:
            return await self._ask(query, tcp=tcp) if ok else None

    async def _ask(self, query: bytes, *, tcp: bool) -> bytes | None:
        for up in self.upstreams:
            try:
                async with asyncio.timeout(UPSTREAM_TIMEOUT_S):
                    return await (_ask_tcp(up, query) if tcp else _ask_udp(up, query))
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
                log.debug("event=dns_upstream_failed upstream=%s:%d error=%s", *up, e)
        return None

    # ------------------------------------------------------------------------------- UDP

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[0] != self.client_ip or self._inflight >= MAX_INFLIGHT or self._udp is None:
            return
        self._inflight += 1
        task = asyncio.create_task(self._udp_reply(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _udp_reply(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            resp = await self.answer(data, tcp=False)
            if resp is not None and self._udp is not None:
                self._udp.sendto(resp, addr)
        except Exception as e:
            log.warning("event=dns_error sandbox_ip=%s error=%s", self.client_ip, e)
        finally:
            self._inflight -= 1

    # ------------------------------------------------------------------------------- TCP

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not peer or peer[0] != self.client_ip or self._tcp_conns >= MAX_TCP:
            writer.close()
            return
        self._tcp_conns += 1
        self._tcp_writers.add(writer)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE_S):
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                    query = await reader.readexactly(size)
                resp = await self.answer(query, tcp=True)
                if resp is None:
                    break
                writer.write(struct.pack("!H", len(resp)) + resp)
                # A client that sends queries and never reads the answers: without a deadline
                # here the connection (and the answers in the agent's and the kernel's buffers)
                # stayed for good, even after its sandbox was gone.
                async with asyncio.timeout(TCP_IDLE_S):
                    await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            if writer.transport.get_write_buffer_size():
                _reset(writer)
        finally:
            self._tcp_conns -= 1
            self._tcp_writers.discard(writer)
            writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close at once, dropping what is buffered both in the agent and in the kernel (an RST):
    a plain close would wait for a client that does not read."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, proxy: DnsProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.proxy.on_datagram(data, addr)


async def _ask_udp(up: Upstream, query: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.connect(up)
        await loop.sock_sendall(s, query)
        while True:  # a stray datagram with another id is not the answer
            resp = await loop.sock_recv(s, MAX_UDP)
            if resp[:2] == query[:2]:
                return resp


async def _ask_tcp(up: Upstream, query: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*up)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        await writer.drain()
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        return await reader.readexactly(size)
    finally:
        writer.close()
