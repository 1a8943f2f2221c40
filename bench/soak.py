"""Soak: minutes of a mixed load on a whole platform, watching for anything that grows.

    python bench/soak.py                          # 10 minutes, 3 agents, 6 workers (root)
    python bench/soak.py --minutes 2 --agents 1 --workers 3
    MALLOC_ARENA_MAX=2 python bench/soak.py --minutes 30   # the environment reaches every process

Starts the benchmarks' platform (``bench/_platform.py``: an embedded PostgreSQL, the CP in its
own process, real agents on 127.0.0.51-53 registered through the API). Each worker loops over
one sandbox's life through the REST API: create (``minimal``), 4 execs, 2 file writes (64 KiB),
1 file read, destroy; the scheduler spreads the sandboxes over the agents.

Every minute it prints throughput and p50/p99 latency per operation, and for the CP and each
agent process: RSS, open fds, threads, plus the mounts under the platform's directory and the
network namespaces each agent holds (its slot claims whose namespace exists); and each
process's RSS by kind of mapping (:func:`memory_kinds`: glibc's main heap, glibc's per-thread
arenas, other anonymous memory such as CPython's object arenas, files), so growth can be placed.

Start and end figures are taken with the load **quiesced** (workers finish their current cycle
and wait; the agents' network pools settle), after one minute of warm-up (first-use caches,
connection pools, the network slot pool filling): figures under load include whatever is in
flight at that instant and are only shown for the trend. The verdict, per process:

* mounts (under the platform's directory) and each agent's network namespaces: end == start
  (each sandbox's are gone after its destroy); the whole machine's counts are printed too, but
  other work on the machine moves them;
* open fds: end <= start + max(8, 10 %) (pooled connections may settle at another count);
* RSS: end <= start + max(16 MiB, 10 %), and the RSS trend over the per-minute samples below
  1 MiB/minute. CPython returns freed arenas lazily, so RSS moves in steps of a few MiB under
  load; a leak of one object per operation at this rate (thousands of operations a minute) grows
  without stopping and crosses both bounds within ten minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._platform import require_root, running_platform  # noqa: E402
from tests.harness.platform import Platform  # noqa: E402

AGENT_IPS = ("127.0.0.51", "127.0.0.52", "127.0.0.53")
OPS = ("create", "exec", "write", "read", "destroy")
MIB = 1 << 20
PAYLOAD = os.urandom(64 * 1024)
CLAIMS = Path("/run/warren/netslots")


@dataclass
class Proc:
    name: str
    pid: int
    data_dir: Path | None = None  # agents: whose network slots to count


@dataclass
class Sample:
    rss: dict[str, int] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    threads: dict[str, int] = field(default_factory=dict)
    # Resident bytes by kind of mapping (see memory_kinds): where RSS growth is.
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    netns: dict[str, int] = field(default_factory=dict)
    mounts: int = 0
    host_mounts: int = 0  # the whole machine's: other workloads move these too
    host_netns: int = 0


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


def count_mounts(under: Path) -> int:
    prefix = str(under)
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4].startswith(prefix))


def count_netns(data_dir: Path) -> int:
    """Network namespaces the agent of ``data_dir`` holds: its claimed slots whose netns exists."""
    n = 0
    with contextlib.suppress(FileNotFoundError):
        for claim in CLAIMS.iterdir():
            with contextlib.suppress(OSError):
                owner = claim.read_text().split("\n", 1)[0]
                if (
                    claim.name.isdigit()
                    and owner.startswith(str(data_dir))
                    and Path(f"/run/netns/warren-s{claim.name}").exists()
                ):
                    n += 1
    return n


def memory_kinds(pid: int) -> dict[str, int]:
    """Resident bytes of ``pid`` by mapping: ``heap`` (glibc's main arena, ``[heap]``),
    ``arenas`` (glibc's per-thread arenas: anonymous mappings starting on a 64 MiB boundary,
    where glibc reserves them), ``anon`` (every other anonymous mapping: CPython's object
    arenas, thread stacks, large allocations, gRPC's buffers) and ``file`` (code, libraries)."""
    kinds = {"heap": 0, "arenas": 0, "anon": 0, "file": 0}
    kind = "file"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=6)
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                name = head[5].strip() if len(head) > 5 else ""
                start = int(head[0].split("-")[0], 16)
                if name == "[heap]":
                    kind = "heap"
                elif name and not name.startswith("[anon"):
                    kind = "file"
                else:
                    kind = "arenas" if start % (64 * MIB) == 0 else "anon"
            elif head[0] == "Rss:":
                kinds[kind] += int(head[1]) * 1024
    return kinds


def sample(procs: list[Proc], base: Path) -> Sample:
    with open("/proc/self/mountinfo") as f:
        host_mounts = sum(1 for _ in f)
    host_netns = len(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else 0
    s = Sample(mounts=count_mounts(base), host_mounts=host_mounts, host_netns=host_netns)
    for p in procs:
        ps = psutil.Process(p.pid)
        s.rss[p.name] = ps.memory_info().rss
        s.fds[p.name] = ps.num_fds()
        s.threads[p.name] = ps.num_threads()
        with contextlib.suppress(OSError):
            s.kinds[p.name] = memory_kinds(p.pid)
        if p.data_dir is not None:
            s.netns[p.name] = count_netns(p.data_dir)
    return s


class Load:
    """Workers cycling sandboxes; latencies per operation in the current window."""

    def __init__(self, platform: Platform, workers: int) -> None:
        self.platform = platform
        self.workers = workers
        self.lat: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.cycles = 0
        self.paused = asyncio.Event()  # set: workers wait before their next cycle
        self.idle = 0

    def take(self) -> tuple[dict[str, list[float]], dict[str, int]]:
        lat, err = self.lat, self.errors
        self.lat, self.errors = defaultdict(list), defaultdict(int)
        return lat, err

    async def _op(self, op: str, coro: object) -> httpx.Response | None:
        t0 = time.perf_counter()
        try:
            r: httpx.Response = await coro  # type: ignore[misc]
        except httpx.HTTPError:
            self.errors[op] += 1
            return None
        if r.status_code >= 400:
            self.errors[op] += 1
            return None
        self.lat[op].append((time.perf_counter() - t0) * 1000)
        return r

    async def cycle(self, http: httpx.AsyncClient, n: int) -> None:
        r = await self._op(
            "create", http.post("/v1/sandboxes", json={"template": "minimal", "memory_mb": 256})
        )
        if r is None:
            await asyncio.sleep(1)  # a refused create (quota, capacity) must not spin
            return
        sb = r.json()["id"]
        try:
            for i in range(4):
                body = {"cmd": "/bin/sh", "args": ["-c", f"echo {n}-{i}"], "timeout_sec": 30}
                await self._op("exec", http.post(f"/v1/sandboxes/{sb}/exec", json=body))
            for i in range(2):
                write = http.post(
                    f"/v1/sandboxes/{sb}/files/write",
                    data={"path": f"/tmp/f{i}"},
                    files={"file": ("f", PAYLOAD)},
                )
                await self._op("write", write)
            await self._op("read", http.post(f"/v1/sandboxes/{sb}/files/read", json={"path": "/tmp/f0"}))
        finally:
            await self._op("destroy", http.delete(f"/v1/sandboxes/{sb}"))
        self.cycles += 1

    async def worker(self, n: int, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(
            base_url=self.platform.url, headers=self.platform.headers, timeout=120
        ) as http:
            while not stop.is_set():
                if self.paused.is_set():
                    self.idle += 1
                    while self.paused.is_set() and not stop.is_set():
                        await asyncio.sleep(0.1)
                    self.idle -= 1
                    continue
                await self.cycle(http, n)

    async def quiesce(self) -> None:
        self.paused.set()
        while self.idle < self.workers:
            await asyncio.sleep(0.1)


async def settled(procs: list[Proc], base: Path) -> Sample:
    """A sample once mounts and netns counts have stopped moving (destroys and pool refills
    finish after their answers)."""
    prev = sample(procs, base)
    for _ in range(60):
        await asyncio.sleep(1)
        cur = sample(procs, base)
        if cur.mounts == prev.mounts and cur.netns == prev.netns:
            return cur
        prev = cur
    return prev


def print_minute(minute: int, elapsed: float, load: Load, procs: list[Proc], s: Sample) -> None:
    lat, err = load.take()
    parts = []
    for op in OPS:
        xs = lat.get(op, [])
        rate = len(xs) / elapsed
        parts.append(
            f"{op} {rate:5.1f}/s p50 {pct(xs, 50):6.0f} p99 {pct(xs, 99):6.0f} ms err {err.get(op, 0)}"
        )
    print(f"[min {minute:2d}] " + " | ".join(parts), flush=True)
    res = "  ".join(
        f"{p.name}: rss {s.rss[p.name] / MIB:6.1f} MiB fds {s.fds[p.name]:4d} thr {s.threads[p.name]:3d}"
        + (f" netns {s.netns[p.name]:3d}" if p.name in s.netns else "")
        for p in procs
    )
    print(f"          {res}  mounts {s.mounts} (host {s.host_mounts}, host netns {s.host_netns})", flush=True)
    print(f"          RSS MiB by mapping (heap/arenas/anon/file): {kinds_line(procs, s)}", flush=True)


def kinds_line(procs: list[Proc], s: Sample) -> str:
    return "  ".join(
        f"{p.name} " + "/".join(f"{v / MIB:.1f}" for v in s.kinds[p.name].values())
        for p in procs
        if p.name in s.kinds
    )


def slope_mib_per_min(points: list[tuple[float, int]]) -> float:
    if len(points) < 3:
        return 0.0
    xs = [t / 60 for t, _ in points]
    ys = [r / MIB for _, r in points]
    return float(statistics.linear_regression(xs, ys).slope)


def verdict(procs: list[Proc], start: Sample, end: Sample, trend: dict[str, list[tuple[float, int]]]) -> bool:
    print("\nstart (quiesced, after warm-up) vs end (quiesced):")
    print(
        f"{'process':<10} {'RSS MiB':>17} {'fds':>11} {'threads':>9} {'netns':>9} {'RSS trend':>14}  verdict"
    )
    flat = True
    for p in procs:
        n = p.name
        rs, re_ = start.rss[n], end.rss[n]
        slope = slope_mib_per_min(trend[n])
        ok = re_ <= rs + max(16 * MIB, rs // 10) and slope < 1.0
        ok = ok and end.fds[n] <= start.fds[n] + max(8, start.fds[n] // 10)
        ok = ok and start.netns.get(n, 0) == end.netns.get(n, 0)
        flat = flat and ok
        ns = f"{start.netns[n]:>4}→{end.netns[n]:<4}" if n in start.netns else f"{'-':>9}"
        print(
            f"{n:<10} {rs / MIB:7.1f}→{re_ / MIB:<7.1f}  {start.fds[n]:>4}→{end.fds[n]:<4}  "
            f"{start.threads[n]:>3}→{end.threads[n]:<3}  {ns} {slope:+8.2f} MiB/min  "
            + ("flat" if ok else "GROWS")
        )
    print(f"RSS MiB by mapping (heap/arenas/anon/file), start: {kinds_line(procs, start)}")
    print(f"                                          end:   {kinds_line(procs, end)}")
    mounts_ok = start.mounts == end.mounts
    print(f"mounts under the platform dir: {start.mounts} → {end.mounts}  {'flat' if mounts_ok else 'GROWS'}")
    print(
        f"whole machine (other work included, not judged): mounts {start.host_mounts} → {end.host_mounts}, "
        f"netns {start.host_netns} → {end.host_netns}"
    )
    return flat and mounts_ok


class AgentTraces:
    """``--trace-agents``: ``tracemalloc`` in every agent (``bench/soak_trace/sitecustomize.py``,
    through the environment the agents inherit); :meth:`take` has each dump a snapshot, and
    :meth:`report` prints where the Python heap grew between two of them."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self._saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "WARREN_SOAK_TRACE_DIR")}
        here = str(ROOT / "bench" / "soak_trace")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        os.environ["WARREN_SOAK_TRACE_DIR"] = str(out)

    def restore(self) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    async def take(self, n: int, pids: list[int]) -> None:
        (self.out / f"take-{n}").touch()
        for _ in range(600):
            if all((self.out / f"{pid}-{n}.snap").exists() for pid in pids):
                return
            await asyncio.sleep(0.5)
        print(f"tracemalloc: snapshot {n} missing for some agents", flush=True)

    def report(self, procs: list[Proc], a: int, b: int, top: int = 8) -> None:
        import tracemalloc

        for p in procs:
            try:
                old = tracemalloc.Snapshot.load(str(self.out / f"{p.pid}-{a}.snap"))
                new = tracemalloc.Snapshot.load(str(self.out / f"{p.pid}-{b}.snap"))
            except OSError:
                continue
            total = sum(t.size for t in new.traces) - sum(t.size for t in old.traces)
            print(
                f"\n{p.name}: Python heap {sum(t.size for t in old.traces) / MIB:.2f} → "
                f"{sum(t.size for t in new.traces) / MIB:.2f} MiB ({total / 1024:+.0f} KiB); grew most at:"
            )
            for st in new.compare_to(old, "traceback")[:top]:
                recent = list(st.traceback)[-1:-5:-1]  # the innermost four frames, innermost first
                frames = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in recent)
                print(f"  {st.size_diff / 1024:+8.1f} KiB {st.count_diff:+6d} blocks  {frames}")


async def soak(minutes: int, agents: int, workers: int, traces: AgentTraces | None = None) -> bool:
    async with running_platform("warren-soak-", AGENT_IPS[:agents]) as (platform, base):
        procs = [Proc("cp", platform.cp.pid)]
        procs += [
            Proc(f"agent{i + 1}", a.proc.pid, a.data_dir) for i, a in enumerate(platform.agents) if a.proc
        ]
        print(
            f"platform up: CP pid {platform.cp.pid}, agents {[a.address for a in platform.agents]}",
            flush=True,
        )
        print(
            f"load: {workers} workers; machine: {os.cpu_count()} CPUs, load average {os.getloadavg()}",
            flush=True,
        )
        load = Load(platform, workers)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(load.worker(i, stop)) for i in range(workers)]
        trend: dict[str, list[tuple[float, int]]] = defaultdict(list)
        try:
            t_start = time.monotonic()
            await asyncio.sleep(60)
            print_minute(0, time.monotonic() - t_start, load, procs, sample(procs, base))
            await load.quiesce()
            start = await settled(procs, base)
            if traces is not None:
                await traces.take(0, [p.pid for p in procs[1:]])
            load.take()
            load.paused.clear()
            t0 = time.monotonic()
            for minute in range(1, minutes + 1):
                mark = time.monotonic()
                await asyncio.sleep(max(0.0, t0 + 60 * minute - mark))
                s = sample(procs, base)
                for p in procs:
                    trend[p.name].append((time.monotonic() - t0, s.rss[p.name]))
                print_minute(minute, time.monotonic() - mark, load, procs, s)
            await load.quiesce()
            end = await settled(procs, base)
            if traces is not None:
                await traces.take(1, [p.pid for p in procs[1:]])
                traces.report(procs[1:], 0, 1)
        finally:
            stop.set()
            load.paused.clear()
            await asyncio.gather(*tasks, return_exceptions=True)
        print(f"\n{load.cycles} sandbox cycles; load average now {os.getloadavg()}")
        return verdict(procs, start, end, trend)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=int, default=10, help="measured minutes (after 1 minute of warm-up)")
    ap.add_argument("--agents", type=int, default=3, choices=(1, 2, 3))
    ap.add_argument("--workers", type=int, default=6, help="concurrent sandbox cycles")
    ap.add_argument(
        "--trace-agents",
        metavar="DIR",
        type=Path,
        help="run tracemalloc in the agents, snapshots in DIR; print where their Python heap grew "
        "between start and end (slows the agents and doubles their RSS: not for the figures)",
    )
    args = ap.parse_args()
    require_root("bench/soak.py")
    traces = AgentTraces(args.trace_agents) if args.trace_agents else None
    try:
        flat = asyncio.run(soak(args.minutes, args.agents, args.workers, traces))
    finally:
        if traces is not None:
            traces.restore()
    print("verdict: FLAT (nothing grows past its tolerance)" if flat else "verdict: SOMETHING GROWS")
    sys.exit(0 if flat else 1)


if __name__ == "__main__":
    main()
