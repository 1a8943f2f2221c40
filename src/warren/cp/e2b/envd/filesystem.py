"""envd's ``filesystem.Filesystem`` service (docs/e2b.md §3.2) over Warren's file and watch
operations (``cp/services/envd_fs.py``).

- ``Stat``, ``ListDir`` (the whole listing, ``depth`` levels), ``MakeDir`` (``already_exists``
  when the directory is there: E2B's SDK then answers False), ``Move`` (the destination's
  entry), ``Remove``.
- ``WatchDir``: a server stream, ``start`` first, then ``filesystem`` events, and ``keepalive``
  when nothing happened for the ``Keepalive-Ping-Interval`` the SDK asks for.
- ``CreateWatcher`` / ``GetWatcherEvents`` / ``RemoveWatcher``: the agent's polling watchers.

Each handler runs as the call's user (``Authorization: Basic``), else the template's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response, StreamingResponse

from warren.cp.e2b.envd.call import EnvdCall
from warren.cp.e2b.envd.connect import ConnectError, Message, StreamHandler, UnaryHandler
from warren.cp.e2b.envd.entry import entry_json, events_json
from warren.cp.services import envd_fs, sandbox_access
from warren.cp.services.budget import share_key
from warren.cp.services.sandbox_access import Target
from warren.rpc import hostagent_pb2 as pb

DEFAULT_KEEPALIVE_S = 50.0  # E2B's SDK asks for 50 s
MIN_KEEPALIVE_S = 1.0
LIST_BATCH = 256  # entries encoded between two sends: ~7 ms of the event loop at the most


def gone(sandbox_id: str) -> ConnectError:
    """A sandbox that is not running, as the SDK reads it: "not running" (docs/e2b.md §1.3)."""
    return ConnectError("unavailable", f"The sandbox {sandbox_id} was not found")


async def target(call: EnvdCall) -> Target:
    """The call's sandbox (as its authentication found it) and its agent; a paused one is "not
    running"."""
    if call.sandbox.sandbox.status != "running":
        raise gone(call.sandbox_id)
    return sandbox_access.target_of(call.sandbox, call.state.pool)


def _str(msg: Message, key: str) -> str:
    value = msg.get(key, "")
    if not isinstance(value, str):
        raise ConnectError("invalid_argument", f"{key} must be a string")
    return value


def _bool(msg: Message, key: str) -> bool:
    value = msg.get(key, False)
    if not isinstance(value, bool):
        raise ConnectError("invalid_argument", f"{key} must be a boolean")
    return value


def _uint(msg: Message, key: str) -> int:
    value = msg.get(key, 0)
    if isinstance(value, str) and value.isdigit() and len(value) <= 10:
        value = int(value)  # proto3 JSON takes numbers as strings too
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
        raise ConnectError("invalid_argument", f"{key} must be an unsigned 32-bit integer")
    return value


def _user(call: EnvdCall) -> str:
    return call.user or ""


async def stat(call: EnvdCall, msg: Message) -> Message:
    entry = await envd_fs.stat(await target(call), _str(msg, "path"), _user(call))
    return {"entry": entry_json(entry)}


async def list_dir(call: EnvdCall, msg: Message) -> Response:
    tgt, key = await target(call), share_key(call.ctx)  # its owner's share of the unary budget
    entries = await envd_fs.list_all(tgt, _str(msg, "path"), _uint(msg, "depth"), _user(call), key)
    return StreamingResponse(_entries_json(entries), media_type="application/json")


async def _entries_json(entries: list[pb.EntryInfo]) -> AsyncIterator[bytes]:
    """``{"entries": [...]}``, encoded a batch at a time as it is sent. At once, a listing of
    32 MiB held the event loop ~0.2 s (its conversion and ``json.dumps``), every request of the
    process waiting: a tenant listing big trees in a loop slowed them all (session 25)."""
    yield b'{"entries":['
    for i in range(0, len(entries), LIST_BATCH):
        batch = ",".join(
            json.dumps(entry_json(e), ensure_ascii=False, separators=(",", ":"))
            for e in entries[i : i + LIST_BATCH]
        )
        yield (b"," if i else b"") + batch.encode()
    yield b"]}"


async def make_dir(call: EnvdCall, msg: Message) -> Message:
    path = _str(msg, "path")
    created, entry = await envd_fs.make_dir(await target(call), path, _user(call))
    if not created:
        raise ConnectError("already_exists", f"directory {entry.path or path} already exists")
    return {"entry": entry_json(entry)}


async def move(call: EnvdCall, msg: Message) -> Message:
    src, dst = _str(msg, "source"), _str(msg, "destination")
    if not src or not dst:
        raise ConnectError("invalid_argument", "source and destination are required")
    return {"entry": entry_json(await envd_fs.move(await target(call), src, dst, _user(call)))}


async def remove(call: EnvdCall, msg: Message) -> Message:
    await envd_fs.remove(await target(call), _str(msg, "path"), _user(call))
    return {}


# ------------------------------------------------------------------------------------ watches


def _keepalive_s(call: EnvdCall) -> float:
    raw = call.request.headers.get("keepalive-ping-interval", "")
    if raw.isdigit() and len(raw) <= 6:
        return max(MIN_KEEPALIVE_S, float(raw))
    return DEFAULT_KEEPALIVE_S


async def watch_dir(call: EnvdCall, msg: Message) -> AsyncIterator[Message]:
    """``start``, then the events as they come, ``keepalive`` when idle; ends at the call's
    deadline (``deadline_exceeded``), or when the client goes (the watch is removed)."""
    path, recursive, include = _str(msg, "path"), _bool(msg, "recursive"), _bool(msg, "includeEntry")
    root, events = await envd_fs.watch(await target(call), path, recursive, _user(call))
    deadline = asyncio.get_running_loop().time() + call.timeout_ms / 1000 if call.timeout_ms else None
    interval = _keepalive_s(call)
    pending: asyncio.Future[Any] | None = None
    try:
        yield {"start": {}}
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            wait = interval
            if deadline is not None:
                wait = min(wait, deadline - asyncio.get_running_loop().time())
                if wait <= 0:
                    raise ConnectError("deadline_exceeded", "the watch reached its timeout")
            done, _ = await asyncio.wait({pending}, timeout=wait)
            if not done:
                if deadline is None or asyncio.get_running_loop().time() < deadline:
                    yield {"keepalive": {}}
                continue
            try:
                ev: pb.WatchEvent = pending.result()
            except StopAsyncIteration:
                return  # the watched directory went away
            pending = None
            for out in events_json(ev, root, include):
                yield {"filesystem": out}
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        await events.aclose()


async def create_watcher(call: EnvdCall, msg: Message) -> Message:
    path, recursive, include = _str(msg, "path"), _bool(msg, "recursive"), _bool(msg, "includeEntry")
    wid = await envd_fs.create_watcher(await target(call), path, recursive, include, _user(call))
    return {"watcherId": wid.encode()}


async def get_watcher_events(call: EnvdCall, msg: Message) -> Message:
    wid = envd_fs.WatcherId.decode(_str(msg, "watcherId"))
    events = await envd_fs.poll_watcher(await target(call), wid)
    return {"events": [out for ev in events for out in events_json(ev, wid.root, wid.include_entry)]}


async def remove_watcher(call: EnvdCall, msg: Message) -> Message:
    wid = envd_fs.WatcherId.decode(_str(msg, "watcherId"))
    await envd_fs.remove_watcher(await target(call), wid)
    return {}


UNARY: dict[str, UnaryHandler] = {
    "Stat": stat,
    "ListDir": list_dir,
    "MakeDir": make_dir,
    "Move": move,
    "Remove": remove,
    "CreateWatcher": create_watcher,
    "GetWatcherEvents": get_watcher_events,
    "RemoveWatcher": remove_watcher,
}
SERVER_STREAMS: dict[str, StreamHandler] = {"WatchDir": watch_dir}
