"""Where a burst's time goes (``bench/warm_pool.py --probe``): the CPU each process of the
platform spent while the burst ran, what the agents logged meanwhile (pool refills, claims,
cold creates), and the statements PostgreSQL ran (``log_statement = all`` for the window only,
so the burst measured with the probe is a little slower than one without). Not a benchmark
itself: bench/warm_pool.py imports it."""

from __future__ import annotations

import collections
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def own_and_reaped(pid: int) -> float:
    """CPU seconds of a process, with the children it has waited for (an agent's runc, mount,
    ip and iptables calls)."""
    try:
        f = _stat(pid)
    except OSError:
        return 0.0
    return sum(int(x) for x in f[11:15]) / _TICK


def tree(pid: int) -> float:
    """CPU seconds of a process and its live children and theirs (PostgreSQL's backends)."""
    total = own_and_reaped(pid)
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(tree(int(k)) for k in kids)


def by_command() -> dict[int, tuple[str, float]]:
    """Every live process's command and own CPU seconds (not its children's), by pid (a
    kernel worker's command names the work it does now, so the pid is the key)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                head, tail = (d / "stat").read_text().rsplit(")", 1)
            except OSError:
                continue
            f = tail.split()
            out[int(d.name)] = (head.split("(", 1)[1].split("-", 1)[0], (int(f[11]) + int(f[12])) / _TICK)
    return out


def machine_busy() -> tuple[float, float]:
    """CPU seconds every core has spent busy since boot (/proc/stat: all but idle, iowait and
    steal), and those the hypervisor took (steal: another VM's, not this machine's work)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f[:7]) - f[3] - f[4]) / _TICK, f[7] / _TICK


# What the agents log that says where their time went during a burst (docs/agent.md).
_EVENTS = ("warm_claimed", "warm_pool_refilled", "create_cold", "sandbox_created", "create_queued")
# A statement as PostgreSQL logs it: "LOG:  statement: …" or "LOG:  execute <name>: …".
_STATEMENT = re.compile(r"LOG:\s+(?:statement|execute [^:]*):\s*(.*)")


def statement_kind(text: str) -> str:
    """A logged statement's first words (its verb and table, or the function it calls)."""
    words = re.sub(r"\s+", " ", text).strip()
    m = re.match(r"(SELECT (?:\w+\.)?warren_\w+)", words)
    if m:
        return m.group(1)
    m = re.match(r"(UPDATE \w+|INSERT INTO \w+|DELETE FROM \w+)", words)
    if m:
        return m.group(1)
    m = re.search(r"\bFROM (\w+)", words)
    return f"{words.split(' ', 1)[0]} … FROM {m.group(1)}" if m else words[:40]


@dataclass
class Probe:
    """CPU and log offsets at the burst's start; :meth:`report` after its end."""

    procs: dict[str, int]  # name -> pid (CP, PostgreSQL's postmaster, each agent)
    logs: dict[str, Path]  # agent name -> its log
    pg_log: Path
    db_url: str
    cpu0: dict[str, float] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    commands0: dict[int, tuple[str, float]] = field(default_factory=dict)

    async def _log_statements(self, on: bool) -> None:
        conn = await asyncpg.connect(self.db_url)
        try:
            if on:
                await conn.execute("ALTER SYSTEM SET log_statement = 'all'")
            else:
                await conn.execute("ALTER SYSTEM RESET log_statement")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    def _cpu(self) -> dict[str, float]:
        out = {n: (tree(pid) if n == "postgres" else own_and_reaped(pid)) for n, pid in self.procs.items()}
        out["bench client"] = sum(os.times()[:2])
        out["machine"], out["steal (not counted above)"] = machine_busy()
        return out

    async def start(self) -> None:
        await self._log_statements(True)
        self.offsets = {n: p.stat().st_size for n, p in {**self.logs, "postgres": self.pg_log}.items()}
        self.commands0 = by_command()
        self.cpu0 = self._cpu()

    async def stop(self, seconds: float, n: int) -> str:
        cpu1 = self._cpu()
        commands: collections.defaultdict[str, float] = collections.defaultdict(float)
        for pid, (comm, s) in by_command().items():
            commands[comm] += s - self.commands0.get(pid, ("", 0.0))[1]
        await self._log_statements(False)
        lines = [f"    probe over {seconds:.2f} s:"]
        used = {k: cpu1[k] - self.cpu0[k] for k in cpu1}
        named = sum(v for k, v in used.items() if not k.startswith(("machine", "steal")))
        used["rest (guests, kernel, others)"] = used["machine"] - named
        for name, s in used.items():
            per = s / max(n, 1) * 1000
            lines.append(f"      CPU {name:<30} {s * 1000:8.0f} ms  ({per:6.2f} ms per create)")
        heaviest = sorted(commands.items(), key=lambda kv: -kv[1])[:12]
        top = ", ".join(f"{c} {s * 1000:.0f}" for c, s in heaviest if s > 0)
        lines.append(f"      CPU by command (ms, processes alive at the end, own time): {top}")
        for name, path in self.logs.items():
            logged = _read_from(path, self.offsets[name])
            counts = collections.Counter(ev for line in logged for ev in _EVENTS if f"event={ev} " in line)
            lines.append(f"      {name} logged: " + ", ".join(f"{e} {counts[e]}" for e in _EVENTS))
        kinds = collections.Counter(_statements(_read_from(self.pg_log, self.offsets["postgres"])))
        lines.append(f"      PostgreSQL statements: {sum(kinds.values())}")
        lines += [f"        {c:5d}  {k}" for k, c in kinds.most_common(14)]
        return "\n".join(lines)


def _read_from(path: Path, offset: int) -> list[str]:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace").splitlines()


def _statements(lines: list[str]) -> list[str]:
    """The kinds of the statements in PostgreSQL's log lines (a statement's text may begin on
    the line after its ``execute``)."""
    out = []
    for i, line in enumerate(lines):
        if m := _STATEMENT.search(line):
            text = m.group(1) or next((x for x in lines[i + 1 : i + 4] if x.strip()), "")
            out.append(statement_kind(text))
    return out
