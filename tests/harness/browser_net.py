"""The browser tests' Chromium runs in a network namespace of its own, with loopback ports of
this machine's passed in to it.

Why: Chromium watches its network namespace (a netlink socket) and, on a link or address change,
aborts its requests in flight with ``net::ERR_NETWORK_CHANGED``. In CI the other workers' agents
add and remove veths all the time, and a dashboard POST was dropped that way in three runs
(sessions 31 to 33): the page then waited for a navigation that never came. A user's browser is
on another machine, where no sandbox's veth is seen; this makes the test's browser so too.

The namespace is the browser's own: :data:`WRAPPER` starts Chromium under ``unshare --net``,
brings ``lo`` up and writes the pid, so the namespace ends with the browser (nothing named to
leave behind). :meth:`BrowserNet.expose` makes ``127.0.0.1:PORT`` inside reach
``127.0.0.1:PORT`` here: a listening socket made inside the namespace (by a short thread that
entered it; a socket keeps the namespace it was made in), each connection piped to the same
port here by a thread of this module's. The same address and port on both sides, so origins,
cookies and the CSRF checks see what they would without it.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CLONE_NEWNET = 0x40000000
_CHUNK = 64 * 1024

# argv: the pid file, then Chromium's arguments. `unshare` without --fork execs: the pid written
# is the shell's, which then becomes Chromium's.
WRAPPER = """#!/bin/sh
exec unshare --net -- sh -c 'echo $$ > "$0" && ip link set lo up && exec {chromium} "$@"' {pid_file} "$@"
"""


class BrowserNet:
    """Chromium's own network namespace, and the loopback ports passed into it."""

    def __init__(self, chromium: str, workdir: Path) -> None:
        self.pid_file = workdir / "browser.pid"
        self.executable = workdir / "chromium-in-netns"
        self.executable.write_text(WRAPPER.format(chromium=chromium, pid_file=self.pid_file))
        self.executable.chmod(self.executable.stat().st_mode | stat.S_IXUSR)
        self._ns_fd: int | None = None
        self._exposed: dict[int, asyncio.AbstractServer] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="browser-net", daemon=True)
        self._thread.start()

    def attach(self) -> None:
        """Hold the started browser's namespace (its pid file is written before Chromium runs)."""
        pid = int(self.pid_file.read_text())
        self._ns_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)

    def expose(self, port: int) -> None:
        """``127.0.0.1:port`` in the browser's namespace reaches ``127.0.0.1:port`` here."""
        if port in self._exposed:
            return
        sock = _inside(self._namespace(), lambda: _listener(port))
        started = asyncio.run_coroutine_threadsafe(self._serve(port, sock), self._loop)
        self._exposed[port] = started.result(30)

    def close(self) -> None:
        async def stop() -> None:
            for server in self._exposed.values():
                server.close()
            self._exposed.clear()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        if self._ns_fd is not None:
            os.close(self._ns_fd)
            self._ns_fd = None

    def _namespace(self) -> int:
        if self._ns_fd is None:
            raise RuntimeError("no browser attached: call attach() once it is launched")
        return self._ns_fd

    async def _serve(self, port: int, sock: socket.socket) -> asyncio.AbstractServer:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                writer.close()  # as the port itself would: refused
                return
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                writer.close()
                up_writer.close()

        return await asyncio.start_server(accepted, sock=sock)


def _listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _inside(ns_fd: int, make: Callable[[], socket.socket]) -> socket.socket:
    """``make()`` run by a thread that entered the namespace and ends with it (setns(2) moves
    only the calling thread; the pool's one thread is joined at the ``with``'s end)."""

    def run() -> socket.socket:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(ns_fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")
        return make()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="browser-net-setns") as one:
        return one.submit(run).result()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the EOF on (a half-close, which HTTP clients may make); a
    reset closes the other side."""
    try:
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()
