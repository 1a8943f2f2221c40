"""Directory watch (docs/networking.md §4): a streamed watch (the WebSocket) and polling
watchers, both held by the sandbox's agent (``WatchDir``, ``CreateWatcher``/``PollWatcher``/
``RemoveWatcher``).

A watcher id is the agent's and means something only with its sandbox: every call finds the
sandbox in the caller's team first (another team's sandbox is 404), and the agent looks the
watcher up in that sandbox only (another sandbox's watcher is 404 too).

A streamed watch (Warren's WebSocket and E2B's ``WatchDir``) goes over the host's narrow-window
channel (``cp/hosts/narrow_channel.py``: gRPC's bandwidth probes off, 64 KiB a stream), not
its shared one, whose probes grow every stream's window to MiBs: what a client did not read
waited there. Session 23: 16 unread WebSockets on a tree of long names (events of ~12 KiB: a
3.9 KiB path, a symlink's 4000-byte target) held the CP +53 MiB and the agent +46 MiB, +116 MiB
of the CP once a download had grown the probes' estimate (the team may hold 64 streams).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import grpc.aio
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from warren.cp.hosts.agent_client import translate
from warren.cp.hosts.client_pool import HostClient, HostClientPool
from warren.cp.hosts.narrow_channel import dial_channel, request_metadata, uninterposed
from warren.cp.services import sandbox_access
from warren.cp.services.context import AuthContext
from warren.cp.services.exec import UserName, check_user, parse_body
from warren.cp.services.files import MAX_PATH, EntryInfo, entry_model
from warren.cp.services.strict import StrictBody
from warren.errors import AgentError, InvalidRequest, NotFound
from warren.rpc import hostagent_pb2 as pb

WATCHER_PREFIX = "wch-"
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
_RPC_TIMEOUT = 60.0
_WATCH_DIR = f"/{pb.DESCRIPTOR.services_by_name['HostAgent'].full_name}/WatchDir"


class WatchBody(StrictBody):
    path: str = Field(min_length=1, max_length=MAX_PATH)
    recursive: bool = True
    user: UserName = ""


class WatchEvent(BaseModel):
    type: str
    path: str
    old_path: str | None = None
    entry: EntryInfo | None = None
    timestamp_ns: int


class WatcherCreated(BaseModel):
    watcher_id: str


class WatcherEvents(BaseModel):
    events: list[WatchEvent]
    overflowed: bool


def event_model(e: pb.WatchEvent) -> WatchEvent:
    return WatchEvent(
        type=e.type,
        path=e.path,
        old_path=e.old_path or None,
        entry=entry_model(e.entry) if e.HasField("entry") else None,
        timestamp_ns=e.timestamp_ns,
    )


def event_frame(e: pb.WatchEvent) -> dict[str, Any]:
    """One event as the WebSocket's JSON text frame."""
    if e.type == "overflow":
        return {"type": "overflow"}
    return event_model(e).model_dump(mode="json", exclude_none=True)


def _request(sid: str, path: str, recursive: bool, user: str) -> pb.WatchDirRequest:
    if not path or "\0" in path or len(path) > MAX_PATH:
        raise InvalidRequest(f"path is required (at most {MAX_PATH} bytes)")
    check_user(user)
    return pb.WatchDirRequest(sandbox_id=sid, path=path, recursive=recursive, user=user)


async def open_stream(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str,
    path: str, recursive: bool, user: str,
) -> AsyncGenerator[dict[str, Any]]:  # fmt: skip
    """Start a streamed watch: the agent's refusal (404 missing path, 413 too many directories,
    403 the user may not read it) raises here, before the WebSocket is accepted. Then the
    events as JSON frames; closing the generator ends the watch in the sandbox."""
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    events = await watch_events(tgt, _request(tgt.sid, path, recursive, user))
    return _frames(events)


async def watch_events(tgt: sandbox_access.Target, req: pb.WatchDirRequest) -> AsyncGenerator[pb.WatchEvent]:
    """The agent's WatchDir for ``req``: waits for its ``started`` (so a refusal raises here,
    before any event), then its events; closing the generator ends the watch in the sandbox.
    Shared by Warren's watch and E2B's (services/envd_fs.py)."""
    client = tgt.client()
    await client.admit()  # the BYOC address check: the narrow channel has no interceptor
    call = _watch_dir(client)(req, timeout=None, metadata=request_metadata())
    try:
        first: Any = await _read(call, client.host_id)
        if first is _EOF or first.type != "started":
            raise AgentError("the agent did not start the watch", rpc_code="INTERNAL")
    except BaseException:
        call.cancel()
        raise
    return _events(call, client.host_id)


def _watch_dir(client: HostClient) -> Any:
    """WatchDir on the host's narrow-window channel, without an interceptor (``_read`` maps
    errors as the interceptor would)."""
    return uninterposed(
        dial_channel(client).unary_stream(
            _WATCH_DIR,
            request_serializer=pb.WatchDirRequest.SerializeToString,
            response_deserializer=pb.WatchEvent.FromString,
        )
    )


async def _read(call: Any, host_id: str) -> Any:
    try:
        return await call.read()
    except grpc.aio.AioRpcError as e:
        raise translate(e, host_id, "WatchDir") from e


async def _events(call: Any, host_id: str) -> AsyncGenerator[pb.WatchEvent]:
    try:
        while True:
            msg = await _read(call, host_id)
            if msg is _EOF:
                return
            yield msg
    finally:
        call.cancel()


async def _frames(events: AsyncGenerator[pb.WatchEvent]) -> AsyncGenerator[dict[str, Any]]:
    async with contextlib.aclosing(events):
        async for msg in events:
            yield event_frame(msg)


async def create_watcher(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, raw_body: bytes
) -> WatcherCreated:
    body = parse_body(WatchBody, raw_body)
    tgt = await sandbox_access.target(engine, pool, ctx, sandbox_id)
    req = _request(tgt.sid, body.path, body.recursive, body.user)
    res = await tgt.client().stub.CreateWatcher(req, timeout=_RPC_TIMEOUT)
    return WatcherCreated(watcher_id=res.watcher_id)


def _watcher_id(watcher_id: str) -> str:
    # Anything that cannot be a watcher id is unknown, like a removed one.
    if not watcher_id.startswith(WATCHER_PREFIX) or len(watcher_id) > 64 or not watcher_id.isascii():
        raise NotFound(f"watcher {watcher_id[:64]} not found")
    return watcher_id


async def _watcher(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, watcher_id: str
) -> tuple[sandbox_access.Target, str]:
    """The sandbox of a watcher (running or paused) and the watcher's checked id."""
    wid = _watcher_id(watcher_id)
    return await sandbox_access.target(engine, pool, ctx, sandbox_id, states=("running", "paused")), wid


async def poll_watcher(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, watcher_id: str
) -> WatcherEvents:
    tgt, wid = await _watcher(engine, pool, ctx, sandbox_id, watcher_id)
    req = pb.PollWatcherRequest(sandbox_id=tgt.sid, watcher_id=wid)
    res = await tgt.client().stub.PollWatcher(req, timeout=_RPC_TIMEOUT)
    return WatcherEvents(events=[event_model(e) for e in res.events], overflowed=res.overflowed)


async def remove_watcher(
    engine: AsyncEngine, pool: HostClientPool, ctx: AuthContext, sandbox_id: str, watcher_id: str
) -> None:
    tgt, wid = await _watcher(engine, pool, ctx, sandbox_id, watcher_id)
    req = pb.RemoveWatcherRequest(sandbox_id=tgt.sid, watcher_id=wid)
    await tgt.client().stub.RemoveWatcher(req, timeout=_RPC_TIMEOUT)
