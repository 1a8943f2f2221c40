"""Container ids that differ from sandbox ids: the sandboxes claimed from a warm pool.

A warm-pool member is started under its own name (``wp-…``, warm_pool.py) before anyone asks for
it; the runtime (and the cgroups it made) know it by that name for good. When a create claims it,
it becomes sandbox ``sb-…`` everywhere else (its directory, record, network claim), and this
wrapper maps the one to the other for every runtime call, so nothing else in the agent needs to
know. Every other sandbox's container id is its sandbox id, with no entry here.

The map is kept as one file per claimed sandbox under ``<data-dir>/container-ids/`` (written
before the claim renames anything, removed once the container is destroyed), so an agent that
restarts after a crash re-adopts a claimed sandbox like any other.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from warren.agent.runtime.base import ContainerState, ContainerStats, Runtime

_VALID = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def _check(name: str) -> str:
    if not name or len(name) > 128 or not set(name) <= _VALID:
        raise ValueError(f"invalid container id {name[:80]!r}")
    return name


class ContainerIds:
    """A :class:`Runtime` that runs every call under the sandbox's container id."""

    def __init__(
        self, inner: Runtime, state_dir: Path, *, released: Callable[[str], None] | None = None
    ) -> None:
        """``released``: told each container id once its container is destroyed (the runtime
        set forgets which runtime it ran on)."""
        self.inner = inner
        self.released = released
        self.name = inner.name
        self.state_dir = state_dir
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._cid: dict[str, str] = {}
        for f in state_dir.iterdir():
            with contextlib.suppress(OSError, ValueError):
                self._cid[_check(f.name)] = _check(f.read_text().strip())
        self._sid = {c: s for s, c in self._cid.items()}

    def container_id(self, sandbox_id: str) -> str:
        return self._cid.get(sandbox_id, sandbox_id)

    def alias(self, sandbox_id: str, container_id: str) -> None:
        """From now on ``sandbox_id`` is container ``container_id`` (persisted first)."""
        _check(sandbox_id)
        _check(container_id)
        tmp = self.state_dir / f".{sandbox_id}.tmp"
        tmp.write_text(container_id)
        os.replace(tmp, self.state_dir / sandbox_id)
        self._cid[sandbox_id] = container_id
        self._sid[container_id] = sandbox_id

    def aliases(self) -> list[str]:
        """The sandboxes whose container has another id."""
        return list(self._cid)

    def forget(self, sandbox_id: str) -> None:
        cid = self._cid.pop(sandbox_id, None)
        if cid is not None:
            self._sid.pop(cid, None)
        (self.state_dir / sandbox_id).unlink(missing_ok=True)

    # ------------------------------------------------------------------- the Runtime protocol

    async def create(self, sandbox_id: str, bundle: Path) -> int:
        return await self.inner.create(self.container_id(sandbox_id), bundle)

    async def destroy(self, sandbox_id: str) -> None:
        cid = self.container_id(sandbox_id)
        await self.inner.destroy(cid)
        self.forget(sandbox_id)
        if self.released is not None:
            self.released(cid)

    async def pause(self, sandbox_id: str) -> None:
        await self.inner.pause(self.container_id(sandbox_id))

    async def resume(self, sandbox_id: str) -> None:
        await self.inner.resume(self.container_id(sandbox_id))

    async def state(self, sandbox_id: str) -> ContainerState | None:
        st = await self.inner.state(self.container_id(sandbox_id))
        if st is None:
            return None
        return ContainerState(id=sandbox_id, status=st.status, pid=st.pid)

    async def list(self) -> list[ContainerState]:
        return [
            ContainerState(id=self._sid.get(c.id, c.id), status=c.status, pid=c.pid)
            for c in await self.inner.list()
        ]

    def stats(self, sandbox_id: str) -> ContainerStats | None:
        return self.inner.stats(self.container_id(sandbox_id))

    def frozen(self, sandbox_id: str) -> bool | None:
        frozen = getattr(self.inner, "frozen", None)
        return None if frozen is None else frozen(self.container_id(sandbox_id))  # type: ignore[no-any-return]
