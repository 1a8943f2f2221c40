"""The runtime protocol: what the sandbox manager needs from a way of running sandboxes.

The OCI implementation (`oci.py`, runc or crun) is the first; a microVM runtime can follow with
the same contract. A runtime knows containers by sandbox id and nothing of networks, templates
or the guest agent: the manager prepares a bundle (`bundle.py`) and hands its path over.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol


class ContainerStatus(StrEnum):
    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ContainerState:
    id: str
    status: ContainerStatus
    pid: int  # host pid of the container's init (the guest agent); 0 when not running


@dataclass(frozen=True, slots=True)
class ContainerStats:
    cpu_ns: int  # cumulative CPU time of every process in the container
    mem_bytes: int  # memory in use, page cache that can be dropped excluded


class RuntimeError_(RuntimeError):
    """A runtime command failed; the message carries the runtime's own error text."""


class Runtime(Protocol):
    name: str

    async def create(self, sandbox_id: str, bundle: Path) -> int:
        """Create and start the container from ``bundle``; return the host pid of its init."""
        ...

    async def destroy(self, sandbox_id: str) -> None:
        """Kill every process and delete the container and its cgroups. Missing is fine."""
        ...

    async def pause(self, sandbox_id: str) -> None:
        """Freeze every process (memory stays resident)."""
        ...

    async def resume(self, sandbox_id: str) -> None: ...

    async def state(self, sandbox_id: str) -> ContainerState | None:
        """The container's state, or None when the runtime has no such container."""
        ...

    async def list(self) -> list[ContainerState]: ...

    def stats(self, sandbox_id: str) -> ContainerStats | None:
        """Cheap counters for the metrics sampler (reads cgroup files, no subprocess)."""
        ...
