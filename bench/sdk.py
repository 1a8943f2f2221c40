"""SDK latency and throughput, side by side with the agent's own RPC, in one run.

    python bench/sdk.py                    # embedded PostgreSQL + a CP process + 1 agent (root)
    python bench/sdk.py --n 300 --creates 30

Starts the platform the SDK tests use (``tests/harness/platform.py``): an embedded
PostgreSQL, the control plane in its own uvicorn process, and one real ``warren agent`` on
127.0.0.31 registered through the API (mTLS). Then it measures, with the blocking SDK:

  exec   SDK ``commands.run("true")`` (HTTP → CP → gRPC → agent → guest) vs. the same ``Exec``
         (``/bin/sh -c true``) sent straight to the agent over the CP's own mTLS channel;
  create SDK ``Sandbox.create()`` → first ``commands.run("true")`` returns (the sandbox is
         killed after each sample, outside the timing);
  files  ``files.write_stream`` / ``files.read_stream`` throughput for 1 MiB and 100 MiB.

Targets: SDK exec p50 <= 10 ms; create → first command p50 <= 200 ms; >= 100 MB/s each way for
100 MiB. Everything (PostgreSQL, CP, agent, sandbox, this client) shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._platform import require_root, running_platform  # noqa: E402
from tests.harness.platform import Platform  # noqa: E402
from warren import Sandbox  # noqa: E402
from warren.config import Settings  # noqa: E402
from warren.cp.hosts.client_pool import HostClientPool  # noqa: E402
from warren.cp.security.ca import CertificateAuthority  # noqa: E402
from warren.rpc import hostagent_pb2 as pb  # noqa: E402

MIB = 1 << 20


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def row(name: str, samples_ms: list[float], target: str = "") -> str:
    return (
        f"{name:<44} p50 {pct(samples_ms, 50):8.2f} ms   p99 {pct(samples_ms, 99):8.2f} ms   "
        f"n={len(samples_ms):<4} {target}"
    )


def timed(fn: Callable[[], Any], n: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def direct_exec(platform: Platform, sandbox_id: str, n: int) -> list[float]:
    """The same Exec on the agent's RPC, over the CP's own mTLS client identity."""
    ca = CertificateAuthority.from_settings(Settings(home=platform.cp.home, jwt_secret="x" * 40))
    pool = HostClientPool(ca)
    agent = platform.agents[0]
    client = pool.get_for(agent.host_uuid, agent.address)
    req = pb.ExecRequest(sandbox_id=sandbox_id, cmd="/bin/sh", args=["-c", "true"], timeout_sec=10)
    try:
        for _ in range(5):
            await client.stub.Exec(req, timeout=30)
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await client.stub.Exec(req, timeout=30)
            out.append((time.perf_counter() - t0) * 1000)
        return out
    finally:
        await pool.close()


def chunks(size: int) -> Iterator[bytes]:
    block = os.urandom(MIB)
    for i in range(size // MIB):
        yield i.to_bytes(8, "big") + block[8:]


def throughput(sbx: Sandbox, size: int, reps: int) -> tuple[list[float], list[float]]:
    up, down = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        sbx.files.write_stream("/root/bench.bin", chunks(size))
        up.append(size / MIB / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        got = sum(len(c) for c in sbx.files.read_stream("/root/bench.bin"))
        down.append(size / MIB / (time.perf_counter() - t0))
        assert got == size
    return up, down


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="exec samples per side")
    ap.add_argument("--creates", type=int, default=20, help="create → first command samples")
    ap.add_argument("--reps", type=int, default=3, help="transfers per file size")
    args = ap.parse_args()
    require_root("bench/sdk.py")

    async with running_platform("warren-bench-sdk-", ("127.0.0.31",)) as (platform, _):
        kw = platform.sdk()
        print(f"platform up: CP {platform.url} (pid {platform.cp.pid}), agent {platform.agents[0].address}\n")

        sbx = Sandbox.create(**kw)
        sdk_exec = timed(lambda: sbx.commands.run("true"), args.n)
        rpc_exec = await direct_exec(platform, sbx.id, args.n)
        print(row('SDK commands.run("true")', sdk_exec, "(target p50 <= 10 ms)"))
        print(row("agent RPC Exec /bin/sh -c true (mTLS)", rpc_exec))
        print(f"{'  → CP + SDK overhead':<44} p50 {pct(sdk_exec, 50) - pct(rpc_exec, 50):8.2f} ms\n")

        creates = []
        for _ in range(args.creates):
            t0 = time.perf_counter()
            s = Sandbox.create(**kw)
            s.commands.run("true")
            creates.append((time.perf_counter() - t0) * 1000)
            s.kill()
            s.close()
        print(row("SDK Sandbox.create() → first command", creates, "(target p50 <= 200 ms)") + "\n")

        for size, reps in ((MIB, max(args.reps, 10)), (100 * MIB, args.reps)):
            up, down = throughput(sbx, size, reps)
            label = f"{size // MIB} MiB"
            up_s, down_s = statistics.median(up), statistics.median(down)
            speeds = f"upload {up_s:7.1f} MiB/s   download {down_s:7.1f} MiB/s"
            # The target is for 100 MiB; 1 MiB shows what the per-transfer overhead costs.
            target = "; target >= 100 MB/s" if size >= 100 * MIB else ""
            print(f"files {label:>8}: {speeds}   (median of {reps}{target})")
        sbx.kill()
        sbx.close()


if __name__ == "__main__":
    asyncio.run(main())
