"""Several runtimes on one host, chosen per sandbox (``CreateSandboxRequest.runtime``).

:class:`RuntimeSet` is itself a :class:`~warren.agent.runtime.base.Runtime`: the manager, the
builder, teardown and re-adoption call it as they called the one runtime before, and it sends
each call to the runtime its sandbox runs on. A sandbox's runtime is known from the create
(``assign``) or from its record at re-adoption; a sandbox it knows nothing of (a crash's
leftover) is looked for in every runtime, and a destroy goes to all of them (missing is fine).
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from warren.agent.proc import CommandError
from warren.agent.runtime import gvisor, oci_spawn
from warren.agent.runtime.base import ContainerState, ContainerStats, Runtime
from warren.agent.runtime.gvisor import GvisorRuntime
from warren.agent.runtime.oci import HYBRID_CGROUP2
from warren.errors import Conflict

RUNTIME_NAMES = ("runc", "crun", "gvisor")
AUTO = "auto"  # `--runtime auto` (the default): crun where it works, else runc (choose_default)


def installed_runtimes() -> list[str]:
    """What a host will offer, known before the agent starts its runtimes (the registration
    says it; each heartbeat then says what :meth:`RuntimeSet.offered`): every OCI runtime
    installed, and gVisor where runsc is and ``WARREN_AGENT_GVISOR_PLATFORM`` is not ``off``."""
    names = [n for n in ("runc", "crun") if shutil.which(n)]
    if gvisor.available() and os.environ.get("WARREN_AGENT_GVISOR_PLATFORM", "").strip() != "off":
        names.append(gvisor.NAME)
    return names or ["runc"]


async def choose_default(asked: str) -> tuple[str, str]:
    """The agent's default OCI runtime and why. ``--runtime runc|crun`` is taken as given.
    ``auto``: crun where it is installed and runs here (through the spawner, in the mount
    namespace its commands get: the hybrid layout's cgroup2 mount hidden), else runc. Linked to
    a control plane or not: the agent reports its default (registration, heartbeats), and a
    create that names no runtime runs on its host's default (the CP's ``WARREN_DEFAULT_RUNTIME``
    is ``host`` unless set), its warm pools keyed by template and runtime (warm_pool.py)."""
    if asked != AUTO:
        return asked, "--runtime"
    if (crun := shutil.which("crun")) is None:
        return "runc", "crun is not installed"
    hide = str(HYBRID_CGROUP2) if os.path.ismount(HYBRID_CGROUP2) else None  # noqa: ASYNC240
    try:
        await oci_spawn.run(crun, "--version", hide=hide, timeout=30)
    except CommandError as e:
        return "runc", f"crun does not run here: {e.stderr[-300:]}"
    return "crun", "installed and runs here"


class RuntimeSet:
    def __init__(self, runtimes: Mapping[str, Runtime], default: str) -> None:
        if default not in runtimes:
            raise ValueError(f"default runtime {default!r} is not offered")
        self.runtimes = dict(runtimes)
        self.default = default
        self.name = default  # what the agent logs as "its" runtime
        self._of: dict[str, str] = {}

    def offered(self) -> list[str]:
        """The runtimes this host offers, in RUNTIME_NAMES order (the heartbeat's `runtimes`)."""
        return [n for n in RUNTIME_NAMES if n in self.runtimes]

    def resolve(self, name: str) -> str:
        """The runtime a create asks for ("" = the default); FAILED_PRECONDITION when absent."""
        name = name or self.default
        if name not in self.runtimes:
            known = "unknown runtime" if name not in RUNTIME_NAMES else "runtime not available on this host"
            raise Conflict(f"{known} {name!r} (this host offers: {', '.join(self.offered())})")
        return name

    def assign(self, sandbox_id: str, name: str) -> None:
        self._of[sandbox_id] = self.resolve(name)

    def forget(self, sandbox_id: str) -> None:
        self._of.pop(sandbox_id, None)

    def name_of(self, sandbox_id: str) -> str:
        return self._of.get(sandbox_id, self.default)

    def of(self, sandbox_id: str) -> Runtime:
        return self.runtimes[self.name_of(sandbox_id)]

    def gvisor(self, sandbox_id: str) -> GvisorRuntime | None:
        rt = self.of(sandbox_id)
        return rt if isinstance(rt, GvisorRuntime) else None

    # --------------------------------------------------------------------- Runtime protocol

    async def create(self, sandbox_id: str, bundle: Path) -> int:
        return await self.of(sandbox_id).create(sandbox_id, bundle)

    async def destroy(self, sandbox_id: str) -> None:
        if sandbox_id in self._of:
            await self.of(sandbox_id).destroy(sandbox_id)
            return
        for rt in self.runtimes.values():  # a leftover: whichever runtime may hold it
            await rt.destroy(sandbox_id)

    async def pause(self, sandbox_id: str) -> None:
        await self.of(sandbox_id).pause(sandbox_id)

    async def resume(self, sandbox_id: str) -> None:
        await self.of(sandbox_id).resume(sandbox_id)

    async def state(self, sandbox_id: str) -> ContainerState | None:
        if sandbox_id in self._of:
            return await self.of(sandbox_id).state(sandbox_id)
        for rt in self.runtimes.values():
            if (st := await rt.state(sandbox_id)) is not None:
                return st
        return None

    async def list(self) -> list[ContainerState]:
        found = [await rt.list() for rt in self.runtimes.values()]
        return list(itertools.chain.from_iterable(found))

    def stats(self, sandbox_id: str) -> ContainerStats | None:
        return self.of(sandbox_id).stats(sandbox_id)
