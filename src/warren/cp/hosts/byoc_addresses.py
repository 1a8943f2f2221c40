"""Where the control plane may dial a BYOC host (docs/hosts.md, "A BYOC host's agent is its
tenant's"; docs/security.md).

A BYOC host's owner chooses the address the CP dials. Unchecked, every call the CP makes there
(the monitor's, a create's, the layer collector's) is a TLS ClientHello the tenant aims at
whatever the CP's network reaches: its database, its own admin ports, a cloud metadata service,
another host's agent. The operator's allow-list (``WARREN_BYOC_ALLOWED_CIDRS``) says which
addresses a BYOC host may have; by default public unicast addresses only. Platform hosts
(``regular``, created by admins) are not checked: they are the operator's own machines, on
private networks as often as not.

It is checked twice:

* at registration (:func:`resolve_checked`): a name is resolved there and then, every address
  it resolves to must be allowed, and the host's address is stored as the IP it was checked as
  (a name that later resolves elsewhere, DNS rebinding, changes nothing: it is never resolved
  again);
* at dial time (:class:`DialCheck`, before the first call of each agent channel): a BYOC host's
  stored address must be an allowed IP (rows from before the check, or an allow-list narrowed
  since, are refused: "failed to connect", as an unreachable host).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import ids
from warren.byoc_ranges import AddressPolicy, IPAddress, plain, policy_of
from warren.cp.db.engine import autocommit
from warren.cp.db.tables import hosts

log = logging.getLogger("warren.hosts")

# How long a name may take to resolve at registration (the owner's DNS server answers it).
RESOLVE_TIMEOUT_S = 5.0
# Resolutions run on threads of their own: an owner's DNS server that never answers holds a
# thread for the resolver's own timeout (glibc: 5 s a try, two tries a server), and a refused
# registration leaves its token unspent, so the attempts can be repeated; on the loop's default
# executor they would starve everything else that runs there (the template store's file work).
_RESOLVERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="byoc-resolve")
# Host kinds a process remembers (a host's type never changes): beyond, it starts over.
_MAX_KINDS = 65_536


class AddressRefused(ValueError):
    """The address is not one a BYOC host may have; the message says why."""


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (already checked by ``host_link.check_address``)."""
    if address.startswith("["):
        host, _, port = address[1:].partition("]:")
    else:
        host, _, port = address.rpartition(":")
    return host, int(port)


def literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _join(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _refuse(address: str, policy: AddressPolicy) -> AddressRefused:
    return AddressRefused(
        f"address {address!r} is not one a BYOC host may have: the platform allows "
        f"{policy.describe()} (WARREN_BYOC_ALLOWED_CIDRS)"
    )


def _refuse_name(address: str, policy: AddressPolicy, why: str) -> AddressRefused:
    """One answer whether the name does not resolve or resolves where it may not: what the CP's
    resolver knows of its own network (internal names, their addresses) stays in the log."""
    log.info("BYOC registration at %r refused: %s", address[:300], why)
    return AddressRefused(
        f"address {address!r}: the name does not resolve to addresses a BYOC host may have "
        f"(the platform allows {policy.describe()}, WARREN_BYOC_ALLOWED_CIDRS)"
    )


async def resolve_checked(address: str, policy: AddressPolicy) -> str:
    """The ``ip:port`` a BYOC host registered at ``address`` is dialled at: a name resolved now,
    each address it resolves to allowed (one that is not refuses the whole name: which one a
    dial would take is not ours to choose), the first of them. AddressRefused otherwise."""
    host, port = split_address(address)
    ip = literal_ip(host)
    if ip is not None:
        if not policy.allows(ip):
            raise _refuse(address, policy)
        return _join(plain(ip), port)
    loop = asyncio.get_running_loop()
    try:
        lookup = loop.run_in_executor(_RESOLVERS, socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        infos = await asyncio.wait_for(lookup, RESOLVE_TIMEOUT_S)
    except (OSError, TimeoutError) as e:
        raise _refuse_name(address, policy, f"no answer ({e!r})") from None
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        resolved = literal_ip(str(sockaddr[0]))  # a scoped "fe80::1%eth0" is no plain IP: refused
        if resolved is None or not policy.allows(resolved):
            raise _refuse_name(address, policy, f"resolves to {sockaddr[0]}")
        found.append(plain(resolved))
    if not found:
        raise _refuse_name(address, policy, "no addresses")
    return _join(found[0], port)


class DialCheck:
    """The client pool's check before a host's channel makes its first call: a BYOC host's
    address must be an IP the policy allows (registration stored it so; the channel dials that
    IP, so what is checked is what is dialled). Platform hosts pass. Kinds are read from the
    database once per host and process."""

    def __init__(self, engine: AsyncEngine, policy: AddressPolicy) -> None:
        self.engine = engine
        self.policy = policy
        self._byoc: dict[uuid.UUID, bool] = {}

    async def _is_byoc(self, host_uuid: uuid.UUID) -> bool:
        known = self._byoc.get(host_uuid)
        if known is not None:
            return known
        async with autocommit(self.engine) as conn:
            kind = (await conn.execute(sa.select(hosts.c.type).where(hosts.c.id == host_uuid))).scalar()
        byoc = kind != "regular"  # a host gone meanwhile is trusted no more than a BYOC one
        if kind is not None:
            if len(self._byoc) >= _MAX_KINDS:
                self._byoc.clear()
            self._byoc[host_uuid] = byoc
        return byoc

    async def allowed(self, host_uuid: uuid.UUID, address: str) -> bool:
        if not await self._is_byoc(host_uuid):
            return True
        try:
            host, _ = split_address(address)
        except ValueError:
            return False
        ip = literal_ip(host)
        if ip is None or not self.policy.allows(ip):
            log.warning(
                "not dialling BYOC host %s at %r: not an address the platform allows (%s)",
                ids.host_id(host_uuid), address[:300], self.policy.describe(),
            )  # fmt: skip
            return False
        return True


__all__ = ["AddressPolicy", "AddressRefused", "DialCheck", "policy_of", "resolve_checked"]
