"""``sbx.files``: read, write, list and manage files inside a sandbox.

``read``/``write`` move a whole file in one request (up to 100 MiB). ``read_stream`` and
``write_stream`` move any size in chunks with constant memory on the client and the server.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, overload

from warren.sdk._exceptions import NotFoundError
from warren.sdk._models import EntryInfo
from warren.sdk._transport import Http, Op, StreamClose, StreamRead, Upload, awaiting, blocking

if TYPE_CHECKING:
    from warren.sdk._transport import AsyncTransport, SyncTransport

__all__ = ["AsyncFiles", "Files", "multipart_upload"]

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


class _FilesBase:
    def __init__(self, transport: Any, sandbox_id: str) -> None:
        self._transport = transport
        self._base = f"/v1/sandboxes/{sandbox_id}/files"

    def _read(self, path: str, format: Literal["text", "bytes"] = "text") -> Op[Any]:
        res = yield Http("POST", f"{self._base}/read", json={"path": path})
        return res.content if format == "bytes" else res.content.decode("utf-8")

    def _write(self, path: str, data: str | bytes | Any) -> Op[None]:
        """Write ``data`` (str, bytes, a binary file object or an iterable of bytes) to ``path``,
        creating parent directories and replacing any existing file."""
        if isinstance(data, (str, bytes, bytearray, memoryview)):
            yield Http("POST", f"{self._base}/write", upload=multipart_upload(path, data))
        else:
            yield Http("POST", f"{self._base}/stream/write", upload=multipart_upload(path, data))

    def _write_stream(self, path: str, source: Any, progress: Progress | None = None) -> Op[None]:
        """Stream ``source`` (file object, iterable of bytes, bytes) to ``path``, any size.
        ``progress`` is called with the size of each chunk as it goes out."""
        yield Http(
            "POST",
            f"{self._base}/stream/write",
            upload=multipart_upload(path, source, progress),
            timeout=None,
        )

    def _open_stream(self, path: str) -> Op[Any]:
        # The server checks the file before it sends the first byte, so a missing file raises
        # NotFoundError here rather than in the middle of iteration.
        return (
            yield Http("POST", f"{self._base}/stream/read", json={"path": path}, stream=True, timeout=None)
        )

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

    def _list(self, path: str, depth: int = 1) -> Op[list[EntryInfo]]:
        res = yield Http("POST", f"{self._base}/list", json={"path": path, "depth": depth})
        return [EntryInfo.from_json(e) for e in res.json()]

    def _get_info(self, path: str) -> Op[EntryInfo]:
        res = yield Http("POST", f"{self._base}/stat", json={"path": path})
        return EntryInfo.from_json(res.json())

    def _exists(self, path: str) -> Op[bool]:
        try:
            yield from self._get_info(path)
        except NotFoundError:
            return False
        return True

    def _remove(self, path: str) -> Op[None]:
        yield Http("POST", f"{self._base}/remove", json={"path": path})

    def _rename(self, old_path: str, new_path: str) -> Op[EntryInfo]:
        res = yield Http("POST", f"{self._base}/move", json={"source": old_path, "destination": new_path})
        return EntryInfo.from_json(res.json())

    def _make_dir(self, path: str) -> Op[bool]:
        """Create ``path`` and its parents. False when it already existed."""
        res = yield Http("POST", f"{self._base}/mkdir", json={"path": path})
        return bool(res.json().get("created"))


class Files(_FilesBase):
    """``sbx.files`` of a :class:`~warren.Sandbox`."""

    _transport: SyncTransport

    @overload
    def read(self, path: str, format: Literal["text"] = "text") -> str: ...
    @overload
    def read(self, path: str, format: Literal["bytes"]) -> bytes: ...
    def read(self, path: str, format: Literal["text", "bytes"] = "text") -> str | bytes:
        """The whole file as text (UTF-8) or bytes. Files over 100 MiB: use :meth:`read_stream`."""
        result: str | bytes = self._transport.run(self._read(path, format))
        return result

    def read_stream(self, path: str) -> Iterator[bytes]:
        """The file's bytes in chunks. Raises NotFoundError at once for a missing file, and
        StreamError if the transfer breaks midway (never a silently short file)."""
        stream = self._transport.run(self._open_stream(path))
        return self._transport.iterate(lambda: self._next_chunk(stream))

    write = blocking(_FilesBase._write)
    write_stream = blocking(_FilesBase._write_stream)
    list = blocking(_FilesBase._list)
    get_info = blocking(_FilesBase._get_info)
    exists = blocking(_FilesBase._exists)
    remove = blocking(_FilesBase._remove)
    rename = blocking(_FilesBase._rename)
    make_dir = blocking(_FilesBase._make_dir)


class AsyncFiles(_FilesBase):
    """``sbx.files`` of an :class:`~warren.AsyncSandbox`."""

    _transport: AsyncTransport

    @overload
    async def read(self, path: str, format: Literal["text"] = "text") -> str: ...
    @overload
    async def read(self, path: str, format: Literal["bytes"]) -> bytes: ...
    async def read(self, path: str, format: Literal["text", "bytes"] = "text") -> str | bytes:
        result: str | bytes = await self._transport.run(self._read(path, format))
        return result

    async def read_stream(self, path: str) -> AsyncIterator[bytes]:
        """``async for chunk in await sbx.files.read_stream(path)``."""
        stream = await self._transport.run(self._open_stream(path))
        return self._transport.iterate(lambda: self._next_chunk(stream))

    write = awaiting(_FilesBase._write)
    write_stream = awaiting(_FilesBase._write_stream)
    list = awaiting(_FilesBase._list)
    get_info = awaiting(_FilesBase._get_info)
    exists = awaiting(_FilesBase._exists)
    remove = awaiting(_FilesBase._remove)
    rename = awaiting(_FilesBase._rename)
    make_dir = awaiting(_FilesBase._make_dir)
