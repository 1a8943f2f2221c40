"""The gVisor memory watch (guest_agent/memwatch.py) against real hogs, one real `warren agent`.

    sudo .venv/bin/python bench/gvisor_memwatch.py [--rounds 30] [--rates 3] [--idle 3] [--walls 10]

rounds  tests/security/test_attack_session8_memwatch.py's nobody case, N times: a 256 MiB
        sandbox, `kill -STOP/KILL/SEGV/TERM 1` as nobody (every other round: they change
        nothing), then a 512 MiB hog (8 MiB bytearrays) as nobody. Per round: killed inside or
        ended by the host (the defect), the host cgroup's peak (limit + 96 MiB = 352 MiB) and
        the guest's own line (its stderr reaches the agent's log, event=guest_stderr, within a
        second: runtime/gvisor_memwake.py).
rates   how fast one process charges the host cgroup, per way of allocating (the rate
        memwatch.MAX_RATE must exceed): MiB/s from 64 to 320 MiB, and the worst 50 ms.
idle    the sandbox cgroup's CPU per 10 s, idle (the watch's cost), 256 MiB and 1 GiB; with
        --idle-procs also the CPU time of the sandbox's host processes (sentry, gofer, stubs)
        over 60 s, from /proc/<pid>/stat, another count of the same cost.
walls   one mmap(MAP_POPULATE) of 400 MiB as nobody in a 128 MiB sandbox, N times (faster than
        the watch polls: it reaches the host cgroup's limit, where session 31's hold has it wait
        for the guest's kill; before, the host ended the sandbox every time): sandboxes kept,
        the agent's wall events and hand-backs to the kernel (runtime/gvisor_memwake.py).
        --busy K runs K busy loops on the host meanwhile (the guest starved of CPU).
        --wall-with hog: an ordinary hog instead (512 MiB of 8 MiB bytearrays), which reaches
        the limit only when the guest is starved; "waited on" counts the looks that found the
        guest running and waited past 2 s (session 33). --throttle-ms M gives the sandbox M ms
        of CPU per 100 ms during the hog (its cpu cgroup's quota): a guest starved of CPU.
Compare trees with PYTHONPATH=<other tree>/src (the guest is bind-mounted from the imported
warren.guest). The load average is printed at start and end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import warren.guest
from tests.harness.agent import AgentProcess, scratch_agent
from warren.rpc import hostagent_pb2 as pb

MIB = 1 << 20
KILLS = "for s in STOP KILL SEGV TERM; do kill -$s 1 2>/dev/null || echo refused; done"
RATES = {
    "bytearray 8 MiB loop": "b=[]\nfor _ in range(50): b.append(bytearray(8<<20))",
    "bytearray 400 MiB": "b=bytearray(400<<20)",
    "mmap, a write a page": "import mmap\nm=mmap.mmap(-1,400<<20)\nfor i in range(0,400<<20,4096): m[i]=1",
    "mmap MAP_POPULATE": (
        "import mmap\nm=mmap.mmap(-1,400<<20,flags=mmap.MAP_PRIVATE|mmap.MAP_ANONYMOUS|mmap.MAP_POPULATE)"
    ),
    "write to /tmp (tmpfs)": "open('/tmp/f','wb').write(bytes(400<<20))",
}


def cgroup(sb_id: str, ctl: str = "memory") -> Path:
    return Path(f"/sys/fs/cgroup/{ctl}/warren/{sb_id}")


class Sampler:
    """The host cgroup's usage every ~0.5 ms, in a thread, while ``with``."""

    def __init__(self, sb_id: str) -> None:
        self.path = cgroup(sb_id) / "memory.usage_in_bytes"
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic() - t0, int(self.path.read_text())))
            except OSError:
                return  # the cgroup is gone with its sandbox
            time.sleep(0.0005)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def rate(self, base: int, lo: int = 64, hi: int = 320) -> tuple[float, float]:
        """MiB/s from base + lo to base + hi MiB (0: not reached), and over the worst 50 ms."""
        at = lambda x: next((t for t, u in self.samples if u - base >= x * MIB), None)  # noqa: E731
        t_lo, t_hi = at(lo), at(hi)
        avg = (hi - lo) / (t_hi - t_lo) if t_lo is not None and t_hi is not None and t_hi > t_lo else 0.0
        worst, j = 0, 0
        for t, u in self.samples:
            while t - self.samples[j][0] > 0.05:
                j += 1
            worst = max(worst, u - self.samples[j][1])
        return avg, worst / 0.05 / MIB


def guest_lines(agent: AgentProcess, sb_id: str) -> list[str]:
    """The guest's stderr lines the agent logged for this sandbox (event=guest_stderr)."""
    text = agent.log_path.read_text(errors="replace")
    return [ln for ln in text.splitlines() if "event=guest_stderr " in ln and f"sandbox_id={sb_id} " in ln]


def hog(mib: int) -> str:
    code = f"b = []\nfor _ in range({mib // 8}): b.append(bytearray(8 << 20))\nprint('survived')"
    return f"python3 -c {shlex.quote(code)}"


def one_round(agent: AgentProcess, kills: bool) -> tuple[bool, int, str, float]:
    """Held (killed inside, the sandbox lives), the host peak, the guest's line, the hog's rate."""
    sb = agent.create(memory_mb=256, runtime="gvisor").sandbox_id
    try:
        if kills:
            agent.exec(sb, "/bin/sh", "-c", KILLS, user="nobody", timeout_sec=60)
        base = int((cgroup(sb) / "memory.usage_in_bytes").read_text())
        with Sampler(sb) as s:
            try:
                res = agent.exec(sb, "/bin/sh", "-c", hog(512), user="nobody", timeout_sec=60)
                held = res.exit_code in (-9, 137)
            except grpc.RpcError:  # FAILED_PRECONDITION: the host ended the sandbox
                held = False
            time.sleep(0.2)
        peak = max((u for _, u in s.samples), default=0)
        time.sleep(1.2)  # a beat of the agent's drain
        line = next((ln for ln in reversed(guest_lines(agent, sb)) if "out of memory: " in ln), "")
        return held, peak, line.rsplit("out of memory: ", 1)[-1] if line else "-", s.rate(base, 32, 224)[0]
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=120)


def rounds(agent: AgentProcess, n: int) -> None:
    ended = 0
    for i in range(n):
        held, peak, line, rate = one_round(agent, kills=i % 2 == 0)
        ended += not held
        kills = "kills" if i % 2 == 0 else "     "
        what = "held " if held else "ENDED"
        rate_s = f"hog {rate:>5.0f} MiB/s (32 → 224)"
        print(f"  #{i:<3} {kills} {what} host peak {peak // MIB:>3} MiB, {rate_s}: {line}")
    print(f"rounds: {ended}/{n} sandboxes ended by the host")


POPULATE = "import mmap\nm=mmap.mmap(-1,400<<20,flags=mmap.MAP_PRIVATE|mmap.MAP_ANONYMOUS|mmap.MAP_POPULATE)"
HOG = "b = []\nfor _ in range(64): b.append(bytearray(8 << 20))"
WALL_CODE = {"populate": POPULATE, "hog": HOG}


def walls(agent: AgentProcess, n: int, busy: int, code: str = POPULATE, throttle_ms: int = 0) -> None:
    loops = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(busy)]
    kept = 0
    try:
        for i in range(n):
            sb = agent.create(memory_mb=128, runtime="gvisor").sandbox_id
            try:
                if throttle_ms:  # the sandbox's CPU per 100 ms period: a guest starved
                    (cgroup(sb, "cpu") / "cpu.cfs_quota_us").write_text(str(throttle_ms * 1000))
                try:
                    res = agent.exec(sb, "python3", "-c", code, user="nobody", timeout_sec=60)
                    how = f"exit {res.exit_code}"
                except grpc.RpcError as e:  # FAILED_PRECONDITION: the sandbox ended
                    how = e.code().name  # type: ignore[attr-defined]
                if throttle_ms and cgroup(sb, "cpu").exists():
                    (cgroup(sb, "cpu") / "cpu.cfs_quota_us").write_text("-1")
                alive = cgroup(sb).exists() and agent.exec(sb, "true", timeout_sec=30).exit_code == 0
            except grpc.RpcError:
                alive = False
            finally:
                with contextlib.suppress(grpc.RpcError):
                    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=120)
            kept += alive
            log = [ln for ln in agent.log_path.read_text(errors="replace").splitlines() if f"={sb}" in ln]
            held = sum("event=gvisor_memory_wall sandbox_id" in ln for ln in log)
            back = sum("event=gvisor_memory_wall_released " in ln for ln in log)
            waited = sum("event=gvisor_memory_wall_waited " in ln for ln in log)
            what = "kept " if alive else "ENDED"
            print(f"  #{i:<3} {what} {how:20s} waits at the limit {held}, waited on {waited}, back {back}")
    finally:
        for p in loops:
            p.kill()
    print(f"walls: {kept}/{n} sandboxes kept ({busy} busy loops on the host)")


def rates(agent: AgentProcess, reps: int) -> None:
    sb = agent.create(memory_mb=1024, runtime="gvisor").sandbox_id
    try:
        for _ in range(reps):
            for name, code in RATES.items():
                base = int((cgroup(sb) / "memory.usage_in_bytes").read_text())
                with Sampler(sb) as s:
                    agent.exec(sb, "python3", "-c", code + "\nimport time; time.sleep(0.3)", timeout_sec=60)
                agent.exec(sb, "rm", "-f", "/tmp/f", user="root", timeout_sec=60)
                avg, worst = s.rate(base)
                print(f"  {name:24s} {avg:5.0f} MiB/s (64 → 320 MiB), worst 50 ms {worst:5.0f} MiB/s")
    finally:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=120)


def procs_cpu(sb_id: str) -> float:
    """Seconds of CPU (user + system) of every host process in the sandbox's cgroup."""
    ticks = 0
    for pid in (cgroup(sb_id, "cpuacct") / "cgroup.procs").read_text().split():
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (all threads)
    return ticks / os.sysconf("SC_CLK_TCK")


def idle(agent: AgentProcess, reps: int, procs: bool) -> None:
    for mb in (256, 1024):
        sb = agent.create(memory_mb=mb, runtime="gvisor").sandbox_id
        try:
            time.sleep(2)
            usage = cgroup(sb, "cpuacct") / "cpuacct.usage"
            for _ in range(reps):
                before = int(usage.read_text())
                time.sleep(10)
                print(f"  {mb:>4} MiB idle: {(int(usage.read_text()) - before) / 1e6:5.1f} ms CPU per 10 s")
            if procs:
                before_s = procs_cpu(sb)
                time.sleep(60)
                spent = (procs_cpu(sb) - before_s) * 1000
                print(f"  {mb:>4} MiB idle: {spent:5.0f} ms CPU of its processes in 60 s")
        finally:
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb), timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--rates", type=int, default=3)
    ap.add_argument("--idle", type=int, default=3)
    ap.add_argument("--idle-procs", action="store_true")
    ap.add_argument("--walls", type=int, default=10)
    ap.add_argument("--busy", type=int, default=0)
    ap.add_argument("--wall-with", choices=sorted(WALL_CODE), default="populate")
    ap.add_argument("--throttle-ms", type=int, default=0, help="the sandbox's CPU per 100 ms in walls")
    args = ap.parse_args()
    print(f"load {os.getloadavg()[0]:.1f}; guest from {Path(warren.guest.__file__).parent}")
    with scratch_agent("bench-memwatch") as agent:
        if args.rates:
            rates(agent, args.rates)
        if args.idle:
            idle(agent, args.idle, args.idle_procs)
        if args.rounds:
            rounds(agent, args.rounds)
        if args.walls:
            walls(agent, args.walls, args.busy, WALL_CODE[args.wall_with], args.throttle_ms)
    print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
