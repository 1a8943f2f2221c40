"""What one connection has yet to send: the frames queued in order, big pieces not copied.

A command's output goes to each of its clients (``attach`` subscribers, terminal clients), one
``send`` each. Until session 26 every connection copied what it could not send at once into a
``bytearray`` of its own: 16 clients that read nothing held 16 copies of the same output, grown
by reallocation in the guest's heap. glibc then raised its mmap threshold (a freed big block
sets it), so the copies came from the heap, interleaved, and what a cut client had held stayed
in it: the guest's charge reached 21-26 MiB of its 24 MiB reserve and kept up to 25 MiB after.

Here a piece of at least :data:`SHARE_MIN` bytes that cannot change (``bytes``, or a view of
``bytes``) is queued by reference, so the chunk a command's pipe gave is held once for every
client; smaller pieces (frame headers, byte-sized output) are gathered into a tail buffer of at
most :data:`TAIL_MAX`, so their per-object overhead stays off the heap. ``len()`` counts the
bytes queued for this connection alone (what ``lag.py`` and the water marks bound).
"""

import os
from _collections import deque  # not collections: its imports cost the guest's start

SHARE_MIN = 4096  # a piece this big (or bigger) that cannot change is queued, not copied
TAIL_MAX = 64 << 10  # small pieces gather into a tail buffer up to this size
IOV_MAX = 1024  # the most buffers one writev takes (Linux's UIO_MAXIOV)


class OutQueue:
    __slots__ = ("_parts", "_size", "_tail")

    def __init__(self) -> None:
        self._parts: deque[bytes | bytearray | memoryview] = deque()
        self._size = 0
        self._tail: bytearray | None = None  # the last part, while it takes small pieces

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def append(self, data: "bytes | bytearray | memoryview") -> None:
        n = len(data)
        if not n:
            return
        self._size += n
        if n >= SHARE_MIN and _immutable(data):
            self._parts.append(data)
            self._tail = None
            return
        tail = self._tail
        if tail is None or len(tail) + n > TAIL_MAX:
            tail = self._tail = bytearray()
            self._parts.append(tail)
        tail += data

    def clear(self) -> None:
        self._parts.clear()
        self._tail = None
        self._size = 0

    def write_to(self, fd: int) -> int:
        """Write what the socket takes now (``os.writev``: may raise BlockingIOError, OSError)
        and drop it from the queue; the bytes written."""
        parts = self._parts
        n = os.writev(fd, parts if len(parts) <= IOV_MAX else [parts[i] for i in range(IOV_MAX)])
        self._drop(n)
        return n

    def _drop(self, n: int) -> None:
        self._size -= n
        parts = self._parts
        while n:
            first = parts[0]
            k = len(first)
            if n < k:
                if type(first) is bytearray:
                    del first[:n]  # the tail may go on taking pieces after this
                else:
                    parts[0] = memoryview(first)[n:]
                return
            parts.popleft()
            if first is self._tail:
                self._tail = None
            n -= k


def _immutable(data: "bytes | bytearray | memoryview") -> bool:
    return type(data) is bytes or (type(data) is memoryview and type(data.obj) is bytes)
