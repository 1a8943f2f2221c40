"""A client's flood of requests, as the refusal attacks send it: the same request in a loop on
several connections at once for a while, every answer kept."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

T = TypeVar("T")


async def flood(request: Callable[[], Awaitable[T]], *, connections: int, seconds: float) -> list[T]:
    """Run ``request`` in a loop on ``connections`` tasks for ``seconds``; what each answered,
    in order of arrival (a request cut off at the end is not counted)."""
    answers: list[T] = []

    async def loop() -> None:
        while True:
            answers.append(await request())

    tasks = [asyncio.create_task(loop()) for _ in range(connections)]
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await t
    return answers
