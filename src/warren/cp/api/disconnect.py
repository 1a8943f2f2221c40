"""A request's work that stops when its HTTP client goes away (an exec, an image import).

Uvicorn does not cancel a handler whose client has left: the handler runs to its end and its
answer is dropped. For work that costs the platform (a command, a whole image read) that end is
paid for nobody; here a watcher of the client's disconnect cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")

CLIENT_GONE = 499  # the status a dropped answer is logged with (nginx's "client closed request")


async def until_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run ``work`` unless the HTTP client goes away first: then it is cancelled (for an exec,
    that cancels the RPC and the agent kills the command) and the answer is None. Call it once
    the body has been read: the next ASGI message is then the client's disconnect."""
    task = asyncio.ensure_future(work)

    async def client_gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(client_gone())
    # The watcher's end (a disconnect) cancels the work; awaiting the work itself costs less
    # than asyncio.wait's set, future and callbacks on both.
    watcher.add_done_callback(lambda _: task.cancel())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            return None  # the client went away (or its receive failed)
        raise  # this request itself was cancelled
    finally:
        watcher.cancel()
        with contextlib.suppress(BaseException):
            await watcher  # ended before the answer's own receive() calls
