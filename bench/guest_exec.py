"""Guest-agent latency: startup to first health reply, and exec round trip of `true`.

    python bench/guest_exec.py                 # starts a guest as a host subprocess, measures
    python bench/guest_exec.py --socket PATH   # measures a guest that is already running
    python bench/guest_exec.py -n 2000 --python /usr/bin/python3

Prints p50/p99 of:
  startup        spawn `python3 -I -S guest.py` -> first answered `health` (host-side poll, 1 ms)
  python floor   spawn `python3 -I -S -c pass` -> exited: the interpreter's own share of startup
  health         one `health` RPC over the unix socket (connect + request + reply)
  exec true      GuestClient.exec("true") round trip: connect, spawn, wait, stream exit
  spawn floor    posix_spawn + waitpid of /bin/true in this process, no guest (the floor)
  exec 5 MiB     GuestClient.exec of `head -c 5M /dev/zero`, for throughput

Target (issue 3): the whole CP->agent->guest exec path p50 <= 5 ms, so the guest hop should
take a small fraction of it. The numbers include the asyncio client's own overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import warren.guest  # noqa: E402
from warren.agent.guest_client import GuestClient  # noqa: E402

GUEST_PY = warren.guest.GUEST_SCRIPT


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def report(name: str, xs: list[float]) -> None:
    print(f"{name:<14} p50 {pct(xs, 50) * 1e3:8.3f} ms   p99 {pct(xs, 99) * 1e3:8.3f} ms   (n={len(xs)})")


async def measure_startup(python: str, rounds: int) -> list[float]:
    out = []
    with tempfile.TemporaryDirectory(prefix="warren-guest-bench-") as d:
        for i in range(rounds):
            sock = os.path.join(d, f"g{i}.sock")
            client = GuestClient(sock)
            t0 = time.perf_counter()
            proc = subprocess.Popen([python, "-I", "-S", str(GUEST_PY), "--socket", sock])
            try:
                while True:
                    try:
                        await client.health()
                        break
                    except Exception:
                        await asyncio.sleep(0.001)
                out.append(time.perf_counter() - t0)
            finally:
                proc.kill()
                proc.wait()
    return out


def python_floor(python: str, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([python, "-I", "-S", "-c", "pass"], check=True)
        out.append(time.perf_counter() - t0)
    return out


def spawn_floor(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        pid = os.posix_spawn("/bin/true", ["true"], os.environ)
        os.waitpid(pid, 0)
        out.append(time.perf_counter() - t0)
    return out


async def run(args: argparse.Namespace) -> None:
    warren.guest.precompile()  # as the host agent does; the guest then loads bytecode
    proc = None
    tmp = None
    sock = args.socket
    if sock is None:
        tmp = tempfile.TemporaryDirectory(prefix="warren-guest-bench-")
        sock = os.path.join(tmp.name, "guest.sock")
        proc = subprocess.Popen([args.python, "-I", "-S", str(GUEST_PY), "--socket", sock])
    client = GuestClient(sock)
    try:
        await client.wait_ready(10)
        if proc is not None:
            report("startup", await measure_startup(args.python, args.startup_rounds))
            report("python floor", python_floor(args.python, args.startup_rounds))
        for _ in range(50):  # warm up both sides
            await client.exec("true", [])
        hs = []
        for _ in range(args.n):
            t0 = time.perf_counter()
            await client.health()
            hs.append(time.perf_counter() - t0)
        report("health", hs)
        xs = []
        for _ in range(args.n):
            t0 = time.perf_counter()
            r = await client.exec("true", [])
            xs.append(time.perf_counter() - t0)
            assert r.exit_code == 0
        report("exec true", xs)
        report("spawn floor", spawn_floor(args.n))
        big = []
        for _ in range(10):
            t0 = time.perf_counter()
            r = await client.exec("head", ["-c", str(5 << 20), "/dev/zero"])
            big.append(time.perf_counter() - t0)
            assert len(r.stdout) == 5 << 20
        report("exec 5 MiB", big)
        print(f"{'':<14} = {(5 << 20) / pct(big, 50) / 1e6:.0f} MB/s at p50")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        if tmp is not None:
            tmp.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", help="measure an already running guest at this socket")
    ap.add_argument("-n", type=int, default=1000, help="round trips per measurement")
    ap.add_argument("--startup-rounds", type=int, default=30)
    ap.add_argument(
        "--python",
        default="/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable,
        help="interpreter for the guest (the template's is Debian's /usr/bin/python3)",
    )
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
