"""What making one network slot's user namespace + netns costs (agent/slot_userns.make), trees
side by side in alternating rounds.

    sudo .venv/bin/python bench/slot_userns_ab.py [--n 40] [SRC_A SRC_B ...]

Each SRC is a tree's ``src`` dir (e.g. ``git worktree add /tmp/wt-old <commit>``): a worker
process per tree runs with ``PYTHONPATH=SRC``, makes the pair as the agent does on a create that
finds no prepared slot (the first make, which starts what the tree starts once, is left out),
and removes it outside the timing; ``--burst K`` makes K at once a round (``asyncio.gather``,
as K creates at once would) and times the whole burst. Rounds alternate between the trees so
load drifts on this shared machine hit all alike. Slots 16000+ are used: agents take the lowest
free ones. With no tree named (``make bench``): this tree's own ``src``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import asyncio, subprocess, sys, time
from warren.agent import slot_userns

async def main():
    first, burst = int(sys.argv[1]), int(sys.argv[2])
    slots = [(i, f"wbench-s{i}") for i in range(first, first + burst)]
    for line in sys.stdin:
        t0 = time.perf_counter()
        await asyncio.gather(*(slot_userns.make(i, netns) for i, netns in slots))
        ms = (time.perf_counter() - t0) * 1e3
        for i, netns in slots:
            subprocess.run(["ip", "netns", "delete", netns], check=True)
            await slot_userns.remove(i)
        print(f"{ms:.3f}", flush=True)

asyncio.run(main())
"""


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def _worker(first: int, burst: int, src: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": src}
    argv = [sys.executable, "-c", WORKER, str(first), str(burst)]
    return subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--burst", type=int, default=1, help="slots made at once a round (at most 100)")
    ap.add_argument("trees", nargs="*", help="a tree's src dir (default: this tree's)")
    args = ap.parse_args()
    args.trees = args.trees or [str(Path(__file__).resolve().parents[1] / "src")]
    workers = [_worker(16_000 + 100 * i, args.burst, src) for i, src in enumerate(args.trees)]
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
    what = "slot_userns.make" if args.burst == 1 else f"{args.burst} slot_userns.make at once, wall"
    print(f"{what}, n = {args.n} each, alternating, ms; load {load0[0]:.2f} → {load1[0]:.2f}")
    for src, xs in zip(args.trees, times, strict=True):
        print(f"{src:>40} p50 {statistics.median(xs):6.2f} p90 {pct(xs, 90):6.2f} p99 {pct(xs, 99):6.2f}")


if __name__ == "__main__":
    main()
