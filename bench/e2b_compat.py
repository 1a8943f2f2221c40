"""E2B's SDK through Warren's E2B-compatible listener, side by side with Warren's own SDK, in one
run (docs/e2b.md).

    sudo .venv/bin/python bench/e2b_compat.py [--n 200] [--creates 20] [--rounds 2]

Starts the platform the tests use (``bench/_platform.py``: embedded PostgreSQL, the CP in its own
process with its E2B port, one real agent), builds the small ``e2b-test`` template (user `user`,
as E2B's `base`; ``tests/harness/e2b.py``), then alternates, per round:

  exec    ``commands.run("true")`` on one running sandbox: Warren's SDK vs the ``e2b`` SDK
          (a Connect server stream through the listener, run as `user` through a login bash —
          what E2B's SDK asks for, so more work in the sandbox than Warren's ``/bin/sh -c``);
  create  ``Sandbox.create()`` → first ``commands.run("true")`` returns, same template, each
          sandbox killed after its sample, outside the timing.

Targets (issue 15): the e2b SDK within 1.5x of Warren's own SDK for both, and its
``commands.run`` p50 <= 10 ms. Everything shares the machine's 2 cores.

Beside the latencies it prints the CPU each command cost, per process (this client, the CP, the
agent, the sandbox's guest and the commands it started: ``/proc/<pid>/stat``), a figure that
holds when other work shares the machine and the wall-clock numbers do not; and the load average
before and after, which says how much the wall-clock numbers can be trusted.

The sandboxes' login shell reads the `minimal` rootfs's ``/etc/profile`` (the agent's
``WARREN_TEST_MINIMAL_DIR`` cache): one built before issue 15's profile edit
(``agent/rootfs_profile.py``) still forks ``id`` per command; to measure the edit on such a cache,
point ``WARREN_TEST_MINIMAL_DIR`` at a copy with ``trim_login_shell`` applied.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._platform import require_root, running_platform  # noqa: E402
from tests.harness.e2b import build_test_template  # noqa: E402
from tests.harness.platform import Platform  # noqa: E402


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def timed(fn: Callable[[], Any], n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


class CpuMeter:
    """CPU milliseconds per call of the client, the CP, the agent and one sandbox's guest (its
    own and, reaped by it, its commands'), from ``/proc/<pid>/stat``."""

    def __init__(self, platform: Platform) -> None:
        agent = platform.agents[0].proc
        assert agent is not None
        self.pids = {"cp": platform.cp.pid, "agent": agent.pid}
        self.sums: dict[str, float] = {}
        self.calls = 0

    def guests(self) -> set[int]:
        out = set()
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                    if (
                        int(stat.rsplit(")", 1)[1].split()[1]) == self.pids["agent"]
                        and b"guest.py" in (d / "cmdline").read_bytes()
                    ):
                        out.add(int(d.name))
                except (OSError, ValueError, IndexError):
                    continue
        return out

    @staticmethod
    def _ticks(pid: int) -> tuple[int, int]:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12]), int(f[13]) + int(f[14])

    def measure(self, guest: int, fn: Callable[[], Any], n: int) -> list[float]:
        pids = {**self.pids, "guest": guest}
        before = {k: self._ticks(p) for k, p in pids.items()}
        t0 = os.times()
        out = timed(fn, n, warmup=0)
        t1 = os.times()
        after = {k: self._ticks(p) for k, p in pids.items()}
        tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
        got = {k: (after[k][0] - before[k][0]) * tick_ms for k in pids}
        got["commands"] = (after["guest"][1] - before["guest"][1]) * tick_ms
        got["client"] = (t1.user + t1.system - t0.user - t0.system) * 1000
        for k, v in got.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.calls += n
        return out

    def line(self, name: str) -> str:
        parts = "  ".join(f"{k} {v / self.calls:5.2f}" for k, v in self.sums.items())
        total = sum(self.sums.values()) / self.calls
        return f"{name:<40} CPU ms/call: {parts}  (total {total:5.2f})"


def row(name: str, ms: list[float]) -> str:
    return f"{name:<40} p50 {pct(ms, 50):8.2f} ms   p99 {pct(ms, 99):8.2f} ms   n={len(ms)}"


def exec_round(
    platform: Platform, template: str, n: int, meters: tuple[CpuMeter, CpuMeter]
) -> tuple[list[float], list[float]]:
    import e2b

    from warren import Sandbox

    before = meters[0].guests()
    with Sandbox.create(template, **platform.sdk()) as wsbx:
        (guest,) = meters[0].guests() - before
        timed(lambda: wsbx.commands.run("true"), 5)
        warren_ms = meters[0].measure(guest, lambda: wsbx.commands.run("true"), n)
    before = meters[1].guests()
    esbx = e2b.Sandbox.create(template=template)
    try:
        (guest,) = meters[1].guests() - before
        timed(lambda: esbx.commands.run("true"), 5)
        e2b_ms = meters[1].measure(guest, lambda: esbx.commands.run("true"), n)
    finally:
        esbx.kill()
    return warren_ms, e2b_ms


def create_round(platform: Platform, template: str, n: int) -> tuple[list[float], list[float]]:
    import e2b

    from warren import Sandbox

    warren_ms: list[float] = []
    e2b_ms: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        wsbx = Sandbox.create(template, **platform.sdk())
        wsbx.commands.run("true")
        warren_ms.append((time.perf_counter() - t0) * 1000)
        wsbx.kill()
        t0 = time.perf_counter()
        esbx = e2b.Sandbox.create(template=template)
        esbx.commands.run("true")
        e2b_ms.append((time.perf_counter() - t0) * 1000)
        esbx.kill()
    return warren_ms, e2b_ms


def verdict(name: str, warren_ms: list[float], e2b_ms: list[float], p50_cap: float | None) -> None:
    w, e = statistics.median(warren_ms), statistics.median(e2b_ms)
    ok = e <= 1.5 * w and (p50_cap is None or pct(e2b_ms, 50) <= p50_cap)
    cap = f", p50 <= {p50_cap:.0f} ms" if p50_cap else ""
    print(f"  {name}: e2b/warren p50 = {e / w:.2f}x (target <= 1.5x{cap}) -> {'MET' if ok else 'MISSED'}\n")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="commands per SDK per round")
    ap.add_argument("--creates", type=int, default=20, help="creates per SDK per round")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    require_root("bench/e2b_compat.py")
    print(f"load average {_load()} at the start, {os.cpu_count()} CPUs")
    async with running_platform("warren-bench-e2b-", ("127.0.0.41",)) as (platform, _):
        template = await asyncio.to_thread(build_test_template, platform)
        os.environ.update(
            {
                "E2B_API_URL": platform.cp.e2b_url,
                "E2B_SANDBOX_URL": platform.cp.e2b_url,
                "E2B_API_KEY": platform.api_key,
            }
        )
        ex_w: list[float] = []
        ex_e: list[float] = []
        cr_w: list[float] = []
        cr_e: list[float] = []
        meters = (CpuMeter(platform), CpuMeter(platform))
        for r in range(args.rounds):
            w, e = await asyncio.to_thread(exec_round, platform, template, args.n, meters)
            ex_w += w
            ex_e += e
            w, e = await asyncio.to_thread(create_round, platform, template, args.creates)
            cr_w += w
            cr_e += e
            print(f"round {r + 1}/{args.rounds} done")
        print()
        print(row('Warren SDK commands.run("true")', ex_w))
        print(row('e2b SDK commands.run("true")', ex_e))
        verdict("exec", ex_w, ex_e, 10.0)
        print(meters[0].line('Warren SDK commands.run("true")'))
        print(meters[1].line('e2b SDK commands.run("true")') + "\n")
        print(row("Warren SDK create → first command", cr_w))
        print(row("e2b SDK create → first command", cr_e))
        verdict("create", cr_w, cr_e, None)
    print(f"load average {_load()} at the end")


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    asyncio.run(main())
