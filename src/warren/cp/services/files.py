"""Files in a sandbox (docs/spec.md §2.7 + docs/design.md §4): unary and streaming read/write, list, stat,
mkdir, remove, move.

An upload arrives here as its path and an async iterator of the file's bytes (the API layer
reads the multipart form, ``warren.cp.multipart``). Memory use never grows with the file
size on the streaming routes: the bytes are forwarded to the agent in 64 KiB messages as they
arrive, and a download is relayed chunk by chunk with the ASGI server's write backpressure,
both with flow credit (``file_transfer``: a 256 KiB window each way, whatever gRPC's windows
grow to, growing with the round trip within the team's share of a budget). A missing file is
404 before any byte is sent (the first chunk is fetched before the response starts), and a
download that fails midway aborts the HTTP response, so the client sees an error rather than a
short file.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock
from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.services import Timestamp, file_transfer, sandbox_access, snapshot_hold, stream_slots
from warren.cp.services.budget import unary_budget
from warren.cp.services.context import AuthContext
from warren.cp.services.exec import UserName, check_user, target_and_body
from warren.cp.services.file_transfer import StreamAborted
from warren.cp.services.strict import StrictBody
from warren.errors import AgentError, InvalidRequest, PayloadTooLarge
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.files")
T = TypeVar("T")

CHUNK = 64 * 1024
MAX_UNARY_BYTES = 100 * 1024 * 1024
# Listing pages (the guest's own bounds): entries per page by default and at most.
LIST_DEFAULT = 1000
LIST_MAX = 10000


# ------------------------------------------------------------------------------------- models


class PathBody(StrictBody):
    path: str = Field(default="", description="absolute, or relative to the user's home")
    user: UserName = ""


class ListBody(PathBody):
    depth: int = Field(default=1, ge=1, le=32, description="1 = the directory's own entries")
    limit: int = Field(
        default=LIST_DEFAULT, ge=1, le=LIST_MAX, description="entries per page (a page also stops at ~1 MiB)"
    )
    cursor: str = Field(default="", max_length=16384, description="the previous page's X-Next-Cursor")


class MoveBody(StrictBody):
    source: str = ""
    destination: str = ""
    user: UserName = ""


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


# -------------------------------------------------------------------------------------- write


# The longest path a sandbox's kernel takes (Linux's PATH_MAX), in bytes.
MAX_PATH = 4096


def _check_upload_path(path: str) -> None:
    """What the guest would refuse about a path, refused before the upload's RPC opens: a refusal
    that reaches the CP while the file is still on its way can surface from grpc as "Internal
    error from Core" (a 502) instead of the agent's INVALID_ARGUMENT."""
    if not path or "\0" in path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise InvalidRequest(f"invalid path (required, no NUL byte, at most {MAX_PATH} bytes)")


@dataclass
class UploadTarget:
    """The sandbox an upload goes to, the user it is written as (``""``: the template's), and
    whose streams its writes count with."""

    sandbox: sandbox_access.Target
    user: str
    ctx: AuthContext
    max_streams: int

    def client(self) -> HostClient:
        return self.sandbox.client()

    @property
    def sid(self) -> str:
        return self.sandbox.sid


async def upload_target(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, user: str = "",
    *, max_streams: int,
) -> UploadTarget:  # fmt: skip
    """The sandbox an upload goes to, and its user, judged before any of the upload is read."""
    check_user(user)
    return UploadTarget(await sandbox_access.target(engine, pool, ctx, sandbox_id), user, ctx, max_streams)


def _team(ctx: AuthContext) -> str:
    """Whose shares of the CP's transfer window budget a transfer's grown window takes: its
    team's and its owning account's (session 16)."""
    return file_transfer.share_key(ctx.team_id, ctx.owner_id)


async def _write(
    tgt: UploadTarget, path: str, chunks: AsyncIterator[bytes], metadata: Mapping[str, str] | None = None
) -> None:
    """One file to the agent, holding one of its team's stream slots while it goes (429
    ``too_many_streams`` past ``max_streams``). An upload the guest drains slowly holds a credit
    window (``file_transfer``; until session 13 the agent's gRPC window, MiBs); until session 12
    nothing but the connection caps bounded how many a team held (48 into a CPU-starved sandbox
    of its own: agent +822 MiB)."""
    _check_upload_path(path)
    with stream_slots.Slot() as slot:
        slot.claim(tgt.ctx, tgt.max_streams)
        # A revoked credential (stream_revocation) cuts the upload: 401, no file written.
        await slot.guard(
            file_transfer.write(tgt.client(), tgt.sid, path, chunks, tgt.user, metadata, team=_team(tgt.ctx))
        )


async def write_stream(
    tgt: UploadTarget, path: str, chunks: AsyncIterator[bytes], metadata: Mapping[str, str] | None = None
) -> None:
    """Streaming upload: the file's bytes flow on to the agent as they arrive; no size limit."""
    await _write(tgt, path, chunks, metadata)


async def write_unary(
    tgt: UploadTarget, path: str, chunks: AsyncIterator[bytes], *, cap: int = MAX_UNARY_BYTES,
    metadata: Mapping[str, str] | None = None,
) -> None:  # fmt: skip
    """Unary upload whose path is known before its bytes (as the SDK, curl -F and browsers send
    it): streamed through, ``cap`` bytes at most (413 above). The guest writes a temporary file
    and renames it only once the upload is complete, so an oversize or broken upload never
    leaves a partial file."""
    await _write(tgt, path, _capped_upload(chunks, cap), metadata)


async def write_unary_held(
    tgt: UploadTarget,
    chunks: AsyncIterator[bytes],
    path_after: Callable[[], str | None],
    *,
    cap: int = MAX_UNARY_BYTES,
) -> None:
    """Unary upload whose bytes come before its path (``path_after()`` names it once ``chunks``
    is exhausted): the file is held until then, bounded by ``cap`` and counted in the replica's
    unary budget."""
    budget, held = unary_budget(), 0
    try:
        data = bytearray()
        async for chunk in _capped_upload(chunks, cap):
            await budget.acquire(len(chunk))
            held += len(chunk)
            data.extend(chunk)
        path = path_after()
        if not path:
            raise InvalidRequest("path is required")
        await _write(tgt, path, _slices(data))
    finally:
        budget.release(held)


async def _capped_upload(chunks: AsyncIterator[bytes], cap: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > cap:
            raise PayloadTooLarge(f"file is larger than {cap} bytes; use the stream upload")
        yield chunk


async def _slices(data: bytearray) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for i in range(0, len(view), CHUNK):
        yield bytes(view[i : i + CHUNK])


# --------------------------------------------------------------------------------------- read


async def open_read(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, raw_body: bytes,
    *, max_streams: int,
) -> AsyncIterator[bytes]:  # fmt: skip
    """Start a streaming download: the first chunk is fetched here, so a missing file (or any
    agent error before data flows) raises now and becomes a proper error response. It holds one
    of the team's ``max_streams`` stream slots until it ends (429 ``too_many_streams``)."""
    tgt, body = await target_and_body(engine, pool, ctx, sandbox_id, PathBody, raw_body)

    def start() -> Awaitable[AsyncIterator[bytes]]:
        return file_transfer.open_read(tgt.client(), tgt.sid, _path(body), body.user, team=_team(ctx))

    return await _again_after_snapshot(engine, pool, ctx, tgt, lambda: _counted(ctx, max_streams, start))


async def _again_after_snapshot(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, tgt: sandbox_access.Target,
    work: Callable[[], Awaitable[T]],
) -> T:  # fmt: skip
    """``work`` (a read: nothing done yet when the agent refuses it), once more when the agent
    refused it as not running because its lookup raced a snapshot's pause (snapshot_hold):
    once the snapshot is over, if the sandbox runs again."""
    sent = clock.now()
    try:
        return await work()
    except AgentError as e:
        if not await snapshot_hold.refused_for_snapshot(engine, ctx, tgt.uuid, e, sent):
            raise
    await sandbox_access.target(engine, pool, ctx, tgt.sid)  # 409 unless it runs again
    return await work()


async def _counted(
    ctx: AuthContext, max_streams: int, start: Callable[[], Awaitable[AsyncIterator[bytes]]]
) -> AsyncIterator[bytes]:
    """A download counted with its team's streams (``services/stream_slots``). What a download
    its client does not read holds is a credit window each side (``file_transfer``: 64 unread,
    CP and agent ~+30 MiB; until session 13 gRPC's windows, ~4.8 and ~2.8 MiB a stream); until
    session 12 nothing but the connection caps bounded how many one team held (64 unread: CP
    +306 MiB, agent +181 MiB)."""
    slot = stream_slots.Slot()
    slot.claim(ctx, max_streams)
    try:
        chunks = await start()
    except BaseException:
        slot.release()
        raise
    return stream_slots.Held(chunks, slot)


async def read_unary(
    engine: AsyncEngine,
    pool: HostClientPool,
    ctx: AuthContext,
    sandbox_id: str,
    raw_body: bytes,
    *,
    cap: int = MAX_UNARY_BYTES,
    max_streams: int,
) -> AsyncIterator[bytes]:
    """Unary download (counted as ``open_read`` is): 404 missing, 400 a directory, 413 when the
    file (a symlink's target, not the link) is over the cap, all before the first byte; then
    the bytes are relayed chunked. No Content-Length: a size from stat is not the size of what
    is read (``/proc`` files stat as empty, a file may grow), so the cap is enforced again while
    relaying and a file that grows past it mid-way is cut off (a broken transfer, never a
    silently short file)."""
    tgt, body = await target_and_body(engine, pool, ctx, sandbox_id, PathBody, raw_body)
    path, user, client = _path(body), body.user, tgt.client()

    async def start() -> AsyncIterator[bytes]:
        return _capped(await file_transfer.open_read(client, tgt.sid, path, user, team=_team(ctx)), cap)

    async def read() -> AsyncIterator[bytes]:
        st = await client.stub.Stat(
            pb.StatRequest(sandbox_id=tgt.sid, path=path, follow_symlinks=True, user=user), timeout=30
        )
        if st.entry.type == "dir":
            raise InvalidRequest(f"{path} is a directory")
        if st.entry.size > cap:
            raise PayloadTooLarge(f"file is larger than {cap} bytes; use the stream download")
        return await _counted(ctx, max_streams, start)

    return await _again_after_snapshot(engine, pool, ctx, tgt, read)


async def _capped(chunks: AsyncGenerator[bytes], cap: int) -> AsyncIterator[bytes]:
    seen = 0
    try:
        async for chunk in chunks:
            seen += len(chunk)
            if seen > cap:
                raise StreamAborted(f"the file grew past {cap} bytes while it was read")
            yield chunk
    finally:
        await chunks.aclose()  # cancels the agent's read at once


# ---------------------------------------------------------------------------- filesystem ops


@dataclass
class ListPage:
    entries: list[EntryInfo]
    next_cursor: str  # "" on the last page
    has_more: bool


async def list_dir(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, raw_body: bytes
) -> ListPage:
    """One page of a listing, sorted by path: ``limit`` entries (default 1000, at most 10000,
    and about 1 MiB) after ``cursor``. Paging keeps every listing bounded on the guest, the agent
    and here, however large the directory."""
    tgt, body = await target_and_body(engine, pool, ctx, sandbox_id, ListBody, raw_body)
    req = pb.ListDirRequest(
        sandbox_id=tgt.sid, path=_path(body), depth=body.depth, limit=body.limit, cursor=body.cursor,
        user=body.user,
    )  # fmt: skip
    resp = await tgt.client().stub.ListDir(req, timeout=60)
    return ListPage([entry_model(e) for e in resp.entries], resp.next_cursor, resp.has_more)


async def stat(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, raw_body: bytes
) -> EntryInfo:
    tgt, body = await target_and_body(engine, pool, ctx, sandbox_id, PathBody, raw_body)
    req = pb.StatRequest(sandbox_id=tgt.sid, path=_path(body), user=body.user)
    resp = await tgt.client().stub.Stat(req, timeout=30)
    return entry_model(resp.entry)


async def make_dir(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, raw_body: bytes
) -> MakeDirResult:
    tgt, body = await target_and_body(engine, pool, ctx, sandbox_id, PathBody, raw_body)
    path, user, client = _path(body), body.user, tgt.client()
    # The agent's MakeDir is idempotent and cannot tell whether it created anything: look first.
    try:
        st = await client.stub.Stat(pb.StatRequest(sandbox_id=tgt.sid, path=path, user=user), timeout=30)
        if st.entry.type == "dir":
            return MakeDirResult(created=False)
    except AgentError as e:
        if not e.is_not_found:
            raise
    await client.stub.MakeDir(pb.MakeDirRequest(sandbox_id=tgt.sid, path=path, user=user), timeout=30)
    return MakeDirResult(created=True)


async def remove(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, raw_body: bytes
) -> None:
    tgt, body = await target_and_body(engine, pool, ctx, sandbox_id, PathBody, raw_body)
    req = pb.RemoveRequest(sandbox_id=tgt.sid, path=_path(body), user=body.user)
    await tgt.client().stub.Remove(req, timeout=120)


async def move(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, raw_body: bytes
) -> EntryInfo:
    tgt, body = await target_and_body(engine, pool, ctx, sandbox_id, MoveBody, raw_body)
    if not body.source or not body.destination:
        raise InvalidRequest("source and destination are required")
    client = tgt.client()
    move_req = pb.MoveRequest(
        sandbox_id=tgt.sid, source=body.source, destination=body.destination, user=body.user
    )
    await client.stub.Move(move_req, timeout=120)
    stat_req = pb.StatRequest(sandbox_id=tgt.sid, path=body.destination, user=body.user)
    resp = await client.stub.Stat(stat_req, timeout=30)
    return entry_model(resp.entry)


__all__ = [
    "EntryInfo",
    "ListPage",
    "StreamAborted",
    "UploadTarget",
    "list_dir",
    "make_dir",
    "move",
    "open_read",
    "read_unary",
    "remove",
    "stat",
    "upload_target",
    "write_stream",
    "write_unary",
    "write_unary_held",
]
