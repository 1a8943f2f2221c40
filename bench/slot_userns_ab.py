"""What making one network slot's user namespace + netns costs (agent/slot_userns.make), trees
side by side in alternating rounds.

    sudo .venv/bin/python bench/slot_userns_ab.py [--n 40] SRC_A SRC_B ...

Each SRC is a tree's ``src`` dir (e.g. ``git worktree add /tmp/wt-old <commit>``): a worker
process per tree runs with ``PYTHONPATH=SRC``, makes the pair as the agent does on a create that
finds no prepared slot (the first make, which starts what the tree starts once, is left out),
and removes it outside the timing. Rounds alternate between the trees so load drifts on this
shared machine hit all alike. Slots 16340+ are used: agents take the lowest free ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

WORKER = r"""
import asyncio, subprocess, sys, time
from warren.agent import slot_userns

async def main():
    index = int(sys.argv[1])
    netns = f"wbench-s{index}"
    for line in sys.stdin:
        t0 = time.perf_counter()
        await slot_userns.make(index, netns)
        ms = (time.perf_counter() - t0) * 1e3
        subprocess.run(["ip", "netns", "delete", netns], check=True)
        await slot_userns.remove(index)
        print(f"{ms:.3f}", flush=True)

asyncio.run(main())
"""


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def _worker(index: int, src: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": src}
    argv = [sys.executable, "-c", WORKER, str(index)]
    return subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("trees", nargs="+", help="a tree's src dir")
    args = ap.parse_args()
    workers = [_worker(16_340 + i, src) for i, src in enumerate(args.trees)]
    times: list[list[float]] = [[] for _ in workers]
    load0 = os.getloadavg()
    try:
        for round_ in range(args.n + 1):
            for i, w in enumerate(workers):
                assert w.stdin is not None and w.stdout is not None
                w.stdin.write("go\n")
                w.stdin.flush()
                ms = float(w.stdout.readline())
                if round_:
                    times[i].append(ms)
    finally:
        for w in workers:
            assert w.stdin is not None
            w.stdin.close()
            w.wait()
    load1 = os.getloadavg()
    print(f"slot_userns.make, n = {args.n} each, alternating, ms; load {load0[0]:.2f} → {load1[0]:.2f}")
    for src, xs in zip(args.trees, times, strict=True):
        print(f"{src:>40} p50 {statistics.median(xs):6.2f} p90 {pct(xs, 90):6.2f} p99 {pct(xs, 99):6.2f}")


if __name__ == "__main__":
    main()
