"""The guest's one event loop: ``epoll`` plus a timer heap, on one thread.

No per-request threads: every socket, pipe and the signal pipe is a callback here, and the guest
is the only caller of ``waitpid``, so exit statuses are never stolen.
"""

# ruff: noqa: SIM105

import _heapq
import select
import time

from .protocol import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


EPOLLIN = select.EPOLLIN


EPOLLOUT = select.EPOLLOUT


EPOLLERRHUP = select.EPOLLERR | select.EPOLLHUP


class Loop:
    def __init__(self) -> None:
        self.ep = select.epoll()
        self.cbs: dict[int, Callable[[int], None]] = {}
        self.masks: dict[int, int] = {}
        self.timers: list[list[Any]] = []
        self.seq = 0

    def watch(self, fd: int, mask: int, cb: "Callable[[int], None]") -> None:
        self.cbs[fd] = cb
        if fd in self.masks:
            self.ep.modify(fd, mask)
        else:
            self.ep.register(fd, mask)
        self.masks[fd] = mask

    def set_mask(self, fd: int, mask: int) -> None:
        if fd not in self.masks or self.masks[fd] == mask:
            return
        self.ep.modify(fd, mask)
        self.masks[fd] = mask

    def unwatch(self, fd: int) -> None:
        if fd in self.masks:
            del self.masks[fd]
            del self.cbs[fd]
            try:
                self.ep.unregister(fd)
            except OSError:
                pass

    def call_later(self, delay: float, fn: "Callable[[], None]") -> "list[Any]":
        self.seq += 1
        entry = [time.monotonic() + delay, self.seq, fn]
        _heapq.heappush(self.timers, entry)
        return entry

    @staticmethod
    def cancel(entry: "list[Any] | None") -> None:
        if entry is not None:
            entry[2] = None

    def run_once(self) -> None:
        timeout = -1.0
        if self.timers:
            timeout = max(0.0, self.timers[0][0] - time.monotonic())
        events = self.ep.poll(timeout, 256)
        for fd, ev in events:
            cb = self.cbs.get(fd)
            if cb is None:
                continue
            try:
                cb(ev)
            except Exception as e:  # one bad callback must never take PID 1 down
                log(f"callback for fd {fd} failed: {e!r}")
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            entry = _heapq.heappop(self.timers)
            fn = entry[2]
            if fn is not None:
                try:
                    fn()
                except Exception as e:
                    log(f"timer failed: {e!r}")
