"""Which addresses a BYOC host may have: the operator's allow-list, ``WARREN_BYOC_ALLOWED_CIDRS``
(docs/hosts.md). Standard library only: the settings check it when they load, the control
plane (``cp/hosts/byoc_addresses.py``) when a host registers and before it dials one."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PUBLIC = "public"
# IPv6 prefixes that carry an IPv4 address a gateway may unwrap (NAT64, 6to4): "public" by
# Python's tables, but they can lead to any IPv4 address, private ones included.
_CARRY_IPV4 = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16"))


def plain(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) is the IPv4 address it maps."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def public_unicast(ip: IPAddress) -> bool:
    """Globally routable and one machine: no loopback, link-local, private (RFC 1918, ULA),
    CGNAT, documentation, reserved, multicast or unspecified address."""
    ip = plain(ip)
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and any(ip in n for n in _CARRY_IPV4):
        return False
    return ip.is_global and not ip.is_private and not ip.is_reserved


@dataclass(frozen=True)
class AddressPolicy:
    """The operator's allow-list: ``public`` (public unicast addresses) and/or CIDRs."""

    public: bool
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, value: str) -> AddressPolicy:
        """``"public"`` (the default), ``"10.20.0.0/16,2001:db8::/32"``, or both
        (``"public,10.20.0.0/16"``). ValueError names an item that is neither."""
        items = [i.strip() for i in value.split(",") if i.strip()]
        if not items:
            raise ValueError("WARREN_BYOC_ALLOWED_CIDRS is empty: say 'public' or list CIDRs")
        nets: list[IPNetwork] = []
        for item in items:
            if item.lower() != PUBLIC:
                nets.append(ipaddress.ip_network(item, strict=False))
        return cls(public=any(i.lower() == PUBLIC for i in items), networks=tuple(nets))

    def allows(self, ip: IPAddress) -> bool:
        ip = plain(ip)
        if self.public and public_unicast(ip):
            return True
        return any(ip.version == n.version and ip in n for n in self.networks)

    def describe(self) -> str:
        parts = (["public unicast addresses"] if self.public else []) + [str(n) for n in self.networks]
        return ", ".join(parts)


@functools.lru_cache(maxsize=8)
def policy_of(value: str) -> AddressPolicy:
    """The policy of a ``WARREN_BYOC_ALLOWED_CIDRS`` value (parsed once)."""
    return AddressPolicy.parse(value)


__all__ = ["PUBLIC", "AddressPolicy", "IPAddress", "IPNetwork", "plain", "policy_of", "public_unicast"]
