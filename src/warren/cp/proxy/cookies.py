"""Cookies across the preview proxy (docs/networking.md §3).

The platform's own cookies are all named ``warren_…`` (the dashboard's session, which carries
the user's JWT; the OAuth state; the preview cookie). A path-routed preview is served from the
control plane's origin, so a browser sends all of them with every request to a sandbox's port:
they must never reach the sandbox's server. The other way round, a path-routed sandbox's
``Set-Cookie`` is stored for that same origin: it may not name a platform cookie (a planted
session signs the victim's dashboard in as the tenant), and its ``Path`` is confined to the
sandbox's port (``Path=/`` reached the dashboard and every other tenant's preview), its
``Domain`` removed. A host-routed sandbox's cookies lose their ``Domain`` too: ``Domain=<the
preview domain>`` would reach every other sandbox's preview host (unless that domain is on the
public suffix list, which the platform cannot see to).
"""

from __future__ import annotations

PLATFORM_PREFIX = b"warren_"


def _name(pair: bytes) -> bytes:
    return pair.split(b"=", 1)[0].strip().lower()


def without_platform_cookies(value: bytes) -> bytes:
    """A ``Cookie`` header without the platform's cookies (names compared case-insensitively)."""
    kept = [p.strip() for p in value.split(b";") if p.strip() and not _name(p).startswith(PLATFORM_PREFIX)]
    return b"; ".join(kept)


def confined_set_cookie(value: bytes, prefix: str) -> bytes | None:
    """A path-routed sandbox's ``Set-Cookie`` as the browser may store it, or None to drop it:
    no platform cookie name, no ``Domain``, a ``Path`` at or under ``prefix``."""
    first, *attributes = value.split(b";")
    if not first.strip():
        return None
    if _name(first).startswith(PLATFORM_PREFIX) or _name(first).startswith((b"__host-", b"__secure-")):
        return None  # __Host- and __Secure- need attributes this rewrite does not keep
    base = prefix.encode("utf-8", "surrogateescape")
    path = base
    kept = [first.strip()]
    for attribute in attributes:
        key, _, val = attribute.strip().partition(b"=")
        key = key.strip().lower()
        if key == b"domain":
            continue
        if key == b"path":
            val = val.strip()
            if val == base or val.startswith(base + b"/"):
                path = val
            continue
        if attribute.strip():
            kept.append(attribute.strip())
    kept.append(b"Path=" + path)
    return b"; ".join(kept)


def host_only_set_cookie(value: bytes) -> bytes:
    """A host-routed sandbox's ``Set-Cookie`` without ``Domain``: its own preview host only."""
    first, *attributes = value.split(b";")
    kept = [first.strip()]
    kept += [
        a.strip()
        for a in attributes
        if a.strip() and a.strip().partition(b"=")[0].strip().lower() != b"domain"
    ]
    return b"; ".join(kept)
