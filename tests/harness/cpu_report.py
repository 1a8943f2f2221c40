"""What each test module costs in CPU, for trimming the suite (it is CPU-bound: three workers on
two cores leave ~1 % idle, so a module's wall time says little about what it takes from the rest).

Set ``WARREN_TEST_CPU_REPORT=<file>`` and each worker appends one line per module to ``<file>``:
CPU seconds, wall seconds, the module. The CPU is the worker's own and its children's: the
module's CP processes and agents once reaped, the shared platform's as they run, and through
each agent (the subreaper of its containers) the sandboxes it has reaped. Left out: PostgreSQL
(~40 CPU-s a whole run). A live child's own children count once it reaps them: each worker's
last module also gets what the shared platform's had used over the run (~10-30 CPU-s, in a
module of a second). Sort the file with ``sort -rn``.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Generator
from pathlib import Path

import pytest

ENV = "WARREN_TEST_CPU_REPORT"


_TICK = os.sysconf("SC_CLK_TCK")


def _live_children() -> float:
    """CPU of this process's children still running (a shared platform's CP and agent), with
    what each has reaped of its own (an agent's sandboxes)."""
    total = 0
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile: counted once reaped
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / _TICK


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + _live_children()


class ModuleCPU:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.module: str | None = None
        self.start = (0.0, 0.0)

    def _close(self) -> None:
        if self.module is None:
            return
        cpu, wall = _cpu() - self.start[0], time.monotonic() - self.start[1]
        with self.out.open("a") as f:  # one short append a module: whole lines from every worker
            f.write(f"{cpu:8.1f} {wall:8.1f} {self.module}\n")
        self.module = None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, None, None]:
        module = item.nodeid.split("::")[0]
        if module != self.module:
            self._close()
            self.module, self.start = module, (_cpu(), time.monotonic())
        yield

    def pytest_sessionfinish(self) -> None:
        self._close()


def pytest_configure(config: pytest.Config) -> None:
    out = os.environ.get(ENV)
    if out:
        config.pluginmanager.register(ModuleCPU(Path(out)), "warren-module-cpu")
