"""Files in a sandbox (SPEC §2.7 + DESIGN §4): unary and streaming read/write, list, stat,
mkdir, remove, move.

Memory use never grows with the file size on the streaming routes: the upload is parsed
incrementally (python-multipart's push parser fed from the request stream) and forwarded to the
agent in 64 KiB messages as it arrives, with gRPC flow control pushing back on the client; a
download is relayed chunk by chunk with the ASGI server's write backpressure. A missing file is
404 before any byte is sent (the first chunk is fetched before the response starts), and a
download that fails midway aborts the HTTP response, so the client sees an error rather than a
short file.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc.aio
from pydantic import BaseModel, ConfigDict, Field
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy.ext.asyncio import AsyncEngine

from warren.cp.hosts.client_pool import HostClient, HostClientPool, agent_errors, translate
from warren.cp.services import Timestamp, sandbox_access
from warren.cp.services.context import AuthContext
from warren.cp.services.exec import parse_body
from warren.errors import AgentError, InvalidRequest, PayloadTooLarge
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.files")

CHUNK = 64 * 1024
# Text fields of an upload form are tiny; anything bigger is not a path.
MAX_FIELD_BYTES = 4096
MAX_UNARY_BYTES = 100 * 1024 * 1024
# What a grpc.aio stream's read() returns at the end (missing from the type stubs).
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------- models


class PathBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = ""


class ListBody(PathBody):
    depth: int = Field(default=1, ge=1, le=32, description="1 = the directory's own entries")


class MoveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = ""
    destination: str = ""


class EntryInfo(BaseModel):
    name: str
    type: str = Field(description="file | dir | symlink | other")
    path: str
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time: Timestamp | None = None
    symlink_target: str | None = None


class MakeDirResult(BaseModel):
    created: bool


def entry_model(e: pb.EntryInfo) -> EntryInfo:
    return EntryInfo(
        name=e.name,
        type=e.type,
        path=e.path,
        size=e.size,
        mode=e.mode,
        permissions=e.permissions,
        owner=e.owner,
        group=e.group,
        modified_time=datetime.fromtimestamp(e.modified_time_unix, UTC) if e.modified_time_unix else None,
        symlink_target=e.symlink_target or None,
    )


def _path(body: PathBody) -> str:
    if not body.path:
        raise InvalidRequest("path is required")
    return body.path


# ------------------------------------------------------------------------ streaming multipart


@dataclass
class Field_:
    name: str
    value: str


@dataclass
class FileStart:
    name: str


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

    def __init__(self, content_type: str) -> None:
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
            self._events.append(FileStart(self._name))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            if end > start:
                self._events.append(FileData(bytes(data[start:end])))
            return
        if len(self._field) + (end - start) > MAX_FIELD_BYTES:
            raise InvalidRequest(f"form field {self._name!r} is too long")
        self._field.extend(data[start:end])

    def _on_part_end(self) -> None:
        if self._is_file:
            self._events.append(PartEnd())
        else:
            self._events.append(Field_(self._name, self._field.decode("utf-8", "replace")))

    def _on_end(self) -> None:
        self.finished = True


# -------------------------------------------------------------------------------------- write


async def _write_to_agent(client: HostClient, sid: str, path: str, chunks: AsyncIterator[bytes]) -> None:
    """WriteFileStream: meta, then ≤ 64 KiB chunks. If ``chunks`` fails (a truncated or broken
    upload), the RPC is cancelled so the agent discards the partial file."""
    call = client.stub.WriteFileStream(timeout=None)
    try:
        with agent_errors(client.host_id):
            await call.write(pb.WriteFileStreamRequest(meta=pb.WriteFileMeta(sandbox_id=sid, path=path)))
            async for data in chunks:
                view = memoryview(data)
                for i in range(0, len(view), CHUNK):
                    await call.write(pb.WriteFileStreamRequest(chunk=bytes(view[i : i + CHUNK])))
            await call.done_writing()
            await call
    except BaseException:
        call.cancel()
        raise


async def write_stream(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    content_type: str,
    body: AsyncIterator[bytes],
) -> None:
    """Streaming upload: ``path`` must come before ``file`` (DESIGN §4); no size limit."""
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
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
    client = tgt.client()

    async def file_bytes() -> AsyncIterator[bytes]:
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

    await _write_to_agent(client, tgt.sid, path, file_bytes())


async def write_unary(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    content_type: str,
    body: AsyncIterator[bytes],
    *,
    cap: int = MAX_UNARY_BYTES,
) -> None:
    """Unary upload (parts in any order), capped at ``cap`` bytes of file content → 413. The
    file is held in memory (never more than the cap) until the body has been read whole, so an
    oversize or broken upload never leaves a partial file in the sandbox."""
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    parser = MultipartStream(content_type)
    path: str | None = None
    data = bytearray()
    have_file = False
    in_file = False
    async for chunk in body:
        for ev in parser.feed(chunk):
            if isinstance(ev, Field_) and ev.name == "path":
                path = ev.value
            elif isinstance(ev, FileStart) and ev.name == "file" and not have_file:
                have_file = in_file = True
            elif isinstance(ev, FileData) and in_file:
                if len(data) + len(ev.data) > cap:
                    raise PayloadTooLarge(f"file is larger than {cap} bytes; use the stream upload")
                data.extend(ev.data)
            elif isinstance(ev, PartEnd):
                in_file = False
    if not parser.finished:
        raise InvalidRequest("incomplete multipart body")
    if not path:
        raise InvalidRequest("path is required")
    if not have_file:
        raise InvalidRequest("file is required")
    await _write_to_agent(tgt.client(), tgt.sid, path, _slices(data))


async def _slices(data: bytearray) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for i in range(0, len(view), CHUNK):
        yield bytes(view[i : i + CHUNK])


# --------------------------------------------------------------------------------------- read


async def open_read(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, raw_body: bytes
) -> AsyncIterator[bytes]:
    """Start a streaming download: the first chunk is fetched here, so a missing file (or any
    agent error before data flows) raises now and becomes a proper error response."""
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    path = _path(parse_body(PathBody, raw_body))
    client = tgt.client()
    call = client.stub.ReadFileStream(pb.ReadFileRequest(sandbox_id=tgt.sid, path=path), timeout=None)
    try:
        with agent_errors(client.host_id):
            first = await call.read()
    except BaseException:
        call.cancel()
        raise
    return _relay(call, client.host_id, first, tgt.sid, path)


async def _relay(call: Any, host_id: str, first: Any, sid: str, path: str) -> AsyncIterator[bytes]:
    try:
        msg = first
        while msg is not _EOF:
            chunk = msg.chunk
            if chunk:
                yield chunk
            try:
                msg = await call.read()
            except grpc.aio.AioRpcError as e:
                err = translate(e, host_id)
                log.warning("file stream read failed midway sandbox=%s path=%s: %s", sid, path, err)
                # Raising here makes the server abort the response (no final chunk): the client
                # sees a broken transfer, never a silently short file.
                raise StreamAborted(err.message) from e
    finally:
        call.cancel()


class StreamAborted(Exception):
    """A download broke after its first byte; raised inside the response body on purpose."""


async def read_unary(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    raw_body: bytes,
    *,
    cap: int = MAX_UNARY_BYTES,
) -> tuple[int, AsyncIterator[bytes]]:
    """Unary download: the size is checked first (404 missing, 413 over the cap), then the bytes
    are relayed with a Content-Length, so even a 100 MiB read is never buffered."""
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    path = _path(parse_body(PathBody, raw_body))
    client = tgt.client()
    st = await client.call("Stat", pb.StatRequest(sandbox_id=tgt.sid, path=path), deadline=30)
    if st.entry.type == "dir":
        raise InvalidRequest(f"{path} is a directory")
    if st.entry.size > cap:
        raise PayloadTooLarge(f"file is larger than {cap} bytes; use the stream download")
    call = client.stub.ReadFileStream(pb.ReadFileRequest(sandbox_id=tgt.sid, path=path), timeout=None)
    try:
        with agent_errors(client.host_id):
            first = await call.read()
    except BaseException:
        call.cancel()
        raise
    return st.entry.size, _relay(call, client.host_id, first, tgt.sid, path)


# ---------------------------------------------------------------------------- filesystem ops


async def list_dir(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, raw_body: bytes
) -> list[EntryInfo]:
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    body = parse_body(ListBody, raw_body)
    req = pb.ListDirRequest(sandbox_id=tgt.sid, path=_path(body), depth=body.depth)
    resp = await tgt.client().call("ListDir", req, deadline=60)
    return [entry_model(e) for e in resp.entries]


async def stat(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, raw_body: bytes
) -> EntryInfo:
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    path = _path(parse_body(PathBody, raw_body))
    resp = await tgt.client().call("Stat", pb.StatRequest(sandbox_id=tgt.sid, path=path), deadline=30)
    return entry_model(resp.entry)


async def make_dir(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, raw_body: bytes
) -> MakeDirResult:
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    path = _path(parse_body(PathBody, raw_body))
    client = tgt.client()
    # The agent's MakeDir is idempotent and cannot tell whether it created anything: look first.
    try:
        st = await client.call("Stat", pb.StatRequest(sandbox_id=tgt.sid, path=path), deadline=30)
        if st.entry.type == "dir":
            return MakeDirResult(created=False)
    except AgentError as e:
        if not e.is_not_found:
            raise
    await client.call("MakeDir", pb.MakeDirRequest(sandbox_id=tgt.sid, path=path), deadline=30)
    return MakeDirResult(created=True)


async def remove(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, raw_body: bytes
) -> None:
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    path = _path(parse_body(PathBody, raw_body))
    await tgt.client().call("Remove", pb.RemoveRequest(sandbox_id=tgt.sid, path=path), deadline=120)


async def move(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, raw_body: bytes
) -> EntryInfo:
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    body = parse_body(MoveBody, raw_body)
    if not body.source or not body.destination:
        raise InvalidRequest("source and destination are required")
    client = tgt.client()
    await client.call(
        "Move",
        pb.MoveRequest(sandbox_id=tgt.sid, source=body.source, destination=body.destination),
        deadline=120,
    )
    resp = await client.call("Stat", pb.StatRequest(sandbox_id=tgt.sid, path=body.destination), deadline=30)
    return entry_model(resp.entry)


__all__ = [
    "EntryInfo",
    "MultipartStream",
    "StreamAborted",
    "list_dir",
    "make_dir",
    "move",
    "open_read",
    "read_unary",
    "remove",
    "stat",
    "write_stream",
    "write_unary",
]
