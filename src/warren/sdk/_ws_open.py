"""Opening the SDK's WebSockets (the exec stream, terminals, directory watches).

Two bounds a server cannot lift (session 37):

- **No redirect is followed.** websockets follows a handshake's redirect to any host and strips
  only ``Authorization`` and ``Cookie`` on the way, not ``X-API-Key``: a front that answered
  302 got the caller's key sent to wherever it pointed. Plain HTTP calls follow none (httpx's
  default), and neither do these now: the connection runs on a socket the SDK opened itself,
  which websockets will not re-point (a redirect then fails the open).
- **One message is at most** :data:`MAX_MESSAGE` **bytes.** The control plane sends output in
  frames of at most ~90 KiB (64 KiB reads, JSON-escaped); a larger message is refused (close
  1009) instead of buffered whole.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any
from urllib.parse import urlsplit

import websockets.asyncio.client
import websockets.sync.client

__all__ = ["MAX_MESSAGE", "open_async", "open_sync"]

MAX_MESSAGE = 8 << 20


def _target(uri: str) -> tuple[str, int, bool]:
    """(host, port, TLS) of a ``ws://`` or ``wss://`` URI."""
    parts = urlsplit(uri)
    secure = parts.scheme == "wss"
    if not parts.hostname:
        raise ValueError(f"no host in {uri!r}")
    return parts.hostname, parts.port or (443 if secure else 80), secure


def _options(headers: dict[str, str], open_timeout: float | None, host: str, secure: bool) -> dict[str, Any]:
    options: dict[str, Any] = {
        "additional_headers": headers,
        "open_timeout": open_timeout,
        "max_size": MAX_MESSAGE,
        "compression": None,
        "proxy": None,
    }
    if secure:  # the certificate is checked against the host the socket was opened to
        options["server_hostname"] = host
    return options


def _socket(host: str, port: int, open_timeout: float | None) -> socket.socket:
    """The TCP connection, blocking and without a timeout from here on (the handshake keeps
    ``open_timeout``; an idle stream must not time out)."""
    sock = socket.create_connection((host, port), timeout=open_timeout)
    sock.settimeout(None)
    return sock


def open_sync(uri: str, headers: dict[str, str], open_timeout: float | None) -> Any:
    """A ``websockets.sync`` connection to ``uri``, its lifetime the caller's (no ``with``)."""
    host, port, secure = _target(uri)
    sock = _socket(host, port, open_timeout)
    try:
        return websockets.sync.client.connect(
            uri,
            sock=sock,
            **_options(headers, open_timeout, host, secure),
            legacy=True,  # a plain connection whose lifetime the op manages (no `with`)
        )
    except BaseException:
        sock.close()
        raise


async def open_async(uri: str, headers: dict[str, str], open_timeout: float | None) -> Any:
    """A ``websockets.asyncio`` connection to ``uri``."""
    host, port, secure = _target(uri)
    sock = await asyncio.to_thread(_socket, host, port, open_timeout)
    sock.setblocking(False)
    try:
        return await websockets.asyncio.client.connect(
            uri, sock=sock, **_options(headers, open_timeout, host, secure)
        )
    except BaseException:
        sock.close()
        raise
