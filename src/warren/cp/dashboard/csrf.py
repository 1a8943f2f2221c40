"""CSRF protection for every state-changing dashboard request.

Two independent checks, both required for any method other than GET/HEAD/OPTIONS:

1. **Origin**: the ``Origin`` header (or, when a browser leaves it out, the ``Referer``) must be
   the control plane's own origin. A request that carries neither is refused. The CP's origin is
   the one the browser used (scheme from the connection or ``X-Forwarded-Proto``, plus the
   ``Host`` header) or the configured public URL.
2. **Synchronizer token**: the session's CSRF token must come back in the ``X-CSRF-Token``
   header (fetch calls) or the ``csrf_token`` form field (plain forms), compared in constant
   time.

The session cookie is also ``SameSite=Lax``, but that alone is not enough: another port on the
same host is "same-site" and would get the cookie on a form post.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection, Request

from warren.cp.dashboard.session import Session, is_https

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HEADER = "x-csrf-token"
FORM_FIELD = "csrf_token"

_DEFAULT_PORTS = {"http": 80, "https": 443}


class CsrfError(Exception):
    """The request failed a CSRF check; the message says which (for logs and the 403 page)."""


def normalize_origin(url: str) -> str | None:
    """``scheme://host[:port]`` in lower case, default ports dropped; None if not an origin."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def own_origins(request: HTTPConnection, public_url: str = "") -> set[str]:
    """The origins this control plane answers as: the one in use, and the configured one."""
    out: set[str] = set()
    host = request.headers.get("host")
    if host:
        scheme = "https" if is_https(request) else "http"
        if (o := normalize_origin(f"{scheme}://{host}")) is not None:
            out.add(o)
    if public_url and (o := normalize_origin(public_url)) is not None:
        out.add(o)
    return out


def check_origin(request: Request, public_url: str = "") -> None:
    allowed = own_origins(request, public_url)
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        if normalize_origin(origin) not in allowed:
            raise CsrfError("cross-origin request refused")
        return
    if origin == "null":
        raise CsrfError("cross-origin request refused")
    referer = request.headers.get("referer")
    if not referer:
        raise CsrfError("missing Origin and Referer")
    if normalize_origin(referer) not in allowed:
        raise CsrfError("cross-origin request refused")


def tokens_match(expected: str, presented: str | None) -> bool:
    if not presented or not expected:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8"))


async def verify(request: Request, session: Session | None, public_url: str = "") -> None:
    """Raise :class:`CsrfError` unless this unsafe request passes both checks."""
    if request.method in SAFE_METHODS:
        return
    check_origin(request, public_url)
    if session is None:
        raise CsrfError("no session")
    presented = request.headers.get(HEADER)
    if presented is None:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get(FORM_FIELD)
            presented = value if isinstance(value, str) else None
    if not tokens_match(session.csrf, presented):
        raise CsrfError("missing or wrong CSRF token")
