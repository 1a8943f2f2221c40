"""Small stdlib helper processes the agent starts once and talks to over a pipe: the namespace
maker (slot_userns.py, ns_maker.py) and the OCI spawner (runtime/oci_spawn.py, oci_spawner.py).

Both fork children for the agent, because a fork of the agent itself would run gRPC's fork
handlers. What they share lives here: the process and the task reading its answers
(:class:`HelperProcess`), and one helper per event loop, started again when it ended
(:class:`PerLoop`). Each subclass keeps its own protocol (requests, answers, errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Generic, TypeVar


async def spawn_script(
    script: Path, *, prefix: tuple[str, ...] = (), limit: int = 1 << 16
) -> asyncio.subprocess.Process:
    """``script`` (a stdlib module file beside its client) in an isolated interpreter, with
    pipes for requests and answers. ``limit``: the longest answer line read."""
    return await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-I", "-S", str(script),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        start_new_session=True,  # a Ctrl-C on the agent's terminal is the agent's to handle
        limit=limit,
    )  # fmt: skip


class HelperProcess(ABC):
    """A running helper and the task that reads its answers (:meth:`_read_answers`)."""

    def __init__(self, proc: asyncio.subprocess.Process, reader_name: str) -> None:
        self.proc = proc
        self.loop = asyncio.get_running_loop()
        self._reader = asyncio.create_task(self._read_answers(), name=reader_name)

    @abstractmethod
    async def _read_answers(self) -> None:
        """Read answers until the helper's stdout ends; then fail whatever still waits."""

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self._reader.done()

    async def close(self) -> None:
        """Kill the helper (what it is running dies with it) and wait for it and its reader."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(ProcessLookupError):
            await self.proc.wait()
        with contextlib.suppress(BaseException):
            await self._reader


H = TypeVar("H", bound=HelperProcess)


class PerLoop(Generic[H]):
    """This event loop's helper, started by ``start`` (again if it ended). Two calls that find
    none start one, not two: a lock per event loop (tests run several loops in one process)."""

    def __init__(self, start: Callable[[], Awaitable[H]]) -> None:
        self._start = start
        self._current: H | None = None
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def _usable(self, loop: asyncio.AbstractEventLoop) -> H | None:
        h = self._current
        return h if h is not None and h.alive and h.loop is loop else None

    async def get(self) -> H:
        loop = asyncio.get_running_loop()
        if (h := self._usable(loop)) is not None:
            return h  # the common case, without the lock's await
        async with self._locks.setdefault(loop, asyncio.Lock()):
            if (h := self._usable(loop)) is not None:
                return h
            if self._current is not None and self._current.loop is loop:
                await self._current.close()
            self._current = await self._start()
            return self._current

    async def stop(self) -> None:
        """End this loop's helper (agent shutdown; it would end with the agent anyway)."""
        if self._current is not None and self._current.loop is asyncio.get_running_loop():
            await self._current.close()
        self._current = None
