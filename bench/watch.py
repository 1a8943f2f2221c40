"""Directory-watch event latency through the whole platform.

    python bench/watch.py              # embedded PostgreSQL + a CP process + 1 agent (root)
    python bench/watch.py --n 400

A process inside the sandbox creates files in a watched directory, one every ``--gap`` ms, each
named after ``time.time_ns()`` read just before its ``open``. The client holds a streamed watch
(``sbx.files.watch_dir``: SDK → CP WebSocket → agent ``WatchDir`` → guest inotify) and, for each
``create`` event, takes its arrival time minus the name: the sandbox and this client share the
kernel's clock, so no clock skew is involved. Also shown: the guest's own share (the event's
``timestamp_ns``, taken when the guest read the inotify event, minus the name) and the polling
watcher's (poll as fast as answers come).

Target: streamed event p50 <= 20 ms. The guest holds events ~4 ms to merge bursts
(``COALESCE`` in guest_agent/watch.py), which is part of every number here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._platform import require_root, running_platform  # noqa: E402
from warren import Sandbox  # noqa: E402
from warren.sdk import FilesystemEvent  # noqa: E402

WRITER = """
import os, sys, time
n, gap = int(sys.argv[1]), float(sys.argv[2]) / 1000
for _ in range(n):
    ts = time.time_ns()
    open(f"/bench/{ts}", "w").close()
    time.sleep(gap)
"""


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def row(name: str, ms: list[float], target: str = "") -> str:
    return f"{name:<44} p50 {pct(ms, 50):7.2f} ms   p99 {pct(ms, 99):7.2f} ms   n={len(ms):<4} {target}"


def streamed(sbx: Sandbox, n: int, gap_ms: float) -> tuple[list[float], list[float]]:
    e2e: list[float] = []
    guest: list[float] = []
    done = threading.Event()

    def on_event(e: FilesystemEvent) -> None:
        now = time.time_ns()
        if e.type != "create":
            return
        made = int(e.path.rsplit("/", 1)[1])
        e2e.append((now - made) / 1e6)
        guest.append((e.timestamp_ns - made) / 1e6)
        if len(e2e) >= n:
            done.set()

    sbx.commands.run("rm -rf /bench && mkdir /bench")
    h = sbx.files.watch_dir("/bench", on_event)
    try:
        sbx.commands.run(f"python3 -c '{WRITER}' {n} {gap_ms}", timeout=120)
        done.wait(60)
    finally:
        h.stop()
    return e2e, guest


def polled(sbx: Sandbox, n: int, gap_ms: float) -> list[float]:
    sbx.commands.run("rm -rf /bench && mkdir /bench")
    w = sbx.files.create_watcher("/bench")
    out: list[float] = []
    try:
        handle = sbx.commands.run(f"python3 -c '{WRITER}' {n} {gap_ms}", background=True, timeout=120)
        deadline = time.monotonic() + 60
        while len(out) < n and time.monotonic() < deadline:
            for e in w.get_new_events():
                if e.type == "create":
                    out.append((time.time_ns() - int(e.path.rsplit("/", 1)[1])) / 1e6)
        handle.wait()
    finally:
        w.remove()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="files per run")
    ap.add_argument("--gap", type=float, default=20.0, help="ms between files")
    args = ap.parse_args()
    require_root("bench/watch.py")
    async with running_platform("warren-bench-watch-", ("127.0.0.32",)) as (platform, _):
        print(f"platform up: CP {platform.url}, agent {platform.agents[0].address}; cpus {os.cpu_count()}\n")
        sbx = Sandbox.create(**platform.sdk())
        try:
            await asyncio.to_thread(streamed, sbx, 20, args.gap)  # warm-up
            e2e, guest = await asyncio.to_thread(streamed, sbx, args.n, args.gap)
            print(row("streamed watch: write → SDK callback", e2e, "(target p50 <= 20 ms)"))
            print(row("  of which write → guest read the event", guest))
            poll = await asyncio.to_thread(polled, sbx, args.n, args.gap)
            print(row("polling watcher: write → get_new_events()", poll))
        finally:
            sbx.kill()


if __name__ == "__main__":
    asyncio.run(main())
