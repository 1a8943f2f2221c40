"""Each host's narrow-window gRPC channel: the CP's streams whose peer may not read.

A host's shared channel (``client_pool``) runs gRPC's bandwidth probes, which grow every
stream's receive window to MiBs: what a client of a stream did not read waited in the CP
(session 16: 48 unread previews held +245 MiB; session 23: 32 unread watches +128 MiB). DialPort
relays (cp/proxy/stream.py) and streamed directory watches (services/watch.py) go over a channel
of their own per host instead, probes off: a stream's window stays at :data:`WINDOW`. The price
is a connection's rate, at most ``WINDOW`` per round trip to the agent.

A channel is replaced when the CP's client certificate is renewed (every 12 h) or the host's
address changes. Calls already open on the old one go on until they end, or until the old
certificate expires (:func:`_grace`): a watch or a preview's WebSocket lives as long as its
client keeps it, not 600 s past a renewal (before session 24).

Calls on it skip the client interceptor (:func:`uninterposed`): their callers map errors with
the same ``agent_client.translate``, ask ``HostClient.admit`` (the BYOC address check) first,
and send :func:`request_metadata` (the request id the interceptor would add, for the agent's log).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import grpc
import grpc.aio

from warren import clock
from warren.cp.hosts.client_pool import HostClient
from warren.request_context import GRPC_METADATA_KEY, request_id
from warren.rpc import keepalive

WINDOW = 64 << 10  # a stream's receive window in gRPC
MAX_MESSAGE = (1 << 20) + 1024  # the contract's largest message (a 1 MiB chunk and its frame)

MIN_GRACE_S = 600.0  # what an old channel's calls get at least (a certificate about to expire)
# Per host id: (address, certificate generation, the event loop, the channel, its certificate's
# expiry). A channel is its loop's (the tests' in-process CPs each run on a loop of their own).
_channels: dict[str, tuple[str, int, asyncio.AbstractEventLoop, grpc.aio.Channel, datetime]] = {}
_OPTIONS = [
    # The window stays what it starts at: no bandwidth probes (every stream's window grows
    # with them), and that start is WINDOW (gRPC's default is 64 KiB; said, not assumed).
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", WINDOW),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    *keepalive.CLIENT_OPTIONS,
]


def dial_channel(client: HostClient) -> grpc.aio.Channel:
    """The host's narrow channel: mutual TLS as its shared channel (the CP's client
    certificate, the host's checked against its ``host-…`` name), its own HTTP/2 connection.
    A client without the CA (tests' plain channels) keeps its own channel."""
    ca = client.ca
    if ca is None:
        return client.channel
    got, loop = _channels.get(client.host_id), asyncio.get_running_loop()
    if got is not None and got[:3] == (client.address, client.generation, loop):
        return got[3]
    cert = ca.client_cert()
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.encode(),
        private_key=cert.key_pem.encode(),
        certificate_chain=cert.cert_pem.encode(),
    )
    options = [("grpc.ssl_target_name_override", client.host_id), ("grpc.default_authority", client.host_id)]
    channel = grpc.aio.secure_channel(client.address, creds, options=[*options, *_OPTIONS])
    if got is not None and got[2] is loop:  # an address or a certificate renewed: its calls go on
        _retire(got[3], _grace(got[4]))
    _channels[client.host_id] = (client.address, client.generation, loop, channel, cert.expires_at)
    return channel


def _grace(expires_at: datetime) -> float:
    """How long a replaced channel's calls may go on: until a minute before its certificate
    expires (a renewal leaves it ~12 h), at least :data:`MIN_GRACE_S`. The channel closes as
    soon as its last call ends."""
    return max(MIN_GRACE_S, (expires_at - clock.now()).total_seconds() - 60)


_retiring: set[asyncio.Task[None]] = set()


def _retire(channel: grpc.aio.Channel, grace: float) -> None:
    task = asyncio.get_running_loop().create_task(channel.close(grace=grace))
    _retiring.add(task)
    task.add_done_callback(_retiring.discard)


async def close_channels() -> None:
    """Every narrow channel of this process (it is closing)."""
    loop = asyncio.get_running_loop()
    channels = [c for _, _, lp, c, _ in _channels.values() if lp is loop]
    _channels.clear()
    for c in channels:
        await c.close(None)


def uninterposed(multicallable: Any) -> Any:
    """``multicallable`` without its channel's interceptors (a plain test channel has them):
    grpc.aio relays every message of an intercepted stream through extra tasks and generators."""
    multicallable._interceptors = None  # (grpc.aio has no public opt-out)
    return multicallable


def request_metadata(*pairs: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    """``pairs`` plus the current request's id (when there is one): the metadata the client
    interceptor adds to a call, for a call that skips it."""
    rid = request_id.get()
    return (*pairs, (GRPC_METADATA_KEY, rid)) if rid is not None else pairs
