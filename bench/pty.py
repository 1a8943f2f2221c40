"""Terminal keystroke echo through the whole platform.

    python bench/pty.py              # embedded PostgreSQL + a CP process + 1 agent (root)
    python bench/pty.py --n 2000

One byte is typed into a terminal and timed until its echo comes back, one keystroke at a
time, over SDK → CP WebSocket → agent ``PtyStream`` → guest → PTY and back:

  tty echo        ``cat`` on a cooked terminal: the kernel's line discipline echoes the byte
  program echo    ``stty raw -echo; cat``: the byte reaches ``cat``, which writes it back
  raw WebSocket   the program echo with a bare WebSocket client instead of the SDK (the SDK's
                  reader thread and callback left out)

Target: keystroke echo p50 <= 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import websockets.sync.client as ws_client  # noqa: E402

from bench._platform import require_root, running_platform  # noqa: E402
from tests.harness.platform import Platform  # noqa: E402
from warren import Sandbox  # noqa: E402

KEYS = b"abcdefghijklmnopqrstuvwxyz"


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def row(name: str, ms: list[float], target: str = "") -> str:
    return f"{name:<36} p50 {pct(ms, 50):7.2f} ms   p99 {pct(ms, 99):7.2f} ms   n={len(ms):<5} {target}"


def sdk_echo(sbx: Sandbox, cmd: str, n: int) -> list[float]:
    got = threading.Event()
    want = bytearray()

    def on_data(data: bytes) -> None:
        if want and want[0:1] in data:
            got.set()

    t = sbx.pty.create(cmd=cmd, on_data=on_data)
    try:
        time.sleep(0.5)  # let `stty` take effect before the first key
        out: list[float] = []
        for i in range(n):
            key = KEYS[i % len(KEYS) : i % len(KEYS) + 1]
            want[:] = key
            got.clear()
            t0 = time.perf_counter()
            t.send_input(key)
            if not got.wait(5):
                raise RuntimeError(f"no echo of {key!r}")
            out.append((time.perf_counter() - t0) * 1e3)
        return out
    finally:
        t.kill()


def ws_echo(platform: Platform, sid: str, n: int) -> list[float]:
    url = platform.url.replace("http", "ws", 1) + f"/v1/sandboxes/{sid}/pty"
    with ws_client.connect(url, additional_headers=platform.headers, compression=None) as c:
        c.send(json.dumps({"type": "start", "cols": 80, "rows": 24, "cmd": "/bin/sh",
                           "args": ["-c", "stty raw -echo; echo ready; exec cat"]}))  # fmt: skip
        assert json.loads(c.recv(timeout=10))["type"] == "started"
        buf = b""
        while b"ready" not in buf:
            msg = c.recv(timeout=10)
            buf += msg if isinstance(msg, bytes) else b""
        out: list[float] = []
        for i in range(n):
            key = KEYS[i % len(KEYS) : i % len(KEYS) + 1]
            t0 = time.perf_counter()
            c.send(key)
            while True:
                msg = c.recv(timeout=5)
                if isinstance(msg, bytes) and key in msg:
                    break
            out.append((time.perf_counter() - t0) * 1e3)
        c.send(json.dumps({"type": "signal", "signal": 9}))
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="keystrokes per measurement")
    args = ap.parse_args()
    require_root("bench/pty.py")
    async with running_platform("warren-bench-pty-", ("127.0.0.33",)) as (platform, _):
        print(f"platform up: CP {platform.url}, agent {platform.agents[0].address}; cpus {os.cpu_count()}\n")
        sbx = Sandbox.create(**platform.sdk())
        try:
            await asyncio.to_thread(sdk_echo, sbx, "cat", 50)  # warm-up
            tty = await asyncio.to_thread(sdk_echo, sbx, "cat", args.n)
            prog = await asyncio.to_thread(sdk_echo, sbx, "stty raw -echo; exec cat", args.n)
            raw = await asyncio.to_thread(ws_echo, platform, sbx.id, args.n)
            print(row("tty echo (SDK)", tty, "(target p50 <= 5 ms)"))
            print(row("program echo (SDK)", prog))
            print(row("program echo (raw WebSocket)", raw))
        finally:
            sbx.kill()


if __name__ == "__main__":
    asyncio.run(main())
