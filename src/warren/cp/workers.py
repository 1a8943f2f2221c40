"""Lifespan hooks: background workers and shared clients started with the app.

Each hook is an async context manager factory taking the app; it runs after
``app.state.engine`` and ``app.state.settings`` exist and is exited in reverse order on
shutdown. Hooks always run (a HostClientPool is needed even in tests); a hook that starts a
background *loop* should skip it when ``app.state.settings.run_workers`` is false.

To add one, append it to ``HOOKS`` below (a one-line edit), e.g. the hosts subsystem adds the
HostClientPool (``app.state.pool``) and the HostMonitor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

LifespanHook = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def hooks() -> list[LifespanHook]:
    """The hooks, in start order. Imports are local so this module never creates import cycles."""
    from warren.cp.hosts import hosts_lifespan

    return [hosts_lifespan]


@asynccontextmanager
async def start_workers(app: FastAPI) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        started: list[str] = []
        app.state.workers = started
        for hook in hooks():
            await stack.enter_async_context(hook(app))
            started.append(getattr(hook, "__name__", repr(hook)))
        yield
