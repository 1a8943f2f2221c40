"""Templates through the whole platform, in one run (issue 13's targets).

    sudo .venv/bin/python bench/templates.py [--creates 15] [--snapshot-mb 64]

Starts an embedded PostgreSQL, the control plane in its own process and two real agents
registered through the API (``tests/harness/platform.py``), then measures with the blocking SDK:

  rebuild    a build of a 5-step template (RUN, ENV, WORKDIR, COPY, RUN), then the same build
             again: every step is cached, so the second is the platform's own cost of a build
             (submit, cache lookups, the new version, the log). Target: <= 2 s.
  create     ``Sandbox.create(t)`` → first ``commands.run("true")`` from ``minimal`` and from the
             built template (its layers already on the host), alternated in one run. Target:
             a template costs no more than ``minimal``.
  snapshot   a sandbox on host A writes --snapshot-mb MB and is snapshotted; A is then removed
             (force delete: its agent stops), and the snapshot's first start on host B (fetching
             its layers from the store) → first command, then a second start there (layers
             held). Target: first start <= 2 s + the snapshot's size at 200 MB/s.

The layer fetch rate itself (store → host, >= 200 MB/s) is ``bench/layer_fetch.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._platform import require_root, running_platform  # noqa: E402
from tests.harness.platform import Platform  # noqa: E402
from warren import Sandbox, Template, ids  # noqa: E402

MB = 1_000_000


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


def timed_ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def create_then_run(kw: dict[str, object], template: str) -> float:
    t0 = time.perf_counter()
    s = Sandbox.create(template, **kw)  # type: ignore[arg-type]
    s.commands.run("true")
    ms = (time.perf_counter() - t0) * 1000
    s.kill()
    s.close()
    return ms


def bench_rebuild(kw: dict[str, object], workdir: Path) -> None:
    (workdir / "app.txt").write_text("hello from the context\n")
    spec = (
        Template()
        .from_template("minimal")
        .run("mkdir -p /srv/data && echo built > /srv/data/stamp")
        .env({"GREETING": "hi there"})
        .workdir("/srv/app")
        .copy(str(workdir / "app.txt"), "/srv/app/app.txt")
        .run("cat /srv/app/app.txt > /srv/app/copy.txt")
    )
    first = timed_ms(lambda: spec.build("bench-tpl", **kw))  # type: ignore[arg-type]
    again = [timed_ms(lambda: spec.build("bench-tpl", **kw)) for _ in range(3)]  # type: ignore[arg-type]
    print(f"{'build (5 steps, nothing cached)':<46} {first:9.0f} ms")
    print(f"{'no-op rebuild (every step cached), p50 of 3':<46} {p50(again):9.0f} ms   (target <= 2000 ms)")


def bench_create(kw: dict[str, object], n: int) -> None:
    for t in ("minimal", "bench-tpl"):  # warm both
        create_then_run(kw, t)
    mins, tpls = [], []
    for _ in range(n):  # alternated, so load drifts hit both alike
        mins.append(create_then_run(kw, "minimal"))
        tpls.append(create_then_run(kw, "bench-tpl"))
    for label, samples, note in (
        ("create → first command, minimal", mins, ""),
        ("create → first command, built template", tpls, "   (target: no more than minimal)"),
    ):
        print(f"{label:<46} p50 {p50(samples):7.1f} ms  mean {statistics.mean(samples):7.1f} ms{note}")


async def bench_snapshot(platform: Platform, kw: dict[str, object], mb: int) -> None:
    async def host_of(sandbox_id: str) -> str:
        rows = await platform.sql(
            "SELECT host_id FROM sandboxes WHERE id = :id", id=ids.parse_id(ids.Kind.SANDBOX, sandbox_id)
        )
        return ids.host_id(rows[0][0])

    sbx = await asyncio.to_thread(lambda: Sandbox.create(**kw))  # type: ignore[arg-type]
    a_host = await host_of(sbx.id)  # the host that writes and snapshots; removed afterwards
    size = mb * MB
    sbx.commands.run(f"head -c {size} /dev/urandom > /root/blob && mkdir -p /root/many && cd /root/many && "
                     "for i in $(seq 1 500); do echo $i > f$i; done")  # fmt: skip
    t0 = time.perf_counter()
    info = sbx.snapshot("bench-snap")
    snap_ms = (time.perf_counter() - t0) * 1000
    snap_bytes = int(getattr(info, "size_bytes", 0) or 0)
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.user_headers, timeout=120) as http:
        r = await http.delete(f"/v1/hosts/{a_host}", params={"force": "true"})
        assert r.status_code in (200, 204), r.text
    first = await asyncio.to_thread(create_then_run, kw, "bench-snap")
    second = await asyncio.to_thread(create_then_run, kw, "bench-snap")
    target = 2000 + snap_bytes / (200 * MB) * 1000
    label = f"snapshot of a sandbox ({mb} MB written)"
    print(f"{label:<46} {snap_ms:9.0f} ms   ({snap_bytes / MB:.1f} MB in the store)")
    label = "first start on another host → first command"
    print(f"{label:<46} {first:9.0f} ms   (target <= {target:.0f} ms)")
    print(f"{'second start there (layers held)':<46} {second:9.0f} ms")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--creates", type=int, default=15, help="create samples per template")
    ap.add_argument("--snapshot-mb", type=int, default=64, help="MB the snapshotted sandbox writes")
    args = ap.parse_args()
    require_root("bench/templates.py")
    async with running_platform("warren-bench-tpl-", ("127.0.0.41", "127.0.0.42")) as (platform, base):
        kw = platform.sdk()
        print(f"platform up: CP {platform.url}, agents {[a.address for a in platform.agents]}\n")
        await asyncio.to_thread(bench_rebuild, kw, base)
        await asyncio.to_thread(bench_create, kw, args.creates)
        await bench_snapshot(platform, kw, args.snapshot_mb)


if __name__ == "__main__":
    asyncio.run(main())
