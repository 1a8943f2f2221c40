"""``WARREN_EGRESS_RANGES``: the operator's named private ranges, parsed and checked.

Settings-level parsing, apart from the egress rules in ``warren.cp.services.egress``, so that
``warren.config`` can refuse a bad value when the CP reads its settings without importing the
service layer.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# The agents install one rule per CIDR per sandbox and refuse more than this (agent/egress.py).
MAX_CIDRS = 64

Catalog = dict[str, tuple[str, ...]]


def ipv4_network(text: str) -> str:
    """``text`` as an IPv4 network in its normal form, host bits not set (an address is a /32);
    ValueError saying why not. An IPv6 one is refused: sandboxes have no IPv6. The one rule for
    the operator's ranges, a sandbox's own rules (egress_rules.py) and the agent's check of a
    create's ranges (agent/egress.py)."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise ValueError(f"{text[:64]!r} is not an IPv4 address or CIDR ({e})") from None
    if net.version != 4:
        raise ValueError(f"{net} is IPv6; sandboxes have no IPv6")
    return str(net)


@functools.lru_cache(maxsize=8)
def parse_ranges(text: str) -> Catalog:
    """``name=cidr[,cidr…][;name=…]`` → {name: CIDRs}; ValueError saying what is wrong."""
    catalog: Catalog = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, cidrs_text = part.partition("=")
        name = name.strip()
        if not sep or not NAME.match(name):
            raise ValueError(f"WARREN_EGRESS_RANGES: {part!r} is not name=cidr[,cidr] (names: a-z 0-9 _ -)")
        if name in catalog:
            raise ValueError(f"WARREN_EGRESS_RANGES: range {name!r} is defined twice")
        where = f"WARREN_EGRESS_RANGES: range {name!r}"
        cidrs: list[str] = []
        for item in filter(None, (c.strip() for c in cidrs_text.split(","))):
            try:
                cidrs.append(ipv4_network(item))
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        if not cidrs or len(cidrs) > MAX_CIDRS:
            raise ValueError(f"{where} needs 1 to {MAX_CIDRS} CIDRs")
        catalog[name] = tuple(dict.fromkeys(cidrs))
    return catalog


def _host_addresses(url: str | None) -> list[ipaddress.IPv4Address]:
    host = urlsplit(url).hostname if url else None
    if not host:
        return []  # a unix socket, or no URL
    try:
        infos = socket.getaddrinfo(host, None, family=socket.AF_INET)
    except OSError:
        return []  # unresolvable now: the agents' private-range deny still covers it
    return [ipaddress.IPv4Address(i[4][0]) for i in infos]


def check_platform_outside(catalog: Catalog, urls: Iterable[tuple[str, str | None]]) -> None:
    """ValueError if a range contains the address of one of ``(what, url)``: opening it for a
    team would open PostgreSQL or the CP to its sandboxes."""
    for what, url in urls:
        for addr in _host_addresses(url):
            for name, cidrs in catalog.items():
                for cidr in cidrs:
                    if addr in ipaddress.IPv4Network(cidr):
                        raise ValueError(
                            f"WARREN_EGRESS_RANGES: range {name!r} ({cidr}) contains {what}'s address "
                            f"{addr}: split the range around it"
                        )
