"""Warm pools on one agent: create → first exec, cold vs claimed from a pool, side by side.

    sudo .venv/bin/python bench/warm_pool_agent.py [--n 30] [--pool 4] [--runtime runc]
        [--internet-off] [--tree <another checkout, for an A/B>]

A real `warren agent` (standalone, gRPC on loopback) with a `minimal` pool of --pool. Rounds
alternate so load drifts hit both sides alike: a warm round waits until the pool is full again
(refills run only while no create is under way, so they never overlap the measurement), then
times CreateSandbox + `Exec true`; a cold round times the same with the pool emptied first (a
pool of 0, so every create is cold). Prints p50 / p99 in milliseconds, and the agent's own split
of each (its `event=claim_steps` and `event=create_steps` debug lines).

With --freeze-ab: two agents, pool members frozen on one (the default) and left running on the
other (WARREN_AGENT_WARM_POOL_FREEZE=false), claimed in alternating rounds.

The `minimal` template comes from WARREN_TEST_MINIMAL_DIR (default
/var/cache/warren-test/templates/minimal) and is built there on first use.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness.agent import AgentProcess
from warren.rpc import hostagent_pb2 as pb

_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def tree_cpu_ms(pid: int) -> float:
    """CPU time of ``pid`` and every live descendant, each with its reaped children (rusage as
    /proc shows it): the agent, its helpers (namespace maker, OCI spawner) and what they ran,
    sandboxes reaped by the agent (their subreaper) included. Live sandboxes' own time is in
    too; a cold create's run destroys each before the next."""
    children: dict[int, list[int]] = defaultdict(list)
    times: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children[int(fields[1])].append(int(d))
        times[int(d)] = sum(int(x) for x in fields[11:15]) * _TICK_MS  # utime stime cutime cstime
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo += children.get(p, [])
    return total


def agent_cpu_ms(pid: int) -> float:
    """CPU time of the agent process itself, all its threads, in ns resolution (schedstat):
    a claim is work of the agent's own, a few ms, below /proc/stat's 10 ms ticks."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            continue  # a thread that ended meanwhile
    return total / 1e6


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def pool(agent: AgentProcess, size: int) -> int:
    r = agent.stub.SetWarmPool(pb.SetWarmPoolRequest(template="minimal", size=size), timeout=120)
    return sum(p.ready for p in r.pools)


def wait_full(agent: AgentProcess, size: int) -> None:
    deadline = time.monotonic() + 300
    while pool(agent, size) < size:
        if time.monotonic() > deadline:
            raise SystemExit("the pool did not fill in 300 s")
        time.sleep(0.05)


INTERNET = True  # --internet-off: every create asks for internet=false


def create_exec(agent: AgentProcess, split: dict[str, list[float]] | None = None) -> tuple[float, str]:
    """Create + first exec (ms); ``split`` gets the create, the first exec and the agent's CPU
    for both apart."""
    assert agent.proc is not None
    cpu = agent_cpu_ms(agent.proc.pid)
    t = time.perf_counter()
    r = agent.create(memory_mb=256, internet=INTERNET)
    t1 = time.perf_counter()
    agent.exec(r.sandbox_id, "true")
    t2 = time.perf_counter()
    if split is not None:
        split["create"].append((t1 - t) * 1000)
        split["first exec"].append((t2 - t1) * 1000)
        split["agent CPU"].append(agent_cpu_ms(agent.proc.pid) - cpu)
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id), timeout=60)
    return (t2 - t) * 1000, r.sandbox_id


def steps(log: str, event: str, ids: set[str]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for line in log.splitlines():
        m = re.search(rf"event={event} sandbox_id=(\S+) (.*) \(ms\)", line)
        if m and m.group(1) in ids:
            for k, v in re.findall(r"(\w+)=([\d.]+)", m.group(2)):
                out[k].append(float(v))
    return out


def freeze_ab(root: Path, n: int, size: int, runtime: str) -> None:
    """Two agents, members frozen on one and running on the other, claimed in alternating
    rounds (so both see the same load): is thawing at the claim cheap enough?"""
    agents = {}
    for name, freeze in (("frozen", "true"), ("running", "false")):
        env = {
            "WARREN_LOG_LEVEL": "DEBUG",
            "WARREN_AGENT_METRICS_LISTEN": "0",
            "WARREN_AGENT_WARM_POOL_FREEZE": freeze,
        }
        agents[name] = AgentProcess.standalone(root / name, runtime=runtime, env=env).start()
    times: dict[str, list[float]] = {k: [] for k in agents}
    ids: dict[str, set[str]] = {k: set() for k in agents}
    try:
        for a in agents.values():
            create_exec(a)
        for _ in range(n):
            for name, a in agents.items():
                wait_full(a, size)
                ms, sb = create_exec(a)
                times[name].append(ms)
                ids[name].add(sb)
        logs = {k: a.log_path.read_text() for k, a in agents.items()}
    finally:
        for a in agents.values():
            a.destroy_all()
            a.stop()
    print(f"claimed create → first exec, members frozen vs running ({runtime}), n = {n}, ms")
    for name in agents:
        split = steps(logs[name], "claim_steps", ids[name])
        parts = ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in split.items())
        print(
            f"{name:>10} p50 {pct(times[name], 50):7.1f} p99 {pct(times[name], 99):7.1f}   steps p50: {parts}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--pool", type=int, default=4)
    ap.add_argument("--runtime", default="runc", help="runc, crun or auto (the agent's default)")
    ap.add_argument("--freeze-ab", action="store_true", help="members frozen vs running, instead")
    ap.add_argument("--internet-off", action="store_true", help="creates with internet=false")
    ap.add_argument("--tree", type=Path, help="run the agent from this checkout's src (an A/B)")
    args = ap.parse_args()
    global INTERNET
    INTERNET = not args.internet_off
    root = Path(tempfile.mkdtemp(prefix="warren-bench-warm-"))
    root.chmod(0o755)
    if args.freeze_ab:
        try:
            freeze_ab(root, args.n, args.pool, args.runtime)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    agent = AgentProcess(
        root / "agent" / "data",
        root / "agent" / "agent.log",
        runtime=None if args.runtime == "auto" else args.runtime,
        env={"WARREN_LOG_LEVEL": "DEBUG", "WARREN_AGENT_METRICS_LISTEN": "0"}
        | ({"PYTHONPATH": str(args.tree.resolve() / "src")} if args.tree else {}),
    ).start()
    warm: list[float] = []
    cold: list[float] = []
    warm_ids: set[str] = set()
    cold_ids: set[str] = set()
    cold_cpu: list[float] = []
    warm_split: dict[str, list[float]] = defaultdict(list)
    assert agent.proc is not None
    try:
        create_exec(agent)  # the template, caches
        for _ in range(args.n):
            wait_full(agent, args.pool)
            ms, sb = create_exec(agent, warm_split)
            warm.append(ms)
            warm_ids.add(sb)
            pool(agent, 0)
            cpu0 = tree_cpu_ms(agent.proc.pid)
            ms, sb = create_exec(agent)
            cold_cpu.append(tree_cpu_ms(agent.proc.pid) - cpu0)
            cold.append(ms)
            cold_ids.add(sb)
        log = agent.log_path.read_text()
    finally:
        agent.destroy_all()
        agent.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"create → first exec on the agent ({args.runtime}, tree {args.tree or 'this'}, internet "
        f"{'off' if args.internet_off else 'on'}), n = {args.n}, ms; load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'':>24} {'p50':>8} {'p99':>8}")
    for name, xs in (("warm (claimed)", warm), ("cold", cold)):
        print(f"{name:>24} {pct(xs, 50):8.1f} {pct(xs, 99):8.1f}")
    parts = ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in warm_split.items())
    print(f"  warm, p50 ms: {parts} (the agent process's CPU, all threads, create + first exec)")
    cpu = statistics.mean(cold_cpu)  # /proc counts clock ticks (10 ms): a mean, not a median
    print(f"  cold create + exec + destroy, the agent's CPU (its process tree, rusage) mean {cpu:.1f} ms")
    for title, event, ids in (("claim", "claim_steps", warm_ids), ("cold create", "create_steps", cold_ids)):
        split = steps(log, event, ids)
        parts = ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in split.items())
        print(f"  {title} steps, p50 ms: {parts}")


if __name__ == "__main__":
    main()
