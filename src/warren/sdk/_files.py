"""``sbx.files``: read, write, list and manage files inside a sandbox.

``read``/``write`` move a whole file in one request (up to 100 MiB). ``list`` follows the
server's pages to the end; ``list_page`` fetches one. ``read_stream`` and
``write_stream`` move any size in chunks with constant memory on the client and the server.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

from warren.sdk._exceptions import NotFoundError
from warren.sdk._models import EntryInfo
from warren.sdk._pages import PageCursors
from warren.sdk._transport import Http, Op, StreamClose, StreamRead, Upload, awaiting, blocking
from warren.sdk._watch import (
    AsyncWatcher,
    AsyncWatchHandle,
    EventCallback,
    SignedUrl,
    Watcher,
    WatchHandle,
    create_watcher,
    open_watch,
    signed_url,
)

if TYPE_CHECKING:
    from warren.sdk._transport import AsyncTransport, SyncTransport

__all__ = ["AsyncFiles", "Files", "ListPage", "multipart_upload"]

Progress = Callable[[int], Any]


def multipart_upload(path: str, source: Any, progress: Progress | None = None) -> Upload:
    """A multipart/form-data body with the ``path`` field first, then the ``file`` part, built
    around ``source`` without reading it: the bytes stream straight through."""
    boundary = "warren-" + secrets.token_hex(16)
    filename = path.rsplit("/", 1)[-1].replace('"', "%22").replace("\r", "").replace("\n", "") or "file"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="path"\r\n\r\n'
        f"{path}\r\n"
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return Upload(head, source, tail, f"multipart/form-data; boundary={boundary}", progress)


LIST_MAX = 10000  # the server's largest page
# The pages ``list`` follows: 10 million entries at the server's fullest pages (a page also stops
# at ~1 MiB). A server that names more (or a cursor again) is a bad response: ``list_page`` reads
# on past it, page by page.
LIST_MAX_PAGES = 1000


def _as(body: dict[str, Any], user: str | None) -> dict[str, Any]:
    """A request body with its ``user`` (none: the template's user; root unless it says)."""
    return {**body, "user": user} if user else body


def _user_query(user: str | None) -> dict[str, Any] | None:
    # An upload's form holds the path and the file; its user goes in the query.
    return {"user": user} if user else None


@dataclass(frozen=True)
class ListPage:
    """One page of ``files.list_page``; pass ``next_cursor`` on while ``has_more``."""

    entries: list[EntryInfo]
    next_cursor: str
    has_more: bool


class _FilesBase:
    def __init__(self, transport: Any, sandbox_id: str) -> None:
        self._transport = transport
        self._sandbox_id = sandbox_id
        self._base = f"/v1/sandboxes/{sandbox_id}/files"

    def _read(
        self, path: str, format: Literal["text", "bytes"] = "text", *, user: str | None = None
    ) -> Op[Any]:
        res = yield Http("POST", f"{self._base}/read", json=_as({"path": path}, user))
        return res.content if format == "bytes" else res.content.decode("utf-8")

    def _write(self, path: str, data: str | bytes | Any, *, user: str | None = None) -> Op[None]:
        """Write ``data`` to ``path``, creating parent directories and replacing any existing
        file.

        Args:
            path: absolute path in the sandbox (or relative to the user's home).
            data: str (written as UTF-8), bytes, a binary file object or an iterable of bytes
                (those two are streamed, any size).
            user: write as this user of the sandbox: the file is theirs and only goes where
                they may write. Default: the template's user. Every ``files`` method takes it.

        Example::

            sbx.files.write("/root/hello.txt", "hi there")
            sbx.files.write("notes.txt", "mine", user="user")   # /home/user/notes.txt
        """
        params = _user_query(user)
        if isinstance(data, (str, bytes, bytearray, memoryview)):
            yield Http("POST", f"{self._base}/write", params=params, upload=multipart_upload(path, data))
        else:
            yield Http(
                "POST", f"{self._base}/stream/write", params=params, upload=multipart_upload(path, data)
            )

    def _write_stream(
        self, path: str, source: Any, progress: Progress | None = None, *, user: str | None = None
    ) -> Op[None]:
        """Stream ``source`` to ``path``, any size, with constant memory.

        Args:
            path: absolute path in the sandbox.
            source: a binary file object, an iterable of bytes, or bytes (the async SDK also
                takes async iterables and objects with an ``async read``).
            progress: called with the size of each chunk as it goes out.

        Example::

            with open("big.bin", "rb") as f:
                sbx.files.write_stream("/root/big.bin", f)
        """
        yield Http(
            "POST",
            f"{self._base}/stream/write",
            params=_user_query(user),
            upload=multipart_upload(path, source, progress),
            timeout=None,
        )

    def _open_stream(self, path: str, user: str | None = None) -> Op[Any]:
        # The server checks the file before it sends the first byte, so a missing file raises
        # NotFoundError here rather than in the middle of iteration.
        body = _as({"path": path}, user)
        return (yield Http("POST", f"{self._base}/stream/read", json=body, stream=True, timeout=None))

    @staticmethod
    def _next_chunk(stream: Any) -> Op[bytes | None]:
        try:
            chunk = yield StreamRead(stream)
        except BaseException:
            yield StreamClose(stream)
            raise
        if chunk:
            return bytes(chunk)
        yield StreamClose(stream)
        return None

    def _list(self, path: str, depth: int = 1, *, user: str | None = None) -> Op[list[EntryInfo]]:
        """Every entry under ``path`` (down to ``depth`` levels), sorted by path: the server's
        pages fetched one after another, at most 1000 of them (WarrenError ``bad_response``
        past them, or for a cursor the server sent before). For a huge directory use
        :meth:`list_page`.

        Example::

            names = [e.name for e in sbx.files.list("/root", depth=2)]
        """
        entries: list[EntryInfo] = []
        cursor = ""
        cursors = PageCursors(f"the entries under {path!r}", LIST_MAX_PAGES, first=cursor)
        while True:
            page = yield from self._list_page(path, depth, limit=LIST_MAX, cursor=cursor, user=user)
            entries += page.entries
            if not page.has_more:
                return entries
            cursor = cursors.follow(page.next_cursor)

    def _list_page(
        self,
        path: str,
        depth: int = 1,
        limit: int | None = None,
        cursor: str = "",
        *,
        user: str | None = None,
    ) -> Op[ListPage]:
        """One page of the entries under ``path``.

        Args:
            path, depth: as for :meth:`list`.
            limit: at most this many entries (server default 1000, at most 10000, and about
                1 MiB).
            cursor: the previous page's ``next_cursor``; "" for the first page.

        Example::

            page = sbx.files.list_page("/root", limit=100)
            while page.has_more:
                page = sbx.files.list_page("/root", limit=100, cursor=page.next_cursor)
        """
        body: dict[str, Any] = {"path": path, "depth": depth}
        if limit is not None:
            body["limit"] = limit
        if cursor:
            body["cursor"] = cursor
        res = yield Http("POST", f"{self._base}/list", json=_as(body, user))
        more = res.headers.get("x-has-more", "false") == "true"
        nxt = res.headers.get("x-next-cursor", "") if more else ""
        return ListPage([EntryInfo.from_json(e) for e in res.json()], nxt, more)

    def _get_info(self, path: str, *, user: str | None = None) -> Op[EntryInfo]:
        """What ``path`` is: type, size, mode, owner, modification time (NotFoundError if
        missing).

        Example::

            print(sbx.files.get_info("/root/hello.txt").size)
        """
        res = yield Http("POST", f"{self._base}/stat", json=_as({"path": path}, user))
        return EntryInfo.from_json(res.json())

    def _exists(self, path: str, *, user: str | None = None) -> Op[bool]:
        """Whether ``path`` exists in the sandbox.

        Example::

            if not sbx.files.exists("/root/out"):
                sbx.files.make_dir("/root/out")
        """
        try:
            yield from self._get_info(path, user=user)
        except NotFoundError:
            return False
        return True

    def _remove(self, path: str, *, user: str | None = None) -> Op[None]:
        """Delete a file, or a directory with everything in it.

        Example::

            sbx.files.remove("/root/out")
        """
        yield Http("POST", f"{self._base}/remove", json=_as({"path": path}, user))

    def _rename(self, old_path: str, new_path: str, *, user: str | None = None) -> Op[EntryInfo]:
        """Move ``old_path`` to ``new_path``; returns the moved entry.

        Example::

            sbx.files.rename("/root/hello.txt", "/root/out/hello.txt")
        """
        body = _as({"source": old_path, "destination": new_path}, user)
        res = yield Http("POST", f"{self._base}/move", json=body)
        return EntryInfo.from_json(res.json())

    def _make_dir(self, path: str, *, user: str | None = None) -> Op[bool]:
        """Create directory ``path`` and its parents. False when it already existed.

        Example::

            sbx.files.make_dir("/root/out/logs")
        """
        res = yield Http("POST", f"{self._base}/mkdir", json=_as({"path": path}, user))
        return bool(res.json().get("created"))

    def _download_url(self, path: str, *, expires: int = 3600, user: str | None = None) -> Op[SignedUrl]:
        """A URL that downloads ``path`` (GET) without an API key for ``expires`` seconds (at
        most 7 days).

        Example::

            url = sbx.files.download_url("/srv/report.pdf", expires=600).url
            httpx.get(url)  # no API key needed until it expires
        """
        return (yield from signed_url(self._sandbox_id, "download", path, expires, user))

    def _upload_url(self, path: str, *, expires: int = 3600, user: str | None = None) -> Op[SignedUrl]:
        """A URL that writes ``path`` (PUT the raw bytes) without an API key for ``expires``
        seconds (at most 7 days).

        Example::

            url = sbx.files.upload_url("/srv/input.csv").url
            httpx.put(url, content=open("input.csv", "rb"))
        """
        return (yield from signed_url(self._sandbox_id, "upload", path, expires, user))


class Files(_FilesBase):
    """``sbx.files`` of a :class:`~warren.Sandbox`."""

    _transport: SyncTransport

    @overload
    def read(self, path: str, format: Literal["text"] = "text", *, user: str | None = None) -> str: ...
    @overload
    def read(self, path: str, format: Literal["bytes"], *, user: str | None = None) -> bytes: ...
    def read(
        self, path: str, format: Literal["text", "bytes"] = "text", *, user: str | None = None
    ) -> str | bytes:
        """The whole file as text (UTF-8) or bytes. Files over 100 MiB: use :meth:`read_stream`.

        Args:
            path: path in the sandbox.
            format: ``"text"`` (default) or ``"bytes"``.
            user: read as this user of the sandbox (403 where they may not). Default: the
                template's user.

        Example::

            text = sbx.files.read("/root/hello.txt")
            raw = sbx.files.read("/root/image.png", format="bytes")
        """
        result: str | bytes = self._transport.run(self._read(path, format, user=user))
        return result

    def read_stream(self, path: str, *, user: str | None = None) -> Iterator[bytes]:
        """The file's bytes in chunks, any size, with constant memory. Raises NotFoundError at
        once for a missing file, and StreamError if the transfer breaks midway (never a
        silently short file).

        Example::

            with open("copy.bin", "wb") as f:
                for chunk in sbx.files.read_stream("/root/big.bin"):
                    f.write(chunk)
        """
        stream = self._transport.run(self._open_stream(path, user))
        return self._transport.iterate(lambda: self._next_chunk(stream))

    write = blocking(_FilesBase._write)
    write_stream = blocking(_FilesBase._write_stream)
    list = blocking(_FilesBase._list)
    list_page = blocking(_FilesBase._list_page)
    get_info = blocking(_FilesBase._get_info)
    exists = blocking(_FilesBase._exists)
    remove = blocking(_FilesBase._remove)
    rename = blocking(_FilesBase._rename)
    make_dir = blocking(_FilesBase._make_dir)
    download_url = blocking(_FilesBase._download_url)
    upload_url = blocking(_FilesBase._upload_url)

    def watch_dir(
        self, path: str, on_event: EventCallback, *, recursive: bool = True, user: str | None = None
    ) -> WatchHandle:
        """Watch a directory: ``on_event`` is called (from a thread of the handle's own) with
        each :class:`~warren.sdk.FilesystemEvent` until ``stop()``. Returns once the watch is in
        place, so every change after it is reported. NotFoundError for a missing directory,
        PayloadTooLargeError when the tree has more directories than a sandbox may watch.

        Example::

            h = sbx.files.watch_dir("/root/app", lambda e: print(e.type, e.path))
            ...
            h.stop()
        """
        conn = self._transport.run(open_watch(self._sandbox_id, path, recursive, user))
        handle = WatchHandle(self._transport, conn, on_event)
        handle._start_reader()
        return handle

    def create_watcher(self, path: str, *, recursive: bool = True, user: str | None = None) -> Watcher:
        """A polling watcher: the server keeps its events until ``get_new_events()``;
        ``remove()`` ends it.

        Example::

            w = sbx.files.create_watcher("/root/app")
            for e in w.get_new_events():
                print(e.type, e.path)
        """
        wid = self._transport.run(create_watcher(self._sandbox_id, path, recursive, user))
        return Watcher(self._transport, self._sandbox_id, wid)


class AsyncFiles(_FilesBase):
    """``sbx.files`` of an :class:`~warren.AsyncSandbox`."""

    _transport: AsyncTransport

    @overload
    async def read(self, path: str, format: Literal["text"] = "text", *, user: str | None = None) -> str: ...
    @overload
    async def read(self, path: str, format: Literal["bytes"], *, user: str | None = None) -> bytes: ...
    async def read(
        self, path: str, format: Literal["text", "bytes"] = "text", *, user: str | None = None
    ) -> str | bytes:
        """The whole file as text or bytes (see :meth:`Files.read`).

        Example::

            raw = await sbx.files.read("/root/image.png", format="bytes")
        """
        result: str | bytes = await self._transport.run(self._read(path, format, user=user))
        return result

    async def read_stream(self, path: str, *, user: str | None = None) -> AsyncIterator[bytes]:
        """The file's bytes in chunks (see :meth:`Files.read_stream`).

        Example::

            async for chunk in await sbx.files.read_stream("/root/big.bin"):
                ...
        """
        stream = await self._transport.run(self._open_stream(path, user))
        return self._transport.iterate(lambda: self._next_chunk(stream))

    write = awaiting(_FilesBase._write)
    write_stream = awaiting(_FilesBase._write_stream)
    list = awaiting(_FilesBase._list)
    list_page = awaiting(_FilesBase._list_page)
    get_info = awaiting(_FilesBase._get_info)
    exists = awaiting(_FilesBase._exists)
    remove = awaiting(_FilesBase._remove)
    rename = awaiting(_FilesBase._rename)
    make_dir = awaiting(_FilesBase._make_dir)
    download_url = awaiting(_FilesBase._download_url)
    upload_url = awaiting(_FilesBase._upload_url)

    async def watch_dir(
        self, path: str, on_event: EventCallback, *, recursive: bool = True, user: str | None = None
    ) -> AsyncWatchHandle:
        """As :meth:`Files.watch_dir`; ``on_event`` may be a coroutine function, run on a task
        of the handle's own.

        Example::

            handle = await sbx.files.watch_dir("/srv/out", lambda e: print(e.type, e.path))
            await handle.stop()
        """
        conn = await self._transport.run(open_watch(self._sandbox_id, path, recursive, user))
        handle = AsyncWatchHandle(self._transport, conn, on_event)
        handle._start_reader()
        return handle

    async def create_watcher(
        self, path: str, *, recursive: bool = True, user: str | None = None
    ) -> AsyncWatcher:
        """As :meth:`Files.create_watcher`.

        Example::

            watcher = await sbx.files.create_watcher("/srv/out")
            events = await watcher.get_new_events()
        """
        wid = await self._transport.run(create_watcher(self._sandbox_id, path, recursive, user))
        return AsyncWatcher(self._transport, self._sandbox_id, wid)
