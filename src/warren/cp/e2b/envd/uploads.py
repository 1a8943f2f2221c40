"""The file parts of an envd ``POST /files`` multipart body, one after another, as they arrive
(docs/e2b.md §3.2): each part named ``file`` is a file whose part filename is its target path.
A part's bytes are handed on as they come (never gathered); each file is capped, and so is the
number of files in one body."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator

from warren.cp.multipart import Event, FileData, FileStart, MultipartStream, PartEnd
from warren.errors import InvalidRequest, PayloadTooLarge

MAX_FILES = 100  # file parts in one upload (each is one write in the sandbox)


class FileParts:
    """``await next_file()`` gives the next file part's filename (None after the last); then
    ``data()`` its bytes, which must be read to the end before the next ``next_file()``."""

    def __init__(self, content_type: str, body: AsyncIterator[bytes], cap: int) -> None:
        self.parser = MultipartStream(content_type)
        self.source = body.__aiter__()
        self.cap = cap
        self.events: collections.deque[Event] = collections.deque()
        self.files = 0
        self.ended = False

    async def _next_event(self) -> Event | None:
        while not self.events:
            if self.ended:
                return None
            try:
                chunk = await self.source.__anext__()
            except StopAsyncIteration:
                self.ended = True
                if not self.parser.finished:
                    raise InvalidRequest("incomplete multipart body") from None
                return None
            self.events.extend(self.parser.feed(chunk))
        return self.events.popleft()

    async def next_file(self) -> str | None:
        while (ev := await self._next_event()) is not None:
            if isinstance(ev, FileStart) and ev.name == "file":
                self.files += 1
                if self.files > MAX_FILES:
                    raise PayloadTooLarge(f"at most {MAX_FILES} files in one upload")
                return ev.filename
        return None

    async def data(self) -> AsyncIterator[bytes]:
        size = 0
        while (ev := await self._next_event()) is not None:
            if isinstance(ev, FileData):
                size += len(ev.data)
                if size > self.cap:
                    raise PayloadTooLarge(f"a file of the upload is larger than {self.cap} bytes")
                yield ev.data
            elif isinstance(ev, PartEnd):
                return
        raise InvalidRequest("the upload ended before the file part was complete")
