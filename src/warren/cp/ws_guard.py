"""Bounds on what a WebSocket client makes one server process read and hold (``warren cp``,
``warren proxy``): ``GuardedWebSocketProtocol`` is uvicorn's sans-I/O WebSocket protocol (``ws=``
in uvicorn's config, ``cli/cp_settings.websocket_options``) with these added.

- **Answers the client does not read**: while the connection's writes are backed up (the
  transport's high-water mark), the client is not read. uvicorn wrote each ping's pong at once
  and read on while the app waited for a message: a client sending pings and reading nothing
  had every pong kept (session 28: +65 MiB of the CP after 73-94 MiB of pings, unbounded).
- **Frames that complete no message** (pings, pongs, small fragments): ``ws_pace``'s budget,
  then close 1008. Nothing else stops the reading of those (no message is whole for the app to
  take): a client's empty continuation frames grew the CP without bound (uvicorn keeps a
  message's fragments as a list until its last; +64 MiB after 36 MiB of them), its unsolicited
  pongs were read at line rate. A message's fragments are joined as they come.
- **After a WebSocket's close**: a client may send at most ``MAX_AFTER_CLOSE`` once the app has
  closed its WebSocket (the close reply it owes may come behind a message in flight); past it
  the connection is dropped. uvicorn reads on after a close, discarding, until the reply or 10 s:
  a client that never replied had the process read and parse at line rate for those 10 s
  (session 28: ~20 GiB and 7 CPU-s over one stream whose command exited).
- **A close the client does not read**: once the server has closed a WebSocket (the app's close,
  a 1008 here, uvicorn's 1011 keepalive or a protocol error's close, the reply to the client's
  close), the connection is aborted if it is still open ``close_timeout`` (uvicorn's, 10 s)
  later. uvicorn's ``transport.close()`` waits for the transport's buffered frames to drain: a
  client that read nothing once the kernels' buffers were full (a pong backlog, an unread
  stream) kept its connection (fd, protocol, its unsent frames, its count under its address)
  until it went (session 29: 16 of 16 exec streams closed 1008 or 1011 behind their unread
  output still held 90 s on, ~100-160 KiB unsent each; now gone 10 s after the close).

The size of one message is uvicorn's (``ws_max_size``, close 1009), the read-ahead one message
(``ws_max_queue``): see ``websocket_options``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode

from warren.cp.ws_pace import IDLE_REASON, IdleFramePace

__all__ = ["MAX_AFTER_CLOSE", "GuardedWebSocketProtocol"]

log = logging.getLogger("warren.connections")

# What a WebSocket's client may still send once the app has closed it: its close reply may come
# behind what it sent before it saw the close (a message in flight, 1 MiB at most by default).
MAX_AFTER_CLOSE = 1024 * 1024


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with the module's bounds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._after_close = 0
        self._held_for_writes = False  # reading paused while the client does not read
        self._idle = IdleFramePace()
        self._message: bytearray | None = None  # a fragmented message's payload so far
        self._deadline: asyncio.TimerHandle | None = None  # the abort of a close left unread

    # -- the server's close -------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    async def send(self, message: Any) -> None:
        try:
            await super().send(message)
        finally:
            self._closing()

    async def run_asgi(self) -> None:
        try:
            await super().run_asgi()
        finally:
            self._closing()

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self._closing()

    def shutdown(self) -> None:
        super().shutdown()
        self._closing()

    def _closing(self) -> None:
        """Once the server has closed (its close sent, or the transport closing), the abort
        ``close_timeout`` later, if the connection is still open then. Called after each of
        uvicorn's ways to close."""
        if self._deadline is not None or self.disconnected or self.transport is None:
            return
        if self.close_sent or self.transport.is_closing():
            self._deadline = self.loop.call_later(self.close_timeout, self._close_unread)

    def _close_unread(self) -> None:
        self._deadline = None
        if self.disconnected:
            return
        unsent = self.transport.get_write_buffer_size()
        if unsent or not self.transport.is_closing():  # (else its loss is already under way)
            log.info("event=websocket_dropped why=close_unread unsent=%d", unsent)
        self.transport.abort()

    # -- reading ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.close_sent:
            self._after_close += len(data)
            if self._after_close > MAX_AFTER_CLOSE:
                if not self.transport.is_closing():
                    log.info("event=websocket_dropped why=sent_past_close bytes=%d", self._after_close)
                self.transport.abort()
                return
        super().data_received(data)
        self._closing()  # a 1008 or a protocol error's close, the reply to the client's close
        if not self.writable.is_set() and not self._held_for_writes and not self.transport.is_closing():
            # The answers it owes (pongs) are backed up: read no more until they drain.
            self._held_for_writes = True
            self.transport.pause_reading()

    async def receive(self) -> Any:
        message = await super().receive()
        if self._held_for_writes and not self.transport.is_closing():
            self.transport.pause_reading()  # uvicorn resumed it for the app: still backed up
        return message

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._held_for_writes:
            self._held_for_writes = False
            if not self.read_paused and not self.transport.is_closing():
                self.transport.resume_reading()

    # -- frames that complete no message ------------------------------------------------------

    def handle_ping(self) -> None:
        if self._within_budget(_PING):
            super().handle_ping()

    def handle_pong(self, event: Frame) -> None:
        if self._within_budget(event):
            super().handle_pong(event)

    def handle_text(self, event: Frame) -> None:
        if self._within_budget(event):
            self._message = None if event.fin else bytearray(event.data)
            super().handle_text(event)

    def handle_bytes(self, event: Frame) -> None:
        if self._within_budget(event):
            self._message = None if event.fin else bytearray(event.data)
            super().handle_bytes(event)

    def handle_cont(self, event: Frame) -> None:
        if not self._within_budget(event) or self._message is None:
            return
        self._message += event.data  # joined as it comes (uvicorn keeps a list of the frames)
        self.frames = [bytes(self._message)] if event.fin else []
        if event.fin:
            self._message = None
            self.send_receive_event_to_app()

    def _within_budget(self, frame: Frame) -> bool:
        """Counts ``frame`` against the budget; past it, the connection is closed 1008 and
        False returned."""
        if self.close_sent or self._idle.take(frame):
            return True  # (closing: uvicorn's own handling, discarded or the close completed)
        log.info("event=websocket_closed why=idle_frames")
        self.conn.send_close(1008, IDLE_REASON)
        self.handle_parser_exception()  # the app's disconnect, the close written, the socket closed
        return False


_PING = Frame(Opcode.PING, b"")  # a ping as the budget counts it (uvicorn passes none on)
