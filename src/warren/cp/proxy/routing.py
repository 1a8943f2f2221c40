"""Which sandbox port a request is for: by path ``/v1/sandboxes/{id}/ports/{port}/{rest}``, or by
host name ``{port}-{sandbox_id}.{preview_domain}``; and the headers a proxy must not forward."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATH = re.compile(r"^/v1/sandboxes/(sb-[0-9a-z]{1,40})/ports/([0-9]{1,5})(/.*)?$")
_HOST_LABEL = re.compile(r"^([0-9]{1,5})-(sb-[0-9a-z]{1,40})$")

# Hop-by-hop headers (RFC 9110, section 7.6.1), plus what the proxy sets itself.
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
        b"te", b"trailer", b"transfer-encoding", b"upgrade",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Route:
    sandbox_id: str
    port: int
    path: str  # what the sandbox's server sees, from "/"
    prefix: str  # the part of the client's path before it ("" for host routing)
    by_host: bool


def route(path: str, host: str, preview_domain: str, *, by_path: bool = True) -> Route | None:
    """The port a request is for, or None (not a proxied request)."""
    if preview_domain and host:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        suffix = "." + preview_domain.lower().strip(".")
        name = name.lower()
        if name.endswith(suffix):
            m = _HOST_LABEL.match(name[: -len(suffix)])
            if m is not None and 1 <= int(m.group(1)) <= 65535:
                return Route(m.group(2), int(m.group(1)), path or "/", "", by_host=True)
    if by_path and path.startswith("/v1/sandboxes/"):
        m = _PATH.match(path)
        if m is not None and 1 <= int(m.group(2)) <= 65535:  # no such port: not a proxied request
            prefix = path[: m.start(3)] if m.group(3) else path
            return Route(m.group(1), int(m.group(2)), m.group(3) or "/", prefix, by_host=False)
    return None


def hop_by_hop(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The hop-by-hop header names, the ones ``Connection`` lists included (lower case)."""
    listed = [
        t.strip().lower()
        for k, v in headers
        if k.lower() == b"connection"
        for t in v.split(b",")
        if t.strip()
    ]
    return HOP_BY_HOP | frozenset(listed) if listed else HOP_BY_HOP
