"""Bounds on the HTTP connections one server process holds (``warren cp``, ``warren proxy``).

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``) but puts no deadline on a
connection that has not finished its request head, and no bound on how many it holds: a client
that opens connections and sends half a request line, or nothing, kept each open (an fd, a
protocol, its parser) for as long as it liked, until the process ran out of file descriptors and
stopped accepting anyone. (``limit_concurrency`` answers 503 only once a head is whole, and counts
no connection that never sends one; ``h11_max_incomplete_event_size`` bounds the h11 parser's
head size, not the httptools one uvicorn picks, and never its time.)

``GuardedHttpToolsProtocol`` is uvicorn's httptools protocol with three bounds added (and a
response's head written with its body, ``warren.cp.http_writes``):

- **Head deadline**: a request head (request line and headers) must be whole within
  ``WARREN_HTTP_HEAD_TIMEOUT_S`` of the connection's opening, or of its first byte on a
  kept-alive connection; else the connection closes (408 if part of a head came).
- **Head size**: at most ``MAX_HEAD_BYTES`` before the head is whole (431 and closed).
- **The rest of an answered body**: a body the app answered without reading whole (an early
  401, or a 400 on an upload's first fields) is read and dropped, at most ``MAX_DRAIN_BYTES``
  of it and within the head deadline, and the connection then serves its next request. Past
  either bound it is closed without another answer. (Until session 26 those bytes counted as
  the next head's, so a refused 1 MiB upload was closed 431 after 64 KiB, with the client's
  unread answer reset by the close: an HTTP client that sends its whole body before it reads
  got a reset instead of the 400.)
- **Connections**: at most ``WARREN_HTTP_MAX_CONNECTIONS`` open in this process (HTTP and
  WebSocket, on every listening socket; bounded below the open-file limit so the process keeps
  fds for its database, agents and files) and ``WARREN_HTTP_MAX_CONNECTIONS_PER_ADDRESS`` per
  client address, HTTP and upgraded WebSockets together (an IPv6 client counts as its /64; a
  peer listed in ``WARREN_TRUSTED_PROXIES`` speaks for many clients and is not counted per
  address). The next one is answered 503 ``too_many_connections`` and closed as soon as it is
  accepted. An upgraded connection stays counted under its address until the WebSocket
  protocol that took it over loses it (until session 12 it left the count at its upgrade: one
  address held as many idle WebSockets as the process cap, preview WebSockets on public ports
  counted by no team, and every team of a user's each holding its own stream cap).

What a WebSocket's client makes the process read and hold is bounded in ``ws_guard``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from warren.config import Settings, get_settings
from warren.cp.http_writes import HeadHolder
from warren.cp.services.rate_limits import address_key, is_trusted_proxy

log = logging.getLogger("warren.connections")

MAX_HEAD_BYTES = 64 * 1024
MAX_DRAIN_BYTES = 32 * 1024 * 1024
# File descriptors kept for everything but client connections: the database pool, agent
# channels, spool and log files, the listening sockets.
FD_RESERVE = 512
RETRY_AFTER_S = 2
_WARN_EVERY_S = 60.0


@dataclass(frozen=True)
class ConnectionLimits:
    head_timeout_s: float
    max_connections: int
    max_per_address: int
    trusted_proxies: str

    @classmethod
    def from_settings(cls, s: Settings) -> ConnectionLimits:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        cap = s.http_max_connections
        if soft != resource.RLIM_INFINITY:
            cap = max(16, min(cap, soft - FD_RESERVE))
        return cls(s.http_head_timeout_s, cap, s.http_max_connections_per_address, s.trusted_proxies)


def raise_open_file_limit(settings: Settings) -> None:
    """Raise this process's soft open-file limit (inherited by its workers) to what
    ``WARREN_HTTP_MAX_CONNECTIONS`` needs, as far as the hard limit allows: a stock soft limit
    of 1024 would otherwise bound the connections well below the setting."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = settings.http_max_connections + FD_RESERVE
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


@functools.lru_cache(maxsize=65536)
def _counted_as(host: str, trusted_proxies: str) -> str | None:
    """The per-address key a peer's connections count under (None: a trusted proxy's, not
    counted); cached, since a client's every connection asks (a cache miss costs ~5 µs)."""
    return None if is_trusted_proxy(host, trusted_proxies) else address_key(host)


def _answer(status: str, code: str, message: str, *extra: bytes) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = [f"HTTP/1.1 {status}".encode(), b"content-type: application/json", *extra]
    head += [b"connection: close", f"content-length: {len(body)}".encode()]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the module's bounds (``http=`` in uvicorn's config)."""

    # The process's limits, from its settings at the first connection (each uvicorn worker
    # builds its own from the same environment); and the HTTP connections per client address.
    limits: ClassVar[ConnectionLimits | None] = None
    by_address: ClassVar[dict[str, int]] = {}
    _warned: ClassVar[float] = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._body_whole = True  # this cycle's request body has all come (or had none)
        self._drained = 0  # bytes of an answered request's body read since its answer
        self._address: str | None = None  # counted under this key while open
        self._refused = False
        self._holder: HeadHolder | None = None  # each cycle's transport: head and body in one write

    @classmethod
    def _limits(cls) -> ConnectionLimits:
        if cls.limits is None:
            cls.limits = ConnectionLimits.from_settings(get_settings())
        return cls.limits

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limits = self._limits()
        peer = transport.get_extra_info("peername")  # asyncio's, read at accept: no system call
        key = _counted_as(str(peer[0]), limits.trusted_proxies) if isinstance(peer, tuple) else None
        if len(self.connections) >= limits.max_connections:
            self._refuse(transport, f"this server holds {limits.max_connections} connections")
            return
        if key is not None and self.by_address.get(key, 0) >= limits.max_per_address:
            self._refuse(transport, f"this address holds {limits.max_per_address} connections")
            return
        if key is not None:
            self.by_address[key] = self.by_address.get(key, 0) + 1
            self._address = key
        super().connection_made(transport)
        self._holder = HeadHolder(transport, self.loop)
        self._arm()

    def on_headers_complete(self) -> None:
        self._body_whole = False
        self._drained = 0
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and self._holder is not None and cycle.transport is self.transport:
            cycle.transport = self._holder  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._body_whole = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._holder is not None:
            self._holder.flush()  # a HEAD answer's head: no body write follows it
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return  # never made: nothing of uvicorn's to undo
        self._disarm()
        self._uncount()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        """The WebSocket protocol takes the connection over: it stays counted under its address
        until that protocol loses it (the count is this protocol's to give back)."""
        super().handle_websocket_upgrade()
        self._disarm()
        ws = self.transport.get_protocol()
        if ws is self or self._address is None:
            return
        lost = ws.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            try:
                lost(exc)
            finally:
                self._uncount()

        ws.connection_lost = connection_lost  # type: ignore[method-assign]

    def data_received(self, data: bytes) -> None:
        # The rest of a body already answered (dropped by the parser) when this read began: the
        # read may end it and start the next head, whose bytes then count from the next read.
        draining = not self._body_whole and self._waiting_for_head()
        super().data_received(data)
        if self.transport.get_protocol() is not self:  # upgraded to a WebSocket
            self._disarm()
        elif not self._waiting_for_head():
            self._disarm()
            self._head_bytes = 0
        elif self.transport.is_closing():
            return
        elif draining:
            self._arm()
            self._drained += len(data)
            if self._drained > MAX_DRAIN_BYTES:
                self.transport.close()
        else:
            self._arm()  # bytes of a new head on a kept-alive connection (uvicorn's timer is off)
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._close_with(
                    _answer("431 Request Header Fields Too Large", "head_too_large",
                            f"more than {MAX_HEAD_BYTES} bytes came without a whole request head")
                )  # fmt: skip

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._limits().head_timeout_s, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _uncount(self) -> None:
        if self._address is not None:
            left = self.by_address.get(self._address, 0) - 1
            if left > 0:
                self.by_address[self._address] = left
            else:
                self.by_address.pop(self._address, None)  # only addresses holding connections
            self._address = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self._waiting_for_head() or self.transport.is_closing():
            return
        if not self._head_bytes:
            self.transport.close()  # nothing sent: nothing to answer
            return
        timeout = self._limits().head_timeout_s
        self._close_with(
            _answer(
                "408 Request Timeout",
                "request_timeout",
                f"the request head did not arrive within {timeout:g} s",
            )
        )

    def _close_with(self, answer: bytes) -> None:
        self._disarm()
        self.transport.write(answer)
        self.transport.close()

    def _refuse(self, transport: asyncio.Transport, why: str) -> None:
        self._refused = True
        cls = type(self)
        now = time.monotonic()
        if now - cls._warned >= _WARN_EVERY_S:
            cls._warned = now
            log.warning("refusing connections: %s (WARREN_HTTP_MAX_CONNECTIONS*)", why)
        transport.write(
            _answer("503 Service Unavailable", "too_many_connections", f"{why}; retry shortly",
                    f"retry-after: {RETRY_AFTER_S}".encode())
        )  # fmt: skip
        transport.close()


def http_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for a server with these bounds (and the open-file limit they need)."""
    raise_open_file_limit(settings)
    return {"http": GuardedHttpToolsProtocol}


__all__ = ["ConnectionLimits", "GuardedHttpToolsProtocol", "http_options", "raise_open_file_limit"]
