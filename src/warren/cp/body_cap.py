"""The request body cap, and the budget for the bodies the control plane buffers.

Every request body but an upload's is read whole before the app runs (FastAPI reads a route's
body before its dependencies, authentication among them): ``BodyCapMiddleware`` does that read
itself, bounded four ways:

- **Size**: at most ``WARREN_MAX_JSON_BODY``; a declared Content-Length over it is 413 at once, a
  chunked body is counted as it arrives.
- **Budget**: the bytes being buffered in this process at once, ``WARREN_BODY_BUDGET_MB`` in all
  and ``WARREN_BODY_BUDGET_PER_ADDRESS_MB`` per client address (the app's client-address rule,
  ``services/rate_limits.client_address`` with ``WARREN_TRUSTED_PROXIES``; an IPv6 client counts
  as its /64). A body is charged before it is read: its declared Content-Length at once, a
  chunked body chunk by chunk. Past either bound the answer is 503 ``server_busy`` with
  ``Retry-After`` and the connection closes; nothing waits, since a waiting request would hold
  its connection and its unread bytes anyway. The charge is returned however the request ends.
- **Time**: the whole body within ``WARREN_BODY_READ_TIMEOUT_S`` of the request's head (one
  deadline, not one per chunk, so a trickle cannot stretch it); past it, 408 and the bytes go.
- Without these, an anonymous client that sends all but the last byte of a 1 MiB body on each
  of N connections held N MiB of the CP for as long as it liked.

Uploads (multipart or octet-stream) to the routes that stream them are not buffered, so they
are neither charged nor timed: they are counted against ``WARREN_MAX_UPLOAD_BYTES`` as the
route reads them. An upload content type sent to any other route buys nothing: that route
buffers what it gets, so the body is treated like JSON.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from warren.config import Settings
from warren.cp.http_errors import error_response
from warren.cp.services.rate_limits import address_key, client_address

MiB = 1024 * 1024
RETRY_AFTER_S = 2

_UPLOAD_TYPES = ("multipart/form-data", "application/octet-stream")
# Routes that read their own bodies (the app's cap skips them): streaming uploads have no size
# limit (docs/spec.md §2.7), relayed, never buffered; the unary upload caps its file part itself
# (services/files.py), not the form around it (D18); template builds and imports cap their own
# uploads and JSON (api/templates.py). All of them authenticate before they read a byte.
_UNCAPPED_SUFFIXES = ("/files/stream/write", "/files/write", "/v1/templates", "/v1/templates/import")
# The one route that streams an upload through this middleware's upload cap: a signed upload URL.
_STREAMED_UPLOAD_SUFFIXES = ("/files/signed/upload",)


@dataclass
class BodyBudget:
    """Bytes of request bodies this process is buffering: in all, and per client address."""

    total: int
    per_address: int
    used: int = 0
    by_address: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, s: Settings) -> BodyBudget:
        return cls(s.body_budget_mb * MiB, s.body_budget_per_address_mb * MiB)

    def take(self, address: str, n: int) -> bool:
        """Charge ``n`` bytes to ``address``; False (and nothing charged) past either bound.
        A body larger than a bound fits when it is alone under it, so a bound set below
        ``WARREN_MAX_JSON_BODY`` slows such bodies down but never refuses them all."""
        mine = self.by_address.get(address, 0)
        if (self.used + n > self.total and self.used) or (mine + n > self.per_address and mine):
            return False
        self.used += n
        self.by_address[address] = mine + n
        return True

    def give_back(self, address: str, n: int) -> None:
        self.used = max(0, self.used - n)
        left = self.by_address.get(address, 0) - n
        if left > 0:
            self.by_address[address] = left
        else:
            self.by_address.pop(address, None)  # the map holds only addresses holding bytes


@dataclass
class _Charge:
    """What one request holds of the budget, so it can all be given back at its end."""

    budget: BodyBudget
    address: str
    held: int = 0

    def take(self, n: int) -> bool:
        if n <= 0:
            return True
        if not self.budget.take(self.address, n):
            return False
        self.held += n
        return True

    def give_back(self) -> None:
        self.budget.give_back(self.address, self.held)
        self.held = 0


class _Refused(Exception):
    """The body read ends with this error answer (status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class BodyCapMiddleware:
    """Caps, charges and times request bodies before the app reads them (see the module)."""

    def __init__(self, app: ASGIApp, *, settings: Settings, budget: BodyBudget | None = None) -> None:
        self.app = app
        self.json_cap = settings.max_json_body
        self.upload_cap = settings.max_upload_bytes
        self.read_timeout_s = settings.body_read_timeout_s
        self.trusted_proxies = settings.trusted_proxies
        self.budget = budget or BodyBudget.from_settings(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in ("GET", "HEAD", "OPTIONS")
            or scope["path"].endswith(_UNCAPPED_SUFFIXES)
        ):
            await self.app(scope, receive, send)
            return
        content_type, content_length = _content_headers(scope)
        if content_type.startswith(_UPLOAD_TYPES) and scope["path"].endswith(_STREAMED_UPLOAD_SUFFIXES):
            if content_length is not None and content_length > self.upload_cap:
                await _refuse(scope, receive, send, _too_large(self.upload_cap))
                return
            await self._streamed(scope, receive, send)
            return
        if content_length is not None and content_length > self.json_cap:
            await _refuse(scope, receive, send, _too_large(self.json_cap))
            return
        charge = _Charge(self.budget, self._address(scope))
        try:
            try:
                if content_length is not None and not charge.take(content_length):
                    raise self._busy()
                async with asyncio.timeout(self.read_timeout_s):
                    body = await self._read(receive, charge, chunked=content_length is None)
            except TimeoutError:
                await _refuse(scope, receive, send, self._late())
                return
            except _Refused as refused:
                await _refuse(scope, receive, send, refused)
                return
            if body is None:
                return  # the client went away
            await self.app(scope, _replay(body, receive), send)
        finally:
            charge.give_back()

    async def _read(self, receive: Receive, charge: _Charge, *, chunked: bool) -> bytes | None:
        """The whole body (None if the client went away); a chunked body is charged as it comes."""
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            if len(body) + len(chunk) > self.json_cap:
                raise _too_large(self.json_cap)
            if chunked and not charge.take(len(chunk)):
                raise self._busy()
            body += chunk
            more = bool(message.get("more_body", False))
        return bytes(body)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An upload the route streams: counted against the upload cap as the route reads it."""
        seen = 0
        response_started = False

        async def capped_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.upload_cap:
                    raise _too_large(self.upload_cap)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, capped_receive, tracking_send)
        except _Refused as refused:
            if not response_started:
                await _refuse(scope, receive, send, refused)

    def _address(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = str(client[0]) if client else ""
        forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
        return address_key(client_address(peer, forwarded, self.trusted_proxies))

    def _busy(self) -> _Refused:
        b = self.budget
        return _Refused(
            503,
            "server_busy",
            "this control plane is reading as much request body data as it may "
            f"({b.total // MiB} MiB in all, {b.per_address // MiB} MiB per client address); retry shortly",
        )

    def _late(self) -> _Refused:
        return _Refused(
            408, "request_timeout", f"the request body did not arrive within {self.read_timeout_s:g} s"
        )


def _too_large(cap: int) -> _Refused:
    return _Refused(413, "too_large", f"request body exceeds {cap} bytes")


def _content_headers(scope: Scope) -> tuple[str, int | None]:
    """The request's content type (lower case) and declared Content-Length (None if none)."""
    content_type = ""
    content_length: int | None = None
    for k, v in scope["headers"]:
        if k == b"content-type":
            content_type = v.decode("latin-1").lower()
        elif k == b"content-length":
            try:
                content_length = int(v)
            except ValueError:
                content_length = None
    return content_type, content_length


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the app the body read already, then whatever comes next."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(scope: Scope, receive: Receive, send: Send, refused: _Refused) -> None:
    """The error envelope, and the connection closed: the rest of the body is never read."""
    resp = error_response(refused.status, refused.code, str(refused))
    resp.headers["connection"] = "close"
    if refused.status == 503:
        resp.headers["Retry-After"] = str(RETRY_AFTER_S)
    await resp(scope, receive, send)


__all__ = ["BodyBudget", "BodyCapMiddleware"]
