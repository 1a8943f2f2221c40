"""Warm pools through the whole platform (issue 17): cold vs warm creates, side by side in one run.

    sudo .venv/bin/python bench/warm_pool.py [--n 24] [--pool 8] [--burst 100] [--burst-pool 40]

Starts the platform `warren up` runs (an embedded PostgreSQL, the control plane in its own
uvicorn process, three real `warren agent` processes registered through the API), then:

  1. The first agent keeps a `minimal` pool of --pool (8: `warren up --warm-pool minimal=8`), set
     through `PUT /v1/hosts/{id}/warm-pools/minimal`. Rounds alternate, so the machine's drift
     hits both sides alike: a warm round waits until the pool is full again (refills run only
     while no create is under way) and times --pool creates; a cold round sets the pool to 0 first,
     so every create builds its sandbox. Per create it times
       REST  `POST /v1/sandboxes` → `POST /v1/sandboxes/{id}/exec` (`true`) over one keep-alive
             connection (a raw HTTP/1.1 client, as bench/schedule.py), and
       SDK   `Sandbox.create()` → `commands.run("true")`,
     and prints p50/p99 of each, cold and warm, with the control plane's own CPU per create
     (the CP process) and PostgreSQL's (every backend of the embedded server), each less
     their idle rate (the agents' heartbeats, every second here), measured for 10 s first.
  2. A first burst of --burst cold creates, not measured (each of the CP's database connections
     prepares the create's statements once). Then every agent keeps a pool of --burst-pool (40);
     once all are full, --burst (100) concurrent `POST /v1/sandboxes` (one connection each,
     opened beforehand): end-to-end p50/p99 and CPU per create of the CP and of PostgreSQL. The
     same burst follows once every host has reported its pool empty for 3 s (truly cold).
     --burst-only skips part 1, --no-bursts part 2; --probe prints, per burst, every process's
     CPU, what the agents logged (claims, refills, cold creates) and PostgreSQL's statements
     (bench/_burst_probe.py); --keep-logs DIR keeps the platform's logs.

Targets (issue 17): SDK warm p50 <= 15 ms; REST warm p50 <= 10 ms; CP CPU per create <= 1.5 ms;
100 concurrent creates from pools p50 <= 250 ms. Everything shares this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench._burst_probe import Probe  # noqa: E402
from bench._platform import require_root, running_platform  # noqa: E402
from bench.schedule import Conn, cpu_seconds, pct  # noqa: E402
from tests.harness.platform import Platform  # noqa: E402
from warren import Sandbox  # noqa: E402

AGENT_IPS = ("127.0.0.41", "127.0.0.42", "127.0.0.43")
FILL_TIMEOUT_S = 600.0


class Http(Conn):
    """bench/schedule.py's keep-alive connection, also reading chunked answers (exec's)."""

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nX-API-Key: {self.key}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        headers = {}
        for h in lines[1:]:
            if ":" in h:
                k, v = h.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding") == "chunked":
            data = b""
            while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                data += (await self.reader.readexactly(size + 2))[:-2]
            await self.reader.readuntil(b"\r\n")
        else:
            length = int(headers.get("content-length", "0"))
            data = await self.reader.readexactly(length) if length else b""
        return int(lines[0][9:12]), headers, data


def pg_seconds(postmaster: int) -> float:
    """CPU seconds of the embedded PostgreSQL: the postmaster and its live backends."""
    kids = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    total = 0.0
    for p in [postmaster, *map(int, kids)]:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a backend that just exited
        total += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return total


# The runtime each REST create ran on, as its answer says (a create names none: its host's
# default, crun where the agent found it works; session 13).
RAN_ON: collections.Counter[str] = collections.Counter()

# CPU seconds per second the CP and PostgreSQL spend with no create running: the agents'
# heartbeats (every second here, so pools are seen filling) and background work. Measured once
# (``calibrate``) and taken off every figure below.
IDLE = {"cp": 0.0, "pg": 0.0}


async def calibrate(cp_pid: int, pg_pid: int, seconds: float = 10.0) -> None:
    c0, p0, t0 = cpu_seconds(cp_pid), pg_seconds(pg_pid), time.perf_counter()
    await asyncio.sleep(seconds)
    dt = time.perf_counter() - t0
    IDLE["cp"], IDLE["pg"] = (cpu_seconds(cp_pid) - c0) / dt, (pg_seconds(pg_pid) - p0) / dt


class Meter:
    """CP and PostgreSQL CPU seconds over the samples it is running for, less the idle rate."""

    def __init__(self, cp_pid: int, pg_pid: int) -> None:
        self.cp_pid, self.pg_pid = cp_pid, pg_pid
        self.cp = self.pg = 0.0
        self.n = 0

    async def measure(self, fn: Callable[[], Awaitable[float]]) -> float:
        c0, p0, t0 = cpu_seconds(self.cp_pid), pg_seconds(self.pg_pid), time.perf_counter()
        out = await fn()
        dt = time.perf_counter() - t0
        self.cp += cpu_seconds(self.cp_pid) - c0 - IDLE["cp"] * dt
        self.pg += pg_seconds(self.pg_pid) - p0 - IDLE["pg"] * dt
        self.n += 1
        return out

    def per_create(self) -> str:
        n = max(self.n, 1)
        return f"CP {self.cp / n * 1000:.2f} ms + PostgreSQL {self.pg / n * 1000:.2f} ms"


async def set_pools(platform: Platform, size: int, hosts: list[str]) -> None:
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.user_headers, timeout=120) as http:
        for host in hosts:
            r = await http.put(f"/v1/hosts/{host}/warm-pools/minimal", json={"size": size})
            r.raise_for_status()


async def wait_full(platform: Platform, size: int, hosts: list[str]) -> None:
    """Until every host reports ``size`` ready members (heartbeats every second here) in a
    heartbeat received after this call: the count the CP holds may be from before the caller's
    last claims (session 13: the SDK's "warm" creates of a round then all went cold)."""
    deadline = time.monotonic() + FILL_TIMEOUT_S
    since = datetime.now(UTC)
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.user_headers, timeout=60) as http:
        while True:
            ready = []
            for host in hosts:
                got = (await http.get(f"/v1/hosts/{host}")).json()
                beat = got.get("last_heartbeat_at")
                fresh = beat is not None and datetime.fromisoformat(beat.replace("Z", "+00:00")) > since
                pools = got.get("warm_pools") or []
                ready.append(sum(p["ready"] for p in pools if p["template"] == "minimal") if fresh else -1)
            if all(r >= size for r in ready):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"pools did not fill in {FILL_TIMEOUT_S:.0f} s: {ready}")
            await asyncio.sleep(0.2)


async def wait_empty(platform: Platform, hosts: list[str], settle_s: float = 3.0) -> None:
    """Until every host has reported no ready member for ``settle_s`` in a row (a pool set back
    by a late re-application would fill again within a heartbeat or two)."""
    deadline = time.monotonic() + FILL_TIMEOUT_S
    since = time.monotonic()
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.user_headers, timeout=60) as http:
        while time.monotonic() - since < settle_s:
            for host in hosts:
                pools = (await http.get(f"/v1/hosts/{host}")).json().get("warm_pools") or []
                if any(p["ready"] for p in pools):
                    since = time.monotonic()
            if time.monotonic() > deadline:
                raise SystemExit(f"pools did not empty in {FILL_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.2)


async def rest_create_exec(url: str, key: str, meter: Meter) -> float:
    """REST create → first exec (ms) on a connection opened beforehand (the CP closes idle ones
    after 5 s, and pools fill for longer); the sandbox is destroyed outside the timing."""
    u = httpx.URL(url)
    conn = Http(u.host, u.port or 80, key)
    await conn.open()
    sid = ""

    async def timed() -> float:
        nonlocal sid
        t0 = time.perf_counter()
        status, _, data = await conn.request("POST", "/v1/sandboxes", b"{}")
        if status != 201:
            raise RuntimeError(f"create -> {status}: {data[:300]!r}")
        made = json.loads(data)
        sid = made["id"]
        RAN_ON[made.get("runtime", "?")] += 1
        body = json.dumps({"cmd": "true"}).encode()
        status, _, data = await conn.request("POST", f"/v1/sandboxes/{sid}/exec", body)
        if status != 200:
            raise RuntimeError(f"exec -> {status}: {data[:300]!r}")
        return (time.perf_counter() - t0) * 1000

    ms = await meter.measure(timed)
    await conn.request("DELETE", f"/v1/sandboxes/{sid}")
    conn.close()
    return ms


def sdk_create_run(kw: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    s = Sandbox.create(**kw)
    s.commands.run("true")
    ms = (time.perf_counter() - t0) * 1000
    s.kill()
    s.close()
    return ms


def line(name: str, xs: list[float], target: str = "") -> str:
    return f"  {name:<34} p50 {pct(xs, 50):8.1f} ms   p99 {pct(xs, 99):8.1f} ms   n={len(xs):<4} {target}"


async def one_at_a_time(platform: Platform, args: argparse.Namespace, cp_pid: int, pg_pid: int) -> None:
    host = platform.host_ids[0]
    kw = platform.sdk()
    # Warm-up: the CP's caches and channels, the SDK's connection pool.
    for _ in range(3):
        await rest_create_exec(platform.url, platform.api_key, Meter(cp_pid, pg_pid))
        await asyncio.to_thread(sdk_create_run, kw)
    rest: dict[str, list[float]] = {"cold": [], "warm": []}
    sdk: dict[str, list[float]] = {"cold": [], "warm": []}
    meters = {side: Meter(cp_pid, pg_pid) for side in rest}
    rounds = max(1, args.n // args.pool)
    for r in range(2 * rounds):
        side = "warm" if r % 2 == 0 else "cold"
        await set_pools(platform, args.pool if side == "warm" else 0, [host])
        for what in ("rest", "sdk"):
            if side == "warm":
                await wait_full(platform, args.pool, [host])
            for _ in range(args.pool):
                if what == "rest":
                    rest[side].append(await rest_create_exec(platform.url, platform.api_key, meters[side]))
                else:
                    sdk[side].append(await asyncio.to_thread(sdk_create_run, kw))
    print(f"1. one at a time, pool of {args.pool} on one agent ({rounds} rounds per side, alternated)")
    print(line("REST create -> first exec, cold", rest["cold"]))
    print(line("REST create -> first exec, warm", rest["warm"], "(target p50 <= 10 ms)"))
    print(line("SDK create -> commands.run, cold", sdk["cold"]))
    print(line("SDK create -> commands.run, warm", sdk["warm"], "(target p50 <= 15 ms)"))
    for side, m in meters.items():
        print(f"  CPU per REST create+exec, {side}: {m.per_create()}   (target CP <= 1.5 ms per create)")
    print(f"  runtimes the REST creates ran on: {dict(RAN_ON)}   load {os.getloadavg()[0]:.2f}")


def probe(platform: Platform, base: Path, cp_pid: int, pg_pid: int) -> Probe:
    procs = {"CP": cp_pid, "postgres": pg_pid}
    logs = {}
    for i, agent in enumerate(platform.agents):
        assert agent.proc is not None
        procs[f"agent {i + 1}"] = agent.proc.pid
        logs[f"agent {i + 1}"] = agent.log_path
    return Probe(procs, logs, base / "pg" / "postgres" / "postgres.log", platform.cp.db_url)


async def burst(
    platform: Platform,
    args: argparse.Namespace,
    cp_pid: int,
    pg_pid: int,
    warm: bool,
    prober: Probe | None,
    *,
    quiet: bool = False,
) -> None:
    u = httpx.URL(platform.url)
    conns = [Http(u.host, u.port or 80, platform.api_key) for _ in range(args.burst)]
    await asyncio.gather(*(c.open() for c in conns))
    # The same number of concurrent reads first: the CP's database pool opens its connections
    # (each costs the CP and PostgreSQL a few ms, and asyncpg's type introspection) here, not in
    # whichever burst comes first.
    await asyncio.gather(*(c.request("GET", "/v1/sandboxes?limit=1") for c in conns))
    await asyncio.sleep(0.2)  # let the CP accept them before the burst
    if prober is not None:
        await prober.start()
    c0, p0, t0 = cpu_seconds(cp_pid), pg_seconds(pg_pid), time.perf_counter()

    async def one(c: Http) -> tuple[float, str]:
        t0 = time.perf_counter()
        status, _, data = await c.request("POST", "/v1/sandboxes", b'{"timeout_sec": 0}')
        if status != 201:
            raise RuntimeError(f"create -> {status}: {data[:300]!r}")
        return (time.perf_counter() - t0) * 1000, json.loads(data)["id"]

    res = await asyncio.gather(*(one(c) for c in conns))
    dt = time.perf_counter() - t0
    cp_cpu = cpu_seconds(cp_pid) - c0 - IDLE["cp"] * dt
    pg_cpu = pg_seconds(pg_pid) - p0 - IDLE["pg"] * dt
    probed = await prober.stop(dt, len(res)) if prober is not None else ""
    for c in conns:
        c.close()
    # Fresh connections: the CP closed those idle for 5 s while the slowest create finished.
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.headers, timeout=120) as http:
        await asyncio.gather(*(http.delete(f"/v1/sandboxes/{sid}") for _, sid in res))
    lat = [ms for ms, _ in res]
    if quiet:
        return
    label = (
        f"{args.burst} concurrent, pools of {args.burst_pool}" if warm else f"{args.burst} concurrent, cold"
    )
    target = "(target p50 <= 250 ms)" if warm else ""
    print(line(label, lat, target) + f"  load {os.getloadavg()[0]:.2f}")
    n = len(lat)
    print(
        f"    CPU per create: CP {cp_cpu / n * 1000:.2f} ms + PostgreSQL {pg_cpu / n * 1000:.2f} ms"
        f"   (mean {statistics.fmean(lat):.1f} ms)"
    )
    if probed:
        print(probed)


def keep_logs(platform: Platform, base: Path, into: Path) -> None:
    """The agents', the CP's and PostgreSQL's logs, copied before the platform is removed."""
    into.mkdir(parents=True, exist_ok=True)
    for path in [platform.cp.log_path, base / "pg" / "postgres" / "postgres.log"]:
        shutil.copy(path, into / path.name)
    for i, agent in enumerate(platform.agents):
        shutil.copy(agent.log_path, into / f"agent{i + 1}.log")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24, help="one-at-a-time samples per side and client")
    ap.add_argument("--pool", type=int, default=8, help="the first agent's pool (warren up --warm-pool)")
    ap.add_argument("--burst", type=int, default=100, help="concurrent creates")
    ap.add_argument("--burst-pool", type=int, default=40, help="each agent's pool for the burst")
    ap.add_argument("--keep-logs", default="", help="copy the platform's logs into this directory")
    ap.add_argument("--burst-only", action="store_true", help="skip the one-at-a-time creates (part 1)")
    ap.add_argument("--no-bursts", action="store_true", help="part 1 only (an A/B of two trees)")
    ap.add_argument(
        "--probe", action="store_true",
        help="per process CPU, agent log events and PostgreSQL statements during each burst "
        "(statements logged: the bursts run a little slower)",
    )  # fmt: skip
    args = ap.parse_args()
    require_root("bench/warm_pool.py")
    # As bench/schedule.py: one team drives every create, so its request rate and quotas are
    # policy, not what is measured; the three agents share one machine that each reports whole.
    os.environ.update(
        WARREN_TEAM_RATE_LIMIT_PER_S="0", WARREN_QUOTA_SANDBOXES="100000", WARREN_QUOTA_VCPUS="100000",
        WARREN_QUOTA_MEMORY_MB="100000000", WARREN_OVERCOMMIT_CPU="1000", WARREN_OVERCOMMIT_MEMORY="100",
    )  # fmt: skip
    async with running_platform("warren-bench-warm-", AGENT_IPS) as (platform, base):
        cp_pid = platform.cp.pid
        pg_pid = int((base / "pg" / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
        print(f"platform up: CP {platform.url} (pid {cp_pid}), agents {', '.join(AGENT_IPS)}\n")
        await calibrate(cp_pid, pg_pid)
        idle = f"CP {IDLE['cp'] * 1000:.1f} ms/s, PostgreSQL {IDLE['pg'] * 1000:.1f} ms/s"
        print(f"idle CPU (heartbeats), taken off below: {idle}\n")
        if not args.burst_only:
            await one_at_a_time(platform, args, cp_pid, pg_pid)
        if args.no_bursts:
            if args.keep_logs:
                keep_logs(platform, base, Path(args.keep_logs))
            return
        print(f"\n2. bursts over {len(AGENT_IPS)} agents")
        prober = probe(platform, base, cp_pid, pg_pid) if args.probe else None
        # A first burst, not measured: each of the CP's database connections prepares the
        # create's statements once (asyncpg introspects their array types: 60 statements on 20
        # connections), which would otherwise land in whichever burst is measured first.
        await burst(platform, args, cp_pid, pg_pid, False, None, quiet=True)
        await set_pools(platform, args.burst_pool, platform.host_ids)
        await wait_full(platform, args.burst_pool, platform.host_ids)
        await burst(platform, args, cp_pid, pg_pid, True, prober)
        await set_pools(platform, 0, platform.host_ids)
        t_empty = time.monotonic()
        await wait_empty(platform, platform.host_ids)
        print(f"  (pools empty {time.monotonic() - t_empty:.1f} s after they were set to 0)")
        await burst(platform, args, cp_pid, pg_pid, False, prober)
        if args.keep_logs:
            keep_logs(platform, base, Path(args.keep_logs))


if __name__ == "__main__":
    asyncio.run(main())
