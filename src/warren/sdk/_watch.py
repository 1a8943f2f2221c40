"""Directory watch and signed file URLs for ``sbx.files`` (docs/networking.md §4, §6).

``files.watch_dir(path, on_event)`` holds a WebSocket (``/v1/sandboxes/{id}/watch``) read by a
reader of the handle's own (a daemon thread for :class:`~warren.Sandbox`, a task for
:class:`~warren.AsyncSandbox`) that calls ``on_event`` with each :class:`FilesystemEvent`.
``files.create_watcher(path)`` makes a polling watcher kept by the server: its events wait there
until ``get_new_events()``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from warren.sdk._exceptions import StreamError
from warren.sdk._models import EntryInfo
from warren.sdk._transport import Call, Http, Op, WsClose, WsOpen, WsRecv, awaiting, blocking
from warren.url_path import segment

__all__ = [
    "AsyncWatchHandle",
    "AsyncWatcher",
    "FilesystemEvent",
    "SignedUrl",
    "WatchHandle",
    "Watcher",
]

EventCallback = Callable[["FilesystemEvent"], Any]


@dataclass(frozen=True)
class FilesystemEvent:
    """One change: ``type`` is ``create``, ``write``, ``remove``, ``rename`` (``old_path`` is
    the former path) or ``chmod``; ``entry`` is the path's info when the event was sent (None
    for ``remove``, or when it is gone again)."""

    type: str
    path: str
    timestamp_ns: int
    old_path: str | None = None
    entry: EntryInfo | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FilesystemEvent:
        entry = d.get("entry")
        return cls(
            type=str(d.get("type", "")),
            path=str(d.get("path", "")),
            timestamp_ns=int(d.get("timestamp_ns", 0)),
            old_path=d.get("old_path"),
            entry=EntryInfo.from_json(entry) if isinstance(entry, dict) else None,
        )


@dataclass(frozen=True)
class SignedUrl:
    """A URL that works without an API key until ``expires_at`` (unix seconds), for one file,
    one sandbox and one ``method``."""

    url: str
    method: str
    expires_at: int


class _WatchHandleBase:
    """A streamed watch. ``overflowed`` becomes True when the server dropped events."""

    def __init__(self, transport: Any, conn: Any, on_event: EventCallback) -> None:
        self._transport = transport
        self._conn: Any = conn
        self._on_event = on_event
        self.overflowed = False
        self.error: BaseException | None = None
        self._stopped = False

    def _read_loop(self) -> Op[None]:
        conn = self._conn
        try:
            while True:
                try:
                    frame = yield WsRecv(conn)
                except Exception as e:  # the socket broke (or stop() closed it)
                    if not self._stopped:
                        self.error = e
                    break
                if frame is None:
                    break
                kind = frame.get("type")
                if kind == "overflow":
                    self.overflowed = True
                elif kind == "error":
                    self.error = StreamError(str(frame.get("message", "watch failed")), code="stream_error")
                    break
                else:
                    yield Call(self._on_event, (FilesystemEvent.from_json(frame),))
        except Exception as e:  # an on_event callback failed: the watch ends, error says why
            self.error = e
        finally:
            self._conn = None
        yield WsClose(conn)

    def _stop(self) -> Op[None]:
        """End the watch (in the sandbox too)."""
        self._stopped = True
        if self._conn is not None:
            yield WsClose(self._conn)


class WatchHandle(_WatchHandleBase):
    """A watch of a :class:`~warren.Sandbox`'s directory; ``stop()`` ends it."""

    stop = blocking(_WatchHandleBase._stop)

    def _start_reader(self) -> None:
        self._reader = threading.Thread(
            target=self._transport.run, args=(self._read_loop(),), name="warren-watch", daemon=True
        )
        self._reader.start()


class AsyncWatchHandle(_WatchHandleBase):
    """A watch of an :class:`~warren.AsyncSandbox`'s directory; ``await stop()`` ends it."""

    stop = awaiting(_WatchHandleBase._stop)

    def _start_reader(self) -> None:
        self._reader: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self._transport.run(self._read_loop())
        )


def open_watch(sandbox_id: str, path: str, recursive: bool, user: str | None) -> Op[Any]:
    """The WebSocket of a watch, once the server says it is in place (its refusal raises:
    NotFoundError for a missing path, PayloadTooLargeError past the directory cap)."""
    params = {"path": path, "recursive": "true" if recursive else "false"}
    if user:
        params["user"] = user
    conn = yield WsOpen(f"/v1/sandboxes/{sandbox_id}/watch", params)
    frame = yield WsRecv(conn)
    if not frame or frame.get("type") != "started":
        yield WsClose(conn)
        raise StreamError("the server did not start the watch", code="stream_error")
    return conn


class _WatcherBase:
    """A polling watcher kept by the server (at most 1000 events between polls)."""

    def __init__(self, transport: Any, sandbox_id: str, watcher_id: str) -> None:
        self._transport = transport
        self._base = f"/v1/sandboxes/{sandbox_id}/watchers/{segment(watcher_id, 'watcher ID')}"
        self.id = watcher_id
        self.overflowed = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"

    def _get_new_events(self) -> Op[list[FilesystemEvent]]:
        """The events since the last call, oldest first. ``overflowed`` is set when the server
        had to drop some since the last call."""
        res = yield Http("GET", f"{self._base}/events")
        body = res.json()
        self.overflowed = bool(body.get("overflowed"))
        return [FilesystemEvent.from_json(e) for e in body.get("events", [])]

    def _remove(self) -> Op[None]:
        """Remove the watcher (its watch in the sandbox ends)."""
        yield Http("DELETE", self._base)


class Watcher(_WatcherBase):
    get_new_events = blocking(_WatcherBase._get_new_events)
    remove = blocking(_WatcherBase._remove)


class AsyncWatcher(_WatcherBase):
    get_new_events = awaiting(_WatcherBase._get_new_events)
    remove = awaiting(_WatcherBase._remove)


def create_watcher(sandbox_id: str, path: str, recursive: bool, user: str | None) -> Op[str]:
    body: dict[str, Any] = {"path": path, "recursive": recursive}
    if user:
        body["user"] = user
    res = yield Http("POST", f"/v1/sandboxes/{sandbox_id}/watchers", json=body)
    return str(res.json()["watcher_id"])


def signed_url(sandbox_id: str, op: str, path: str, expires: int, user: str | None) -> Op[SignedUrl]:
    params: dict[str, Any] = {"path": path, "expires": expires}
    if user:
        params["user"] = user
    res = yield Http("GET", f"/v1/sandboxes/{sandbox_id}/files/{op}-url", params=params)
    d = res.json()
    return SignedUrl(url=d["url"], method=d["method"], expires_at=int(d["expires_at"]))
