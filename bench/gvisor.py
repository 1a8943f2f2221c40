"""gVisor next to runc: one real `warren agent`, both runtimes in one run.

    sudo .venv/bin/python bench/gvisor.py [--n 10] [--forks 10]

Per runtime (p50 / p99, milliseconds; N sandboxes, one at a time):
  create→exec     CreateSandbox RPC until the first `Exec true` returned
  exec RTT        `Exec true` round trip (N x 5 calls, one sandbox each)
  python3 -c pass `Exec python3 -c pass`: a syscall-heavy start (ptrace platform's cost)
  pause / resume  PauseSandbox / ResumeSandbox of an idle sandbox (gVisor: checkpoint to disk
                  and restore, with the image size; runc: the freezer)
  idle memory     host memory of one idle sandbox: cgroup usage + runsc gofer RSS + disk tmpfs
  freed by pause  that memory minus what is left while paused
gVisor only: fork N from one memory snapshot (a sandbox with a running Python counter), total
wall time: N creates at once (the agent admits 2 per CPU at a time, admission.py), then N one
after the other. Each fork goes on running its counter, as the source did.
Run it under `nice -n -19` on a shared machine; the load average is printed at start and end.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness.agent import AgentProcess
from warren.rpc import hostagent_pb2 as pb

TEAM = str(uuid.uuid4())


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def memory(agent: AgentProcess, sb_id: str) -> int:
    st = os.statvfs(agent.data_dir / "sandboxes" / sb_id / "disk")
    total = (st.f_blocks - st.f_bfree) * st.f_frsize
    for p in glob.glob(f"/sys/fs/cgroup/memory/warren/{sb_id}/memory.usage_in_bytes"):
        total += int(Path(p).read_text())
    for status in glob.glob("/proc/[0-9]*/status"):
        pid = status.split("/")[2]
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"runsc-gofer" in cmd and sb_id.encode() in cmd:
                rss = [ln for ln in Path(status).read_text().splitlines() if ln.startswith("VmRSS:")]
                total += int(rss[0].split()[1]) * 1024 if rss else 0
        except OSError:
            continue
    return total


def row(name: str, xs: list[float]) -> str:
    return f"  {name:<18} p50 {pct(xs, 50):8.1f}  p99 {pct(xs, 99):8.1f}  (n={len(xs)})"


def bench_runtime(agent: AgentProcess, runtime: str, n: int) -> dict[str, object]:
    s = agent.stub
    create_exec, execs, pys, pauses, resumes, images, idle, freed = [], [], [], [], [], [], [], []
    for _ in range(n):
        t = time.perf_counter()
        r = agent.create(memory_mb=256, runtime=runtime)
        agent.exec(r.sandbox_id, "true")
        create_exec.append((time.perf_counter() - t) * 1000)
        sb = r.sandbox_id
        execs += [timed(lambda sb=sb: agent.exec(sb, "true")) for _ in range(5)]  # type: ignore[misc]
        pys.append(timed(lambda sb=sb: agent.exec(sb, "python3", "-c", "pass")))  # type: ignore[misc]
        time.sleep(0.5)  # idle: let the sandbox settle before measuring it
        before = memory(agent, sb)
        idle.append(before / 2**20)
        t = time.perf_counter()
        resp = s.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=sb), timeout=120)
        pauses.append((time.perf_counter() - t) * 1000)
        freed.append((before - memory(agent, sb)) / 2**20)
        img = agent.data_dir / "sandboxes" / sb / "checkpoint"
        if resp.paused_state == "disk":
            images.append(sum(p.stat().st_size for p in img.iterdir() if p.is_file()) / 2**20)
        time.sleep(0.5)  # a paused sandbox, resumed a while later (not in the pause's wake)
        resume = pb.ResumeSandboxRequest(sandbox_id=sb)
        resumes.append(timed(lambda resume=resume: s.ResumeSandbox(resume, timeout=120)))  # type: ignore[misc]
        agent.exec(sb, "true")
        s.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=120)
    print(f"{runtime}:")
    for name, xs in (("create→exec", create_exec), ("exec RTT", execs), ("python3 -c pass", pys),
                     ("pause", pauses), ("resume", resumes)):  # fmt: skip
        print(row(name, xs))
    if images:
        print(f"  image size         median {statistics.median(images):.2f} MiB (n={len(images)})")
    print(f"  idle memory        median {statistics.median(idle):.1f} MiB")
    print(f"  freed by pause     median {statistics.median(freed):.1f} MiB")
    return {"python": pct(pys, 50)}


COUNTER = "import time\ni = 0\nwhile True:\n    i += 1; time.sleep(0.01)\n"


def bench_forks(agent: AgentProcess, forks: int) -> None:
    s = agent.stub
    src = agent.create(memory_mb=256, runtime="gvisor")
    agent.exec(src.sandbox_id, "/bin/sh", "-c", f"python3 -c '{COUNTER}' >/dev/null 2>&1 &")
    tpl = str(uuid.uuid4())
    t = time.perf_counter()
    snap = s.CreateSnapshot(
        pb.CreateSnapshotRequest(sandbox_id=src.sandbox_id, team_id=TEAM, template_id=tpl)
    )
    snap_ms = (time.perf_counter() - t) * 1000
    print(f"gvisor fork: snapshot ({snap.kind}, {snap.size_bytes / 2**20:.1f} MiB) {snap_ms:.0f} ms")

    def fork(_: int) -> tuple[pb.CreateSandboxResponse, float]:
        t = time.perf_counter()
        made = agent.create(memory_mb=256, team_id=TEAM, template_id=tpl)
        return made, (time.perf_counter() - t) * 1000

    for how, workers in (("at once", forks), ("one by one", 1)):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(fork, range(forks)))
        total = time.perf_counter() - t0
        each = [ms for _, ms in done]
        for f, _ in done:  # each one answers
            agent.exec(f.sandbox_id, "true")
        print(f"  {forks} forks {how:<10} {total:.2f} s in all; per fork p50 {pct(each, 50):.0f} ms "
              f"p99 {pct(each, 99):.0f} ms")  # fmt: skip
        for f, _ in done:
            s.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=f.sandbox_id), timeout=120)
    s.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=src.sandbox_id), timeout=120)
    s.DeleteSnapshot(pb.DeleteSnapshotRequest(team_id=TEAM, template_id=tpl))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--forks", type=int, default=10)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-gvisor-"))
    root.chmod(0o711)
    agent = AgentProcess.standalone(root)
    agent.start()
    try:
        agent.exec(agent.create(memory_mb=256).sandbox_id, "true")  # warm-up: the template
        agent.destroy_all()
        print(f"loadavg {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs")
        py = {rt: bench_runtime(agent, rt, args.n)["python"] for rt in ("runc", "gvisor")}
        print(f"python3 -c pass: gvisor/runc = {float(py['gvisor']) / float(py['runc']):.1f}x")  # type: ignore[arg-type]
        bench_forks(agent, args.forks)
        print(f"loadavg at the end {os.getloadavg()[0]:.1f}")
    finally:
        agent.destroy_all()
        agent.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
