"""A big stdin pipe, and a big output, through an exec stream.

    python bench/exec_stream_stdin.py              # embedded PostgreSQL + a CP process + 1 agent (root)
    python bench/exec_stream_stdin.py --mib 64 --runs 3

``cat > /dev/null`` in a sandbox is sent ``--mib`` MiB of stdin over a bare WebSocket client
(32 KiB text frames, as the SDK sends them), then ``close_stdin``; timed from the first frame
to the ``exit`` frame. Each run also checks the command got every byte (``wc -c``). Then as
much output the other way: ``yes | head -c``, read to the ``exit`` frame.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import websockets.sync.client as ws_client  # noqa: E402

from bench._platform import require_root, running_platform  # noqa: E402
from tests.harness.platform import Platform  # noqa: E402
from warren import Sandbox  # noqa: E402

FRAME = 32 << 10  # the SDK's stdin frame


def pipe(platform: Platform, sid: str, mib: int) -> tuple[float, int]:
    """Seconds to push ``mib`` MiB through ``wc -c`` and the count it printed."""
    url = platform.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sid}/exec/stream"
    chunk = json.dumps({"type": "stdin", "data": "x" * FRAME})
    with ws_client.connect(url, additional_headers=platform.headers, compression=None, max_size=None) as c:
        c.send(json.dumps({"type": "start", "cmd": "/bin/sh", "args": ["-c", "wc -c"]}))
        assert json.loads(c.recv(timeout=30))["type"] == "start"
        t0 = time.perf_counter()
        for _ in range(mib * (1 << 20) // FRAME):
            c.send(chunk)
        c.send(json.dumps({"type": "close_stdin"}))
        out = ""
        while True:
            f = json.loads(c.recv(timeout=120))
            if f["type"] == "stdout":
                out += f["data"]
            elif f["type"] == "exit":
                break
        return time.perf_counter() - t0, int(out.strip() or "0")


def output(platform: Platform, sid: str, mib: int) -> tuple[float, int]:
    """Seconds to read ``mib`` MiB of ``yes`` output through the stream, and the bytes read."""
    url = platform.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sid}/exec/stream"
    with ws_client.connect(url, additional_headers=platform.headers, compression=None, max_size=None) as c:
        script = f"yes xxxxxxx | head -c {mib << 20}"
        c.send(json.dumps({"type": "start", "cmd": "/bin/sh", "args": ["-c", script]}))
        assert json.loads(c.recv(timeout=30))["type"] == "start"
        t0, got = time.perf_counter(), 0
        while True:
            f = json.loads(c.recv(timeout=120))
            if f["type"] == "stdout":
                got += len(f["data"])
            elif f["type"] == "exit":
                return time.perf_counter() - t0, got


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    require_root("bench/exec_stream_stdin.py")
    async with running_platform("warren-bench-stdin-", ("127.0.0.34",)) as (platform, _):
        print(f"platform up: CP {platform.url}; cpus {os.cpu_count()}; load {os.getloadavg()[0]:.2f}")
        sbx = Sandbox.create(**platform.sdk())
        try:
            await asyncio.to_thread(pipe, platform, sbx.id, 4)  # warm-up
            for _ in range(args.runs):
                secs, got = await asyncio.to_thread(pipe, platform, sbx.id, args.mib)
                assert got == args.mib << 20, f"the command got {got} bytes of {args.mib << 20}"
                print(f"{args.mib} MiB stdin -> wc -c: {secs:6.2f} s  {args.mib / secs:7.1f} MiB/s"
                      f"   load {os.getloadavg()[0]:.2f}")  # fmt: skip
            for _ in range(args.runs):
                secs, got = await asyncio.to_thread(output, platform, sbx.id, args.mib)
                assert got == args.mib << 20, f"read {got} bytes of {args.mib << 20}"
                print(f"{args.mib} MiB stdout <- yes:    {secs:6.2f} s  {args.mib / secs:7.1f} MiB/s"
                      f"   load {os.getloadavg()[0]:.2f}")  # fmt: skip
        finally:
            sbx.kill()


if __name__ == "__main__":
    asyncio.run(main())
