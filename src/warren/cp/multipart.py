"""Upload forms (multipart/form-data) read from a request body as it arrives: the HTTP framing
of the file routes, so the files service sees only a path and the file's bytes.

Parsing is incremental (python-multipart's push parser fed from the request stream): a file
part's bytes are handed on as they arrive, never gathered, so memory stays flat however big
the file is. The form rules live here too: which fields an upload has, in which order, and how
much framing a unary upload may carry around its file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header

from warren.errors import InvalidRequest, PayloadTooLarge

# Text fields of an upload form are tiny; anything bigger is not a path.
MAX_FIELD_BYTES = 4096
# What a unary upload's body may carry besides its file: the other fields and the multipart
# framing (the file's own cap is the service's, D18).
MAX_ENVELOPE_BYTES = 1024 * 1024


@dataclass
class Field_:
    name: str
    value: str


@dataclass
class FileStart:
    name: str
    filename: str = ""  # the part's filename (E2B's /files names the target path there)


@dataclass
class FileData:
    data: bytes


@dataclass
class PartEnd:
    pass


Event = Field_ | FileStart | FileData | PartEnd


def boundary_of(content_type: str) -> bytes:
    ctype, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise InvalidRequest("expected multipart/form-data with boundary")
    return boundary


class MultipartStream:
    """Incremental multipart/form-data parsing: feed body chunks, take events out.

    Text parts become one :class:`Field_` (capped at ``MAX_FIELD_BYTES``); a part with a filename
    (or named ``file``) becomes ``FileStart``, ``FileData``… and ``PartEnd`` — its bytes are never
    gathered, so memory stays flat however big the file is.
    """

    def __init__(self, content_type: str, max_field_bytes: int = MAX_FIELD_BYTES) -> None:
        self.max_field_bytes = max_field_bytes  # a template build's spec field is larger
        self._events: list[Event] = []
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._is_file = False
        self._field = bytearray()
        self.finished = False
        self._parser = MultipartParser(
            boundary_of(content_type),
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    def feed(self, chunk: bytes) -> list[Event]:
        try:
            self._parser.write(chunk)
        except InvalidRequest:
            raise
        except Exception as e:  # python-multipart raises its own parse errors
            raise InvalidRequest(f"invalid multipart body: {e}") from e
        events, self._events = self._events, []
        return events

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._name = ""
        self._is_file = False
        self._field = bytearray()

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = b"filename" in params or self._name == "file"
        if self._is_file:
            filename = params.get(b"filename", b"").decode("utf-8", "replace")
            self._events.append(FileStart(self._name, filename))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            if end > start:
                self._events.append(FileData(bytes(data[start:end])))
            return
        if len(self._field) + (end - start) > self.max_field_bytes:
            raise InvalidRequest(f"form field {self._name!r} is too long")
        self._field.extend(data[start:end])

    def _on_part_end(self) -> None:
        if self._is_file:
            self._events.append(PartEnd())
        else:
            self._events.append(Field_(self._name, self._field.decode("utf-8", "replace")))

    def _on_end(self) -> None:
        self.finished = True


# ----------------------------------------------------------------------------- stream upload


async def stream_form(content_type: str, body: AsyncIterator[bytes]) -> tuple[str, AsyncIterator[bytes]]:
    """A streaming upload's path and file bytes: ``path`` must come before ``file`` (docs/design.md §4),
    so the file can flow on as it arrives. The bytes raise 400 when the body ends before the
    file part does."""
    parser = MultipartStream(content_type)
    path: str | None = None
    pending: list[Event] = []
    async for chunk in body:
        for i, ev in enumerate(events := parser.feed(chunk)):
            if isinstance(ev, Field_) and ev.name == "path":
                path = ev.value
            elif isinstance(ev, FileStart):
                if ev.name != "file":
                    raise InvalidRequest(f"unexpected file part {ev.name!r}; the file field is 'file'")
                if path is None:
                    raise InvalidRequest("the 'path' field must come before the 'file' part")
                pending = events[i + 1 :]
                break
        else:
            continue
        break
    else:
        if path is None:
            raise InvalidRequest("path is required")
        raise InvalidRequest("file is required")
    if not path:
        raise InvalidRequest("path is required")
    return path, _stream_file_bytes(parser, body, pending)


async def _stream_file_bytes(
    parser: MultipartStream, body: AsyncIterator[bytes], pending: list[Event]
) -> AsyncIterator[bytes]:
    events = pending
    ended = False
    source = body.__aiter__()
    while True:
        for ev in events:
            if isinstance(ev, FileData):
                if not ended:
                    yield ev.data
            elif isinstance(ev, PartEnd):
                ended = True
        if parser.finished:
            break
        try:
            chunk = await source.__anext__()
        except StopAsyncIteration:
            break
        events = parser.feed(chunk)
    if not ended:
        raise InvalidRequest("the upload ended before the file part was complete")


# ------------------------------------------------------------------------------ unary upload


class UnaryForm:
    """The parts of a unary upload as they arrive: fields before the file are taken, the
    file's bytes are handed out once, counted against the cap, and the rest is read to the end
    (a ``path`` after the file included)."""

    def __init__(self, content_type: str, body: AsyncIterator[bytes], cap: int) -> None:
        self.parser, self.source, self.cap = MultipartStream(content_type), body.__aiter__(), cap
        self.path: str | None = None
        self.pending: list[Event] = []
        self.have_file = False
        self.received = 0

    async def _feed(self) -> list[Event] | None:
        try:
            chunk = await self.source.__anext__()
        except StopAsyncIteration:
            return None
        self.received += len(chunk)
        if self.received > self.cap + MAX_ENVELOPE_BYTES:
            raise PayloadTooLarge(f"upload is larger than {self.cap} bytes; use the stream upload")
        return self.parser.feed(chunk)

    async def until_file_or_end(self) -> str | None:
        """The path, when the file part starts after it; None when the file comes first (or
        never: then the rest says what is missing)."""
        while (events := await self._feed()) is not None:
            for i, ev in enumerate(events):
                if isinstance(ev, Field_) and ev.name == "path":
                    self.path = ev.value
                elif isinstance(ev, FileStart) and ev.name == "file":
                    self.pending = events[i:]
                    return self.path or None
        if not self.parser.finished:
            raise InvalidRequest("incomplete multipart body")
        raise InvalidRequest("path is required" if not self.path else "file is required")

    async def file_bytes(self) -> AsyncIterator[bytes]:
        events: list[Event] | None = self.pending
        in_file = False
        while events is not None:
            for ev in events:
                if isinstance(ev, FileStart) and ev.name == "file" and not self.have_file:
                    self.have_file = in_file = True
                elif isinstance(ev, FileData) and in_file:
                    yield ev.data  # the service counts them against the cap
                elif isinstance(ev, PartEnd):
                    in_file = False
                elif isinstance(ev, Field_) and ev.name == "path" and self.path is None:
                    self.path = ev.value
            events = await self._feed()
        if not self.parser.finished:
            raise InvalidRequest("incomplete multipart body")


__all__ = ["MultipartStream", "UnaryForm", "stream_form"]
