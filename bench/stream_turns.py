"""One team's exec streams with big output beside another team's reads, with the CP's turns off
and on, side by side in one run (docs/security.md §24, ``services/transfer_turns.py``).

    nice -n -5 .venv/bin/python bench/stream_turns.py [--streams 32] [--duration 10] [--rounds 2]

A platform (a CP process, a real agent) per setting, alternated ``--rounds`` times: team A runs
``yes`` on ``--streams`` exec streams, each read as fast as it comes (raw WebSockets read in big
chunks, frames not parsed, in a process of their own so as not to slow B's client), while team
B reads ``GET /v1/sandboxes`` every 10 ms on one connection. Printed per run: B's reads p50/p99
alone and beside the streams, A's output MiB/s (WebSocket bytes received; with ``--cmd
'cat >/dev/null'`` the streams push stdin instead, bytes sent), and the CP's CPU
(cores). Run on an idle machine, quote ``uptime``. Root.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._platform import require_root
from bench.api_auth import cpu_seconds
from bench.transfer_turns import read_loop, row, table, two_teams

MIB = 1 << 20
STDIN_CMD = "cat >/dev/null"  # --cmd: the streams push stdin instead of reading output


def text_frame(text: str) -> bytes:
    """One masked client text frame (RFC 6455 5.2), payload under 64 KiB."""
    data, mask = text.encode(), os.urandom(4)
    size = bytes([0x80 | len(data)]) if len(data) < 126 else bytes([0xFE]) + len(data).to_bytes(2, "big")
    return b"\x81" + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


async def stream_loop(host: str, port: int, key: str, sid: str, cmd: str, stop: float) -> int:
    """One exec stream running ``cmd``, read until ``stop``; the bytes received."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET /v1/sandboxes/{sid}/exec/stream HTTP/1.1\r\nHost: cp\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        f"Sec-WebSocket-Version: 13\r\nX-API-Key: {key}\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101 "):
        raise RuntimeError(f"exec stream answered {head[:200]!r}")
    writer.write(text_frame(json.dumps({"type": "start", "cmd": "/bin/sh", "args": ["-c", cmd]})))
    got = 0
    try:
        if cmd == STDIN_CMD:  # the stdin side: pieces as fast as the CP takes them
            piece = text_frame(json.dumps({"type": "stdin", "data": "b" * 60000}))
            while time.perf_counter() < stop:
                writer.write(piece)
                await writer.drain()
                got += len(piece)
            return got
        while time.perf_counter() < stop:
            chunk = await reader.read(1 << 20)
            if not chunk:
                break
            got += len(chunk)
    finally:
        writer.close()
    return got


async def readers(argv: list[str]) -> None:
    """The streams' side, in its own process: prints the bytes received."""
    host, port, key, sid, n, cmd, duration = argv
    stop = time.perf_counter() + float(duration)
    done = await asyncio.gather(*(stream_loop(host, int(port), key, sid, cmd, stop) for _ in range(int(n))))
    print(sum(done))


async def one_run(turns: str, args: argparse.Namespace) -> str:
    async with two_teams(turns, "warren-bench-sturns-", "127.0.0.42") as t:
        host, port, pid = t.host, t.port, t.cp_pid
        alone = await read_loop(host, port, t.b_key, time.perf_counter() + args.duration / 2)
        stop = time.perf_counter() + args.duration
        cpu0, t0 = cpu_seconds(pid) or 0.0, time.perf_counter()
        argv = [host, str(port), t.a_key, t.sid, str(args.streams), args.cmd, str(args.duration)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--readers", *argv, stdout=asyncio.subprocess.PIPE
        )
        lat = await read_loop(host, port, t.b_key, stop)
        done = [int((await proc.communicate())[0])]
        elapsed = time.perf_counter() - t0
        cores = ((cpu_seconds(pid) or 0.0) - cpu0) / elapsed
    return row(turns, alone, lat, sum(done) / MIB / elapsed, cores)


async def main() -> None:
    if sys.argv[1:2] == ["--readers"]:
        await readers(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=32, help="team A's concurrent exec streams")
    ap.add_argument("--cmd", default="yes", help=f"each stream's command (sh -c); {STDIN_CMD!r}: stdin")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    require_root("bench/stream_turns.py")
    rows = [await one_run(turns, args) for _ in range(args.rounds) for turns in ("0", "2")]
    table(f"{args.streams} exec streams of {args.cmd!r} beside a reader", rows)


if __name__ == "__main__":
    asyncio.run(main())
