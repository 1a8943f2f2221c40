"""E2B's ``Sandbox.fork`` through Warren's E2B-compatible listener (docs/e2b.md §2 "Fork"), runc
and gVisor sources side by side in one run, next to a plain create of the same template.

    sudo .venv/bin/python bench/e2b_fork.py [--n 5] [--counts 1,4] [--mib 16]

Starts the platform the tests use (``bench/_platform.py``: embedded PostgreSQL, the CP in its own
process with its E2B port, one real agent) and builds the small ``e2b-test`` template. Per
runtime, one source sandbox (created through Warren's API, as the E2B API has no runtime) holds
``--mib`` MiB it wrote itself, so a fork has the source's changes to carry. Then, alternating
between the runtimes, ``--n`` times each:

  create     ``Sandbox.create`` (the e2b SDK) → its first ``commands.run("true")``: the baseline;
  fork(k)    ``Sandbox.fork(source, count=k)`` → every fork's first ``commands.run("true")``,
             for each k of ``--counts`` (one snapshot of the source, k creates from it, the
             snapshot deleted; runc: a filesystem snapshot to the store; gVisor: a memory
             snapshot on the host, its store layers copied);
  paused     how long the source did not answer during a fork(1): a thread runs
             ``commands.run("true")`` on it back to back, and the longest gap is printed,
             with the commands refused meanwhile. Since session 31 a command sent while the
             source is paused for its snapshot waits for the resume (services/snapshot_hold.py)
             instead of being refused: the gap is then the longest a command waited, and the
             refused count 0 (before, ~14 a fork, each one the SDK's SandboxNotRunningException).

Forks are killed after each sample, outside the timing. Load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._platform import require_root, running_platform  # noqa: E402
from tests.harness.e2b import build_test_template  # noqa: E402
from tests.harness.platform import Platform  # noqa: E402

RUNTIMES = ("runc", "gvisor")


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def _source(platform: Platform, template: str, runtime: str, mib: int) -> str:
    body = {"template": template, "runtime": runtime, "memory_mb": 512, "timeout_sec": 0}
    r = httpx.post(f"{platform.url}/v1/sandboxes", json=body, headers=platform.headers, timeout=120)
    r.raise_for_status()
    sid = str(r.json()["id"])
    script = f"head -c {mib}M /dev/urandom > /home/user/data.bin && sync"
    run = {"cmd": "/bin/sh", "args": ["-c", script], "timeout_sec": 120}
    r = httpx.post(f"{platform.url}/v1/sandboxes/{sid}/exec", json=run, headers=platform.headers, timeout=180)
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    return sid


def _create(template: str) -> float:
    import e2b

    t0 = time.perf_counter()
    sbx = e2b.Sandbox.create(template=template)
    sbx.commands.run("true")
    ms = _ms(t0)
    sbx.kill()
    return ms


def _fork(source: str, count: int) -> float:
    import e2b

    t0 = time.perf_counter()
    forks = e2b.Sandbox.fork(source, count=count, timeout=300)
    for f in forks:
        assert isinstance(f, e2b.Sandbox), f
        f.commands.run("true")
    ms = _ms(t0)
    for f in forks:
        f.kill()
    return ms


def _longest_gap(source: str, during: threading.Event, stop: threading.Event) -> list[float]:
    """Back-to-back ``commands.run("true")`` on the source; the gaps seen while ``during``: from
    the start of a command to the end of the next one that succeeds (a command that waited out
    the source's pause for its snapshot is its own gap; one refused meanwhile, "not running" to
    the SDK, as before session 31, is part of the next one's)."""
    import e2b

    sbx = e2b.Sandbox.connect(source)
    gaps: list[float] = []
    refused = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        while True:
            try:
                sbx.commands.run("true")
                break
            except e2b.SandboxException:
                refused += 1
                time.sleep(0.005)
        if during.is_set():
            gaps.append(_ms(t0))
    print(f"    ({refused} commands refused while the source was paused: 0 since they wait)")
    return gaps


def _paused(source: str) -> float:
    during, stop = threading.Event(), threading.Event()
    out: list[float] = []
    t = threading.Thread(target=lambda: out.extend(_longest_gap(source, during, stop)))
    t.start()
    time.sleep(0.3)
    during.set()
    _fork(source, 1)
    stop.set()
    t.join()
    return max(out, default=0.0)


def _row(name: str, ms: list[float]) -> str:
    return f"  {name:<28} p50 {statistics.median(ms):8.1f} ms   max {max(ms):8.1f} ms   n={len(ms)}"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5, help="samples per runtime and kind")
    ap.add_argument("--counts", default="1,4", help="fork counts to time")
    ap.add_argument("--mib", type=int, default=16, help="MiB the source writes before it is forked")
    args = ap.parse_args()
    require_root("bench/e2b_fork.py")
    counts = [int(c) for c in args.counts.split(",")]
    print(f"load average {_load()} at the start, {os.cpu_count()} CPUs")
    async with running_platform("warren-bench-fork-", ("127.0.0.42",)) as (platform, _):
        template = await asyncio.to_thread(build_test_template, platform)
        url = platform.cp.e2b_url
        os.environ.update({"E2B_API_URL": url, "E2B_SANDBOX_URL": url, "E2B_API_KEY": platform.api_key})
        sources = {rt: await asyncio.to_thread(_source, platform, template, rt, args.mib) for rt in RUNTIMES}
        samples: dict[str, list[float]] = {}
        for _ in range(args.n):
            for rt in RUNTIMES:
                samples.setdefault("create (runc)", []).append(await asyncio.to_thread(_create, template))
                for k in counts:
                    ms = await asyncio.to_thread(_fork, sources[rt], k)
                    samples.setdefault(f"fork({k}) {rt}", []).append(ms)
                gap = await asyncio.to_thread(_paused, sources[rt])
                samples.setdefault(f"source's longest wait {rt}", []).append(gap)
        print(f"\nfork of e2b-test with {args.mib} MiB written, → every fork's first command:")
        for name, ms in samples.items():
            print(_row(name, ms))
    print(f"load average {_load()} at the end")


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    asyncio.run(main())
