"""Sandbox runtime benchmark: a real `warren agent` driven over gRPC, runc and crun side by side.

    sudo .venv/bin/python bench/runtime.py [--n 50] [--density 200] [--runtimes runc,crun]

Per runtime, over N sandboxes (p50 / p99, milliseconds):
  create→exec   CreateSandbox RPC until the first `Exec true` returned
  exec RTT      `Exec true` round trip from the RPC client
  pause/resume  PauseSandbox / ResumeSandbox RPCs
  floor         `<runtime> run` of the same bundle with `true` as the process (no agent, no
                guest, no network setup): what the OCI runtime alone costs
Density (first runtime only): start D idle sandboxes and report the memory Warren adds per
sandbox: PSS of each guest process, its tmpfs disk and the agent's own growth, plus the drop in
the kernel's MemAvailable (which also counts page tables, netns, cgroups, slab).

The `minimal` template comes from WARREN_TEST_MINIMAL_DIR (default
/var/cache/warren-test/templates/minimal) and is built there on first use.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness.agent import AgentProcess
from warren.rpc import hostagent_pb2 as pb


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def floor_runs(agent: AgentProcess, runtime: str, sb_id: str, n: int) -> list[float]:
    """`runtime run` of a copy of a live sandbox's bundle (same rootfs, netns, limits), `true`."""
    cfg = json.loads((agent.data_dir / "sandboxes" / sb_id / "config.json").read_text())
    out = []
    bundle = Path(tempfile.mkdtemp(prefix="floor-", dir=agent.root))
    for i in range(n):
        cid = f"floor-{os.getpid()}-{i}"
        cfg["process"]["args"] = ["/bin/true"]
        cfg["linux"]["cgroupsPath"] = f"/warren-bench/{cid}"
        (bundle / "config.json").write_text(json.dumps(cfg))
        argv = [runtime, "--root", str(agent.root / f"floor-{runtime}"), "run", "--no-new-keyring",
                "--bundle", str(bundle), cid]  # fmt: skip
        if runtime == "crun":
            argv = [
                "unshare",
                "-m",
                "sh",
                "-c",
                'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"',
                "sh",
                *argv,
            ]
        t = time.perf_counter()
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True)  # fmt: skip
        out.append((time.perf_counter() - t) * 1000)
    shutil.rmtree(bundle)
    for d in glob.glob("/sys/fs/cgroup/*/warren-bench"):
        for sub in glob.glob(f"{d}/*/"):
            os.rmdir(sub)
        os.rmdir(d)
    return out


def latency(agent: AgentProcess, n: int) -> dict[str, list[float]]:
    s = agent.stub
    res: dict[str, list[float]] = {"create→exec": [], "exec RTT": [], "pause": [], "resume": []}
    made = []
    for _ in range(n):
        t = time.perf_counter()
        r = agent.create(memory_mb=128)
        agent.exec(r.sandbox_id, "true")
        res["create→exec"].append((time.perf_counter() - t) * 1000)
        made.append(r.sandbox_id)
    sb = made[0]
    for _ in range(3):  # warm-up
        agent.exec(sb, "true")
    for _ in range(max(n, 200)):
        res["exec RTT"].append(timed(lambda: agent.exec(sb, "true")))
    for sid in made:
        res["pause"].append(timed(lambda sid=sid: s.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=sid))))
        res["resume"].append(timed(lambda sid=sid: s.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=sid))))
    res["floor (runtime run)"] = floor_runs(agent, agent.runtime, sb, n)
    for sid in made:
        s.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid))
    return res


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def density(agent: AgentProcess, count: int) -> dict[str, float]:
    assert agent.proc is not None
    subprocess.run(["sync"])
    agent_before = pss_kib(agent.proc.pid)
    avail_before = mem_available_kib()
    made = []
    t = time.perf_counter()
    for _ in range(count):
        made.append(agent.create(memory_mb=128).sandbox_id)
    elapsed = time.perf_counter() - t
    time.sleep(2)
    guests = []
    for sid in made:
        pid = int((agent.data_dir / "sandboxes" / sid / "init.pid").read_text())
        # Everything in the sandbox's cgroup: the guest, and nothing else while idle.
        procs = Path(f"/sys/fs/cgroup/memory/warren/{sid}/cgroup.procs").read_text().split()
        guests.append(sum(pss_kib(int(p)) for p in procs) or pss_kib(pid))
    disks = []
    for sid in made:
        st = os.statvfs(agent.data_dir / "sandboxes" / sid / "disk")
        disks.append((st.f_blocks - st.f_bfree) * st.f_frsize / 1024)
    agent_growth = (pss_kib(agent.proc.pid) - agent_before) / count
    avail_drop = (avail_before - mem_available_kib()) / count
    for sid in made:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=120)
    return {
        "sandboxes": count,
        "create all (s)": elapsed,
        "guest PSS (MiB)": statistics.mean(guests) / 1024,
        "tmpfs disk (MiB)": statistics.mean(disks) / 1024,
        "agent growth (MiB)": agent_growth / 1024,
        "total PSS per sandbox (MiB)": (statistics.mean(guests) + statistics.mean(disks) + agent_growth)
        / 1024,
        "MemAvailable drop per sandbox (MiB)": avail_drop / 1024,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--density", type=int, default=200)
    ap.add_argument("--runtimes", default="runc,crun")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 1
    base = Path("/tmp/warren-bench")
    base.mkdir(mode=0o755, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    root.chmod(0o755)
    results: dict[str, dict[str, list[float]]] = {}
    dens: dict[str, float] = {}
    try:
        for i, rt in enumerate(args.runtimes.split(",")):
            agent = AgentProcess.standalone(root / rt, runtime=rt).start()
            try:
                agent.exec(agent.create().sandbox_id, "true")  # template + caches warm
                agent.destroy_all()
                results[rt] = latency(agent, args.n)
                if i == 0 and args.density:
                    dens = density(agent, args.density)
            finally:
                agent.destroy_all()
                agent.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rts = list(results)
    print(f"\nlatency, ms (p50 / p99), n={args.n}")
    print(f"{'':22}" + "".join(f"{rt:>22}" for rt in rts))
    for key in next(iter(results.values())):
        row = "".join(f"{pct(results[rt][key], 50):>12.1f} /{pct(results[rt][key], 99):>8.1f}" for rt in rts)
        print(f"{key:22}{row}")
    if dens:
        print(f"\ndensity ({rts[0]}):")
        for k, v in dens.items():
            print(f"  {k:38} {v:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
