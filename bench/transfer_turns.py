"""One team's concurrent uploads beside another team's reads, with the CP's transfer turns off
and on, side by side in one run (docs/security.md §24, ``services/transfer_turns.py``).

    nice -n -5 .venv/bin/python bench/transfer_turns.py [--uploads 64] [--mib 8] [--duration 10] [--rounds 2]

A platform (a CP process, a real agent) per setting, alternated ``--rounds`` times: team A
uploads ``--mib`` MiB files into its sandbox on ``--uploads`` connections, over and over, while
team B reads ``GET /v1/sandboxes`` every 10 ms on one connection. Printed per run: B's reads
p50/p99 alone and beside the uploads, A's upload MiB/s, and the CP's CPU (cores). The clients
are raw sockets (little CPU of their own); run on an idle machine, quote ``uptime``. Root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._platform import require_root, running_platform
from bench.api_auth import Conn, build, cpu_seconds
from tests.harness.tenant import signup
from warren.sdk import Sandbox

MIB = 1 << 20
BOUNDARY = "benchturns"


async def upload_loop(host: str, port: int, key: str, sid: str, idx: int, size: int, stop: float) -> int:
    """Upload ``size`` bytes to ``/root/up{idx}.bin`` again and again until ``stop``; bytes done."""
    form = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="path"\r\n\r\n/root/up{idx}.bin\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    chunk, done = b"\0" * MIB, 0
    while time.perf_counter() < stop:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            f"POST /v1/sandboxes/{sid}/files/stream/write HTTP/1.1\r\nHost: cp\r\nX-API-Key: {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(form) + size + len(tail)}\r\nConnection: close\r\n\r\n".encode()
            + form
        )
        for _ in range(size // MIB):
            writer.write(chunk)
            await writer.drain()
        writer.write(tail)
        answer = await reader.read()
        writer.close()
        if b" 204 " not in answer[:16]:
            raise RuntimeError(f"upload answered {answer[:200]!r}")
        done += size
    return done


async def read_loop(host: str, port: int, key: str, stop: float) -> list[float]:
    c = Conn(host, port)
    await c.open()
    raw, lat = build("GET", "/v1/sandboxes", f"{host}:{port}", {"X-API-Key": key}), []
    try:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            status, _ = await c.request(raw)
            lat.append(time.perf_counter() - t)
            if status != 200:
                raise RuntimeError(f"read answered {status}")
            await asyncio.sleep(0.01)
    finally:
        c.close()
    return lat


def pct(values: list[float], p: int) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, len(s) * p // 100)] * 1000


@dataclass(frozen=True)
class TwoTeams:
    """A platform with team A (the load, its sandbox ``sid``) and team B (the reader)."""

    host: str
    port: int
    a_key: str
    b_key: str
    sid: str
    cp_pid: int | None


@contextlib.asynccontextmanager
async def two_teams(turns: str, prefix: str, agent_ip: str) -> AsyncIterator[TwoTeams]:
    """A platform whose CP runs with ``turns`` (WARREN_TRANSFER_TURNS_PER_OWNER), two teams on
    it and A's 2 GiB sandbox, killed on the way out."""
    os.environ["WARREN_TRANSFER_TURNS_PER_OWNER"] = turns  # the CP process reads it at start
    async with running_platform(prefix, (agent_ip,)) as (platform, _):
        a = await asyncio.to_thread(signup, platform.url, "load")
        b = await asyncio.to_thread(signup, platform.url, "reader")
        sbx = await asyncio.to_thread(Sandbox.create, url=platform.url, api_key=a.api_key, memory_mb=2048)
        pid = platform.cp.proc.pid if platform.cp.proc else None
        port = int(platform.url.rsplit(":", 1)[1])
        try:
            yield TwoTeams("127.0.0.1", port, a.api_key, b.api_key, sbx.id, pid)
        finally:
            await asyncio.to_thread(sbx.kill)


async def one_run(turns: str, args: argparse.Namespace) -> str:
    async with two_teams(turns, "warren-bench-turns-", "127.0.0.41") as t:
        host, port, pid = t.host, t.port, t.cp_pid
        alone = await read_loop(host, port, t.b_key, time.perf_counter() + args.duration / 2)
        stop = time.perf_counter() + args.duration
        cpu0, t0 = cpu_seconds(pid) or 0.0, time.perf_counter()
        size = args.mib * MIB
        lat, *done = await asyncio.gather(
            read_loop(host, port, t.b_key, stop),
            *(upload_loop(host, port, t.a_key, t.sid, i, size, stop) for i in range(args.uploads)),
        )
        elapsed = time.perf_counter() - t0
        cores = ((cpu_seconds(pid) or 0.0) - cpu0) / elapsed
    return row(turns, alone, lat, sum(done) / MIB / elapsed, cores)


def row(turns: str, alone: list[float], beside: list[float], mib_s: float, cores: float) -> str:
    """One run's line of :func:`table`: the reader's latencies alone and beside the load."""
    by_itself = f"{pct(alone, 50):>9.2f} {pct(alone, 99):>9.2f}"
    crowded = f"{pct(beside, 50):>9.2f} {pct(beside, 99):>9.2f}"
    return f"{turns:>5} {by_itself}   {crowded} {mib_s:>10.1f} {cores:>9.2f}"


def table(title: str, rows: list[str]) -> None:
    print(f"\nturns: {title}, {os.cpu_count()} CPUs")
    head = f"{'alone p50':>9} {'p99 ms':>9}   {'beside p50':>9} {'p99 ms':>9}"
    print(f"{'turns':>5} {head} {'MiB/s':>10} {'CP cores':>9}")
    print("\n".join(rows))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uploads", type=int, default=64, help="team A's concurrent uploads")
    ap.add_argument("--mib", type=int, default=8, help="each upload's size")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    require_root("bench/transfer_turns.py")
    rows = [await one_run(turns, args) for _ in range(args.rounds) for turns in ("0", "2")]
    table(f"{args.uploads} uploads of {args.mib} MiB beside a reader", rows)


if __name__ == "__main__":
    asyncio.run(main())
