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

Which routes are read how is the app's ``Rules`` (the main API's: ``MAIN_API``; the E2B listener
has its own, cp/e2b/app.py; one ``BodyBudget`` per process serves both):

- ``BUFFER``: read whole here, as above.
- ``OWN``: the route reads its own body, neither charged nor timed here: a stream whose
  messages may be minutes apart (an E2B ``StreamInput``), which paces each message itself with
  this module's ``Pace``.
- ``Streamed(window)``: an upload the route streams (to a spool file, to a sandbox) under its own
  caps. It is never refused for its size here; while it is read it is charged ``window`` bytes
  (what it holds in memory at once: uvicorn stops reading a connection 64 KiB ahead of the app,
  a socket read is up to 256 KiB), so it counts in both budgets, and it is paced: the client's
  time waited for bytes may not pass ``WARREN_BODY_READ_TIMEOUT_S`` plus one second per
  ``WARREN_BODY_MIN_UPLOAD_RATE_KIB_S`` KiB received (408 past it), so an upload at any useful
  rate takes as long as it needs and a stalled or trickled one goes.
  The main API's file uploads (``/files/write``, ``/files/stream/write``) are ``Streamed(0)``:
  paced, and not charged (they authenticate before they read a byte, and what each holds is
  gRPC's flow-control window, so a client syncing many files at once is not refused).
- ``CAPPED``: the main API's signed upload URL, streamed through this middleware's upload cap
  (``WARREN_MAX_UPLOAD_BYTES``), paced as ``Streamed(0)``, not charged.

Until session 12 the file uploads and the signed upload were read unpaced: a client trickling
a byte a minute held its connection and the agent's file stream for ever.

An upload content type sent to a ``BUFFER`` route buys nothing: that route buffers what it gets.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from warren.config import Settings
from warren.cp.http_errors import error_response
from warren.cp.services.rate_limits import address_key, client_address

MiB = 1024 * 1024
KiB = 1024
RETRY_AFTER_S = 2
# A socket peer's key (an ``ipaddress`` parse, ~40 Python calls) once per peer, not per request
# with a body; keyed by peers only (never by the client's X-Forwarded-For, which would let one
# client fill it with whatever it sends).
_peer_key = functools.lru_cache(maxsize=4096)(address_key)


@dataclass(frozen=True)
class Streamed:
    """An upload the route streams, charged ``window`` bytes while it is read, and paced."""

    window: int


BUFFER: Literal["buffer"] = "buffer"
OWN: Literal["own"] = "own"
CAPPED: Literal["capped"] = "capped"
Handling = Literal["buffer", "own", "capped"] | Streamed
# How a route's body is read, from its path and its content type (lower case).
Rules = Callable[[str, str], Handling]
# An error answer in the app's shape: (status, code, message).
Answer = Callable[[int, str, str], Response]

_UPLOAD_TYPES = ("multipart/form-data", "application/octet-stream")
# Streaming uploads have no size limit (docs/spec.md §2.7), relayed, never buffered; the unary
# upload caps its file part itself (services/files.py), not the form around it (D18). Both
# authenticate before they read a byte: paced, not charged.
_FILE_SUFFIXES = ("/files/stream/write", "/files/write")
FILE_UPLOAD = Streamed(0)
# Template builds and imports: a JSON body or a multipart context/image spooled to disk under
# their own caps (api/templates.py); the form's fields (a spec of up to 256 KiB, a few more) are
# held while it is read: charged as one JSON body.
_TEMPLATE_SUFFIXES = ("/v1/templates", "/v1/templates/import")
# The one route that streams an upload through this middleware's upload cap: a signed upload URL.
_CAPPED_SUFFIXES = ("/files/signed/upload",)


def main_api_rules(json_cap: int) -> Rules:
    """The main API's routes (see the module)."""

    def rules(path: str, content_type: str) -> Handling:
        if path.endswith(_FILE_SUFFIXES):
            return FILE_UPLOAD
        if path.endswith(_TEMPLATE_SUFFIXES):
            return Streamed(json_cap)
        if content_type.startswith(_UPLOAD_TYPES) and path.endswith(_CAPPED_SUFFIXES):
            return CAPPED
        return BUFFER

    return rules


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


@dataclass
class Pace:
    """A streamed upload's clock: the time the client kept the app waiting for bytes may not
    pass ``base_s`` plus one second per ``rate`` bytes received (only time spent waiting for
    the client counts: an app slow to read does not use the client's allowance)."""

    base_s: float
    rate: float
    received: int = 0
    waited: float = 0.0

    async def receive(self, receive: Receive) -> Message:
        loop = asyncio.get_running_loop()
        left = self.base_s + self.received / self.rate - self.waited
        start = loop.time()
        try:
            async with asyncio.timeout(max(left, 0.0)):
                message = await receive()
        finally:
            self.waited += loop.time() - start
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
        return message


class BodyCapMiddleware:
    """Caps, charges and times request bodies before the app reads them (see the module)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        budget: BodyBudget | None = None,
        rules: Rules | None = None,
        json_cap: int | None = None,
        answer: Answer = error_response,
    ) -> None:
        self.app = app
        self.json_cap = json_cap or settings.max_json_body
        self.upload_cap = settings.max_upload_bytes
        self.read_timeout_s = settings.body_read_timeout_s
        self.min_upload_rate = settings.body_min_upload_rate_kib_s * KiB
        self.trusted_proxies = settings.trusted_proxies
        self.budget = budget or BodyBudget.from_settings(settings)
        self.rules = rules or main_api_rules(self.json_cap)
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        content_type, content_length = _content_headers(scope)
        handling = self.rules(scope["path"], content_type)
        if handling == OWN:
            await self.app(scope, receive, send)
        elif isinstance(handling, Streamed):
            await self._paced(scope, receive, send, handling.window, content_length)
        elif handling == CAPPED:
            if content_length is not None and content_length > self.upload_cap:
                await self._refuse(scope, receive, send, _too_large(self.upload_cap))
                return
            await self._paced(scope, _capped(receive, self.upload_cap), send, 0, content_length)
        else:
            await self._buffered(scope, receive, send, content_length)

    async def _buffered(self, scope: Scope, receive: Receive, send: Send, content_length: int | None) -> None:
        if content_length is not None and content_length > self.json_cap:
            await self._refuse(scope, receive, send, _too_large(self.json_cap))
            return
        charge = _Charge(self.budget, self._address(scope))
        try:
            try:
                if content_length is not None and not charge.take(content_length):
                    raise self._busy()
                async with asyncio.timeout(self.read_timeout_s):
                    body = await self._read(receive, charge, chunked=content_length is None)
            except TimeoutError:
                await self._refuse(scope, receive, send, self._late())
                return
            except _Refused as refused:
                await self._refuse(scope, receive, send, refused)
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

    async def _paced(
        self, scope: Scope, receive: Receive, send: Send, window: int, content_length: int | None
    ) -> None:
        """An upload the route streams: charged ``window`` (its declared length if smaller)
        until its last byte is read, and paced (see ``Pace``)."""
        charge = _Charge(self.budget, self._address(scope))
        if not charge.take(min(window, content_length) if content_length is not None else window):
            await self._refuse(scope, receive, send, self._busy())
            return
        pace = Pace(self.read_timeout_s, self.min_upload_rate)
        done = False

        async def paced_receive() -> Message:
            nonlocal done
            if done:  # the body is whole: later receives wait for the disconnect, untimed
                return await receive()
            try:
                message = await pace.receive(receive)
            except TimeoutError:
                charge.give_back()
                raise self._stalled() from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
                charge.give_back()
            return message

        try:
            await self._relay(scope, paced_receive, send)
        finally:
            charge.give_back()

    async def _relay(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Runs the app on a ``receive`` that may refuse the body (raise ``_Refused``). Then the
        refusal is the answer, unless the app's own had begun: whatever the app made of the
        error (a route that turns every failure into its own 500 or 400) is dropped."""
        refused: _Refused | None = None
        started = False

        async def refusing_receive() -> Message:
            nonlocal refused
            try:
                return await receive()
            except _Refused as r:
                refused = r
                raise

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused is not None and not started:
                return  # the app's answer to our refusal: ours goes instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, refusing_receive, tracking_send)
        except Exception:
            if refused is None:
                raise
        if refused is not None and not started:
            await self._refuse(scope, receive, send, refused)

    def _address(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = str(client[0]) if client else ""
        forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
        if not forwarded:  # the usual request: the peer's own key, parsed once per peer
            return _peer_key(peer)
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

    def _stalled(self) -> _Refused:
        return _Refused(
            408,
            "request_timeout",
            f"the upload stalled: it may keep the server waiting {self.read_timeout_s:g} s, plus one "
            f"second per {self.min_upload_rate // KiB} KiB received",
        )

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, refused: _Refused) -> None:
        """The error answer, and the connection closed: the rest of the body is never read."""
        resp = self.answer(refused.status, refused.code, str(refused))
        resp.headers["connection"] = "close"
        if refused.status == 503:
            resp.headers["Retry-After"] = str(RETRY_AFTER_S)
        await resp(scope, receive, send)


def _too_large(cap: int) -> _Refused:
    return _Refused(413, "too_large", f"request body exceeds {cap} bytes")


def _capped(receive: Receive, cap: int) -> Receive:
    """A receive that refuses the body once more than ``cap`` bytes of it have come."""
    seen = 0

    async def capped_receive() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > cap:
                raise _too_large(cap)
        return message

    return capped_receive


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


__all__ = [
    "BUFFER",
    "CAPPED",
    "FILE_UPLOAD",
    "OWN",
    "Answer",
    "BodyBudget",
    "BodyCapMiddleware",
    "Handling",
    "Pace",
    "Rules",
    "Streamed",
    "main_api_rules",
]
