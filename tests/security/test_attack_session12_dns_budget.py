"""Session 12: one tenant's sandboxes took every forwarding place of the agent's DNS resolvers.

The agent forwards at most 256 queries at once for all its sandboxes' resolvers together (each
holds a socket). A query the upstream never answers holds its place for the 2 s timeout, and a
sandbox may have 16 in flight: the resolvers of 17 sandboxes of one tenant, each sending such
queries (the host's resolver here drops a query that announces additional records it does not
carry), left every other sandbox's resolver none: their ordinary queries were answered SERVFAIL
at once. Fixed: each resolver keeps a floor of its own (``OWN_FLOOR``) beside the shared count.

Driven against the agent's real resolvers on loopback addresses rather than through the API: a
host takes at most 4 vCPUs a core (8 sandboxes here), which is fewer than the attack needs, and
a bigger host takes 17 sandboxes of one team with the default quota (20).
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from warren.agent.dns_proxy import MAX_INFLIGHT, Budget, DnsProxy

pytestmark = pytest.mark.root

NAME = b"\x07example\x03com\x00\x00\x01\x00\x01"
UPSTREAM = ("127.77.0.1", 5353)
# Enough to fill the shared count whatever floor each keeps (17 did before there was one);
# a team's default quota is 20 sandboxes.
ATTACKERS = 20


class _Upstream(asyncio.DatagramProtocol):
    """The host's resolver as seen here: NXDOMAIN for an ordinary query, nothing at all for one
    announcing additional records it does not carry."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if struct.unpack_from("!H", data, 10)[0] == 0:
            head = struct.pack("!HHHHHH", struct.unpack_from("!H", data)[0], 0x8183, 1, 0, 0, 0)
            self.t.sendto(head + data[12:], addr)  # type: ignore[attr-defined]


def _query(qid: int, additional: int) -> bytes:
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, additional) + NAME


async def _flood(client: str, server: str) -> None:
    """A sandbox's process: unanswerable queries to its resolver, as fast as it takes them."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((client, 0))
    s.setblocking(False)
    try:
        qid = 0
        while True:
            for _ in range(MAX_INFLIGHT):  # its resolver drops what is past its 16
                qid = (qid + 1) & 0xFFFF
                s.sendto(_query(qid, 4), (server, 53))
            await asyncio.sleep(0.2)  # each holds its place 2 s: enough to keep them all taken
    finally:
        s.close()


async def _ask(client: str, server: str) -> int:
    """One ordinary query from ``client``: the answer's rcode."""
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((client, 0))
    s.setblocking(False)
    try:
        await loop.sock_sendto(s, _query(0x7777, 0), (server, 53))
        async with asyncio.timeout(30):
            return (await loop.sock_recv(s, 512))[3] & 0xF
    finally:
        s.close()


async def _learn(_: list[tuple[str, int]]) -> None:
    pass


async def test_one_tenants_resolvers_leave_others_their_upstream() -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # it reads them all: none lost
    sock.bind(UPSTREAM)
    upstream, _ = await loop.create_datagram_endpoint(_Upstream, sock=sock)
    budget = Budget()
    ips = [(f"127.77.1.{i}", f"127.77.2.{i}") for i in range(1, ATTACKERS + 2)]
    proxies = [
        DnsProxy(ip, client, verdict=lambda _: "pass", learn=_learn, upstreams=[UPSTREAM], budget=budget)
        for ip, client in ips
    ]
    floods: list[asyncio.Task[None]] = []
    try:
        for p in proxies:
            await p.start()
        victim = proxies[-1]
        assert await _ask(victim.client_ip, victim.listen_ip) == 3  # the upstream's NXDOMAIN
        floods = [asyncio.create_task(_flood(p.client_ip, p.listen_ip)) for p in proxies[:-1]]
        async with asyncio.timeout(60):
            while budget.used < budget.limit:
                await asyncio.sleep(0.05)
        got = [await _ask(victim.client_ip, victim.listen_ip) for _ in range(5)]
        assert got == [3] * 5, f"the other sandbox's resolver was refused upstream (2: SERVFAIL): {got}"
    finally:
        for t in floods:
            t.cancel()
        await asyncio.gather(*floods, return_exceptions=True)
        for p in proxies:
            await p.close()
        upstream.close()
