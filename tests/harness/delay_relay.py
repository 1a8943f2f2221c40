"""A TCP relay that adds a round trip: every chunk read on one side is written to the other
``delay_s`` later (half the round trip each way), bandwidth unbounded (what it has read it
holds until due). For file transfers over a delayed link between the CP and an agent
(``tc netem`` is not available on this kernel): put it in front of the agent's gRPC port and dial
it. Run it in a process of its own (:func:`spawn`), so the delays do not wait behind the
caller's event loop or the GIL.

``python -m tests.harness.delay_relay LISTEN_PORT TARGET_HOST:PORT DELAY_MS`` (one way).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

CHUNK = 256 << 10


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay_s: float) -> None:
    """``src`` to ``dst``, each chunk ``delay_s`` after it was read, in order."""
    loop = asyncio.get_running_loop()
    due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def writer() -> None:
        while True:
            at, data = await due.get()
            if (wait := at - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    dst.write_eof()
                return
            dst.write(data)
            await dst.drain()

    task = asyncio.create_task(writer())
    try:
        while True:
            data = await src.read(CHUNK)
            due.put_nowait((loop.time() + delay_s, data))
            if not data:
                break
        await task
    finally:
        task.cancel()


async def _serve(listen_port: int, target: tuple[str, int], delay_s: float) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*target)
        except OSError:
            w.close()
            return
        for s in (w, uw):
            sock = s.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(_pump(r, uw, delay_s), _pump(ur, w, delay_s), return_exceptions=True)
        finally:
            w.close()
            uw.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def spawn(target: str, rtt_ms: float) -> Iterator[str]:
    """A relay process to ``target`` (``host:port``) adding ``rtt_ms`` of round trip; yields
    its address. Stopped (its process ended) on the way out."""
    port = free_port()
    cmd = [sys.executable, "-m", "tests.harness.delay_relay", str(port), target, str(rtt_ms / 2)]
    # Its tasks at SIGTERM are its business: nothing of it on the caller's stderr.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        line = proc.stdout.readline()
        assert line.strip() == "ready" and time.monotonic() < deadline, f"relay did not start: {line!r}"
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    host, port = sys.argv[2].rsplit(":", 1)
    asyncio.run(_serve(int(sys.argv[1]), (host, int(port)), float(sys.argv[3]) / 1000))
