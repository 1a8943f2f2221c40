"""Blocking work in a thread that a cancelled caller stops, and waits for (the agent's exports,
the template store's S3 uploads, the agent's layer writes).

``asyncio.to_thread`` cannot stop its thread: a cancelled caller returns at once while the
thread runs on. For work a tenant's files size (a snapshot export walks and writes all of them),
that let a caller give back what bounded the work (an export's turn, the sandbox's lock) while the
work went on holding a thread of the default executor and an unlinked temporary file, and the next
call started another. Here the work gets a :class:`threading.Event` to check between its steps;
a cancelled caller sets it and waits for the thread to end before the cancellation goes on, so
whatever the caller holds is held for exactly as long as the work runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from warren.aio import outlast

T = TypeVar("T")


class Stopped(Exception):
    """Raised inside the work once its caller was cancelled."""


async def run_stoppable(work: Callable[[threading.Event], T], *, executor: Executor | None = None) -> T:
    """``work(stop)`` in a thread of ``executor`` (the loop's default one when None); its result.
    ``stop`` is set when the caller is cancelled, and the cancellation waits for ``work`` to
    return or raise (``Stopped``, typically)."""
    stop = threading.Event()
    call = contextvars.copy_context().run  # as asyncio.to_thread: the caller's context variables
    done = asyncio.get_running_loop().run_in_executor(executor, call, work, stop)
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        stop.set()
        await outlast(done)  # the thread stops at its next step; the hold outlasts it
        raise
