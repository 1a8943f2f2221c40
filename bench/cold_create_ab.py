"""Cold create → first exec on one agent, two agents side by side in alternating rounds.

    sudo .venv/bin/python bench/cold_create_ab.py [--n 20] [A B ...]

Each of A, B, ... is ``RUNTIME`` or ``RUNTIME@SRC`` (SRC: another tree's ``src`` dir, e.g. an old
commit checked out with ``git worktree add /tmp/wt-old <commit>``: that agent runs with
``PYTHONPATH=SRC``). Every agent is a real standalone `warren agent` with no warm pool, so every
create is cold; rounds alternate between the agents so load drifts on this shared machine hit
all alike. Prints create → `Exec true` p50 / p99 in ms, the CPU of the agent's process tree per
create (rusage: steadier than wall time on a shared machine), the agent's own split of the create
(`event=create_steps`), and the load average before and after. RUNTIME may be ``auto`` (the
agent's default: no ``--runtime``), for a tree that has it. With none named (``make bench``):
``runc crun``, this tree's two OCI runtimes side by side.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.warm_pool_agent import create_exec, pct, steps, tree_cpu_ms
from tests.harness.agent import AgentProcess


def start(root: Path, spec: str) -> AgentProcess:
    runtime, _, src = spec.partition("@")
    env = {"WARREN_LOG_LEVEL": "DEBUG", "WARREN_AGENT_METRICS_LISTEN": "0"}
    if src:
        env["PYTHONPATH"] = src
    agent = AgentProcess(
        root / "data", root / "agent.log", runtime=None if runtime == "auto" else runtime, env=env
    )
    return agent.start()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("agents", nargs="*", help="RUNTIME or RUNTIME@SRC (default: runc crun)")
    args = ap.parse_args()
    args.agents = args.agents or ["runc", "crun"]
    root = Path(tempfile.mkdtemp(prefix="warren-bench-cold-"))
    root.chmod(0o755)
    agents: dict[str, AgentProcess] = {}
    times: dict[str, list[float]] = {s: [] for s in args.agents}
    ids: dict[str, set[str]] = {s: set() for s in args.agents}
    cpu: dict[str, float] = {s: 0.0 for s in args.agents}
    load0 = os.getloadavg()
    try:
        for i, spec in enumerate(args.agents):
            agents[spec] = start(root / f"agent{i}", spec)
            create_exec(agents[spec])  # the template, caches
        pids = {spec: a.proc.pid for spec, a in agents.items() if a.proc is not None}
        # The whole run's CPU of each agent's tree over its creates (what it did in the other
        # agents' turns too: refilling network slots, reaping).
        cpu = {spec: -tree_cpu_ms(pid) for spec, pid in pids.items()}
        for _ in range(args.n):
            for spec, a in agents.items():
                ms, sb = create_exec(a)
                times[spec].append(ms)
                ids[spec].add(sb)
        cpu = {spec: (cpu[spec] + tree_cpu_ms(pid)) / args.n for spec, pid in pids.items()}
        logs = {spec: a.log_path.read_text() for spec, a in agents.items()}
    finally:
        for a in agents.values():
            a.destroy_all()
            a.stop()
        shutil.rmtree(root, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"cold create → first exec on the agent, n = {args.n} each, alternating, ms")
    print(f"load average (1/5/15 min) before {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, "
          f"after {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}")  # fmt: skip
    for spec in args.agents:
        split = steps(logs[spec], "create_steps", ids[spec])
        parts = ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in split.items())
        xs = times[spec]
        print(f"{spec:>40} p50 {pct(xs, 50):6.1f} p99 {pct(xs, 99):6.1f}  CPU/create {cpu[spec]:5.1f}"
              f"   steps p50: {parts}")  # fmt: skip


if __name__ == "__main__":
    main()
