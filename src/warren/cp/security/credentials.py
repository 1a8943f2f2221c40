"""What a request presents to prove who it is, read from the connection in one place.

Three doors carry credentials: REST requests (``X-API-Key`` or ``Authorization: Bearer``), the
exec WebSocket (the same headers, or the ``api_key`` / ``token`` query parameters, since browsers
cannot set WebSocket headers) and the dashboard (the user JWT inside its session cookie, read by
``warren.cp.dashboard.session``). Each door builds a :class:`Credentials`; the one check of them
is :func:`warren.cp.services.authn.authenticate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from warren.errors import Unauthorized


@dataclass(frozen=True)
class Credentials:
    api_key: str | None = None
    bearer: str | None = None  # the JWT itself, without "Bearer "
    # REST requests: their headers, to tell an Authorization header that carries no bearer token
    # (a bad token, refused when the JWT is what counts; an API key sent alongside wins on team
    # routes) from none. Read only in that case: an API-key read or a valid bearer token never
    # pays for a second header lookup.
    headers: Mapping[str, str] | None = field(default=None, compare=False, repr=False)

    def user_token(self) -> str | None:
        """The bearer JWT, or None when none was sent; a non-Bearer Authorization is a 401."""
        if self.bearer is None and self.headers is not None and self.headers.get("authorization"):
            raise Unauthorized("invalid or expired token")
        return self.bearer


def from_headers(api_key: str | None, bearer: str | None, headers: Mapping[str, str]) -> Credentials:
    """REST credentials. ``api_key`` and ``bearer`` are what FastAPI's ``APIKeyHeader`` and
    ``HTTPBearer`` (declared in ``cp/api/deps.py`` so OpenAPI lists both schemes) parsed from the
    headers; ``headers`` are the request's, to tell a wrong scheme from no header."""
    return Credentials(api_key=api_key, bearer=bearer, headers=headers)


def from_websocket(headers: Mapping[str, str], query: Mapping[str, str]) -> Credentials:
    """WebSocket credentials: headers first, else the ``api_key`` / ``token`` query parameters.
    A header that is not a Bearer token is ignored here (the query parameter may still carry one)."""
    auth = headers.get("authorization", "")
    bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    return Credentials(
        api_key=headers.get("x-api-key") or query.get("api_key"), bearer=bearer or query.get("token")
    )
