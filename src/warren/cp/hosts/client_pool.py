"""Lazy, cached gRPC clients for host agents (docs/spec.md §4.3), always over mutual TLS.

Each client dials the host's ``address`` with the CP's client certificate and trusts only the
CP's CA. The TLS target name is overridden to the host's id (``host-…``), which the host's
server certificate carries as a DNS SAN: the normal hostname check then proves the peer holds
the certificate issued to *that* host, not merely some certificate from our CA.

A BYOC host's channel makes no call (and so no connection) before the pool's
:class:`~warren.cp.hosts.byoc_addresses.DialCheck` has found its address allowed; a refused one
fails every call as an unreachable host does ("failed to connect").

Every channel carries the interceptor of ``agent_client``: RPC failures come out as
:class:`warren.errors.AgentError` with the gRPC status name, so the one HTTP mapping
(NOT_FOUND → 404, INVALID_ARGUMENT → 400, FAILED_PRECONDITION → 409, else 502) applies
everywhere. Call sites use the typed stub: ``await client.stub.PauseSandbox(req, timeout=120)``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from sqlalchemy.engine import RowMapping

from warren import ids
from warren.cp.hosts.agent_client import Gate, agent_errors, refused
from warren.cp.hosts.byoc_addresses import DialCheck
from warren.cp.security.ca import CertificateAuthority
from warren.errors import AgentError, ServiceUnavailable
from warren.rpc import hostagent_pb2, hostagent_pb2_grpc, keepalive

if TYPE_CHECKING:
    from warren.rpc.hostagent_pb2_grpc import HostAgentAsyncStub  # a type in the .pyi only

log = logging.getLogger(__name__)

# Generous default deadline (one shared client with a 10-minute timeout) for the calls that
# take as long as the work (create, snapshot); callers pass a shorter one where they need it
# (the monitor's ListSandboxes, pings).
DEFAULT_TIMEOUT_S = 600.0
# What the CP sends (a WriteFile, a PutLayer chunk) and what it takes in one message. No agent
# answer needs more than a few MiB at once: output, files and layers come in chunks of at most
# 1 MiB, a guest frame is at most 4 MiB, a listing page ~1 MiB, a unary exec's output 16 MiB.
# gRPC refuses a larger message from its length prefix, before any of it is held: a BYOC host's
# agent (its tenant's) answering every call with 100 MiB had the CP hold each whole.
_MAX_SEND = 128 * 1024 * 1024
MAX_RECEIVE = 16 * 1024 * 1024


class HostClient:
    """One agent: a channel (errors mapped by its interceptor) plus the typed stub."""

    def __init__(
        self,
        host_id: str,
        address: str,
        channel: grpc.aio.Channel,
        generation: int,
        *,
        ca: CertificateAuthority | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.host_id = host_id
        self.address = address
        self.channel = channel
        self.generation = generation
        # The CP's CA (its client certificate): for the agent's dial data port (cp/proxy/data.py).
        self.ca = ca
        self._gate = gate
        self.stub: HostAgentAsyncStub = hostagent_pb2_grpc.HostAgentStub(channel)

    async def admit(self) -> None:
        """The pool's BYOC address check, for what dials the host outside this channel's
        interceptor (DialPort's own channel, cp/proxy/stream.py): raises ``refused``."""
        if self._gate is not None:
            await self._gate()

    async def destroy_best_effort(self, sandbox_id: str, *, why: str) -> None:
        """DestroySandbox for callers that go on whatever happens (clean-ups, host and team
        deletes, the monitor): NotFound means already gone; any other failure is logged."""
        try:
            await self.stub.DestroySandbox(
                hostagent_pb2.DestroySandboxRequest(sandbox_id=sandbox_id), timeout=60
            )
        except AgentError as e:
            if not e.is_not_found:
                log.warning("%s: destroy %s on %s failed: %s", why, sandbox_id, self.host_id, e)

    async def close(self) -> None:
        await self.channel.close(None)


def _gate(check: DialCheck, host_uuid: uuid.UUID, host_id: str, address: str) -> Gate:
    """The check of one channel: asked until it passes once (a host's kind and address are
    fixed for the channel's life), then never again."""
    passed = False

    async def gate() -> None:
        nonlocal passed
        if passed:
            return
        if not await check.allowed(host_uuid, address):
            raise refused(host_id)
        passed = True

    return gate


class HostClientPool:
    """``dial_check``: the BYOC address check (the CP's pool, ``warren proxy``'s); None only for
    tools and tests that dial agents they started themselves."""

    def __init__(self, ca: CertificateAuthority, dial_check: DialCheck | None = None) -> None:
        self._ca = ca
        self._dial_check = dial_check
        self._clients: dict[str, HostClient] = {}
        self._lock = threading.Lock()
        self._retired: list[HostClient] = []

    def _credentials(self) -> tuple[grpc.ChannelCredentials, int]:
        cert = self._ca.client_cert()  # renews itself when half its life is gone
        creds = grpc.ssl_channel_credentials(
            root_certificates=self._ca.cert_pem.encode(),
            private_key=cert.key_pem.encode(),
            certificate_chain=cert.cert_pem.encode(),
        )
        return creds, self._ca.client_generation

    def _connect(self, host_uuid: uuid.UUID, host_id: str, address: str) -> HostClient:
        creds, generation = self._credentials()
        check = self._dial_check
        gate = _gate(check, host_uuid, host_id, address) if check is not None else None
        channel = grpc.aio.secure_channel(
            address,
            creds,
            options=[
                ("grpc.ssl_target_name_override", host_id),
                ("grpc.default_authority", host_id),
                ("grpc.max_receive_message_length", MAX_RECEIVE),
                ("grpc.max_send_message_length", _MAX_SEND),
                # A host back from an outage should be reachable on the next monitor pass, not
                # after gRPC's default reconnect backoff (up to 120 s).
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 5_000),
                # Pings every agent, idle or not: a vanished agent is noticed in seconds, not
                # when TCP gives up (warren/rpc/keepalive.py).
                *keepalive.CLIENT_OPTIONS,
            ],
            interceptors=agent_errors(host_id, gate),
        )
        return HostClient(host_id, address, channel, generation, ca=self._ca, gate=gate)

    def _fresh(self, c: HostClient | None, address: str) -> bool:
        if c is None or c.address != address:
            return False
        self._ca.client_cert()  # may renew, bumping the generation
        return c.generation == self._ca.client_generation

    def get(self, host: RowMapping | Mapping[str, Any]) -> HostClient:
        """The client for a host row (``id`` UUID, ``address``). No address → 503."""
        return self.get_for(host["id"], host["address"])

    def get_for(self, host_uuid: uuid.UUID, address: str) -> HostClient:
        if not address:
            raise ServiceUnavailable("sandbox host is not reachable", code="host_unavailable")
        hid = ids.host_id(host_uuid)
        c = self._clients.get(hid)
        if self._fresh(c, address):
            assert c is not None
            return c
        with self._lock:
            c = self._clients.get(hid)
            if self._fresh(c, address):
                assert c is not None
                return c
            if c is not None:
                # In-flight calls on the old channel finish; it is closed with the pool.
                self._retired.append(c)
            c = self._clients[hid] = self._connect(host_uuid, hid, address)
            return c

    async def evict(self, host_uuid: uuid.UUID) -> None:
        with self._lock:
            c = self._clients.pop(ids.host_id(host_uuid), None)
        if c is not None:
            await c.close()

    async def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values()) + self._retired
            self._clients.clear()
            self._retired.clear()
        for c in clients:
            with contextlib.suppress(Exception):
                await c.close()
