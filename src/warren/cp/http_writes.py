"""One write per small HTTP response instead of two (issue 17, a cheaper request).

uvicorn's httptools protocol writes a response's head when the app sends
``http.response.start`` and its body at ``http.response.body``: two ``transport.write`` calls,
so two ``send`` system calls and two TCP segments for every answer (the client reads twice). A
:class:`HeadHolder` stands in for the connection's transport in each request's cycle and holds
a head that announces a ``content-length`` until the next write, which then goes out with it
as one: Starlette's ``Response`` sends its body right after its head. The head never waits
longer than the current turn of the event loop (a ``call_soon`` flush), nor past the response's
end (a HEAD answer has no body write), nor past ``close``: bytes and their order are unchanged,
only how they are split between writes. A chunked head (a stream, whose first chunk may take
seconds) is written at once, as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

_HEAD_START = b"HTTP/1.1 "
_HEAD_END = b"\r\n\r\n"
_LENGTH = b"\r\ncontent-length: "  # uvicorn writes header names lower-case


class HeadHolder:
    """The transport as a request cycle sees it: ``write`` may hold a response head for the
    write that follows it; everything else is the transport's own."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(_HEAD_START) and data.endswith(_HEAD_END) and _LENGTH in data:
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Write a held head now (a no-op when none is held)."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
