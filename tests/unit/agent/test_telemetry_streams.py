"""The agent's RPC wrapper around streaming handlers: a stream closed from another context
(what the event loop's async-generator finalizer does when a client leaves mid-stream) ends
quietly instead of raising from its ``finally`` (bench/soak.py found one such error per
file read)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from warren.agent.telemetry import _wrap
from warren.request_context import request_id


async def test_a_stream_closed_in_another_context_ends_quietly() -> None:
    async def handler(request: Any, context: Any) -> AsyncIterator[int]:
        yield 1
        yield 2

    gen = _wrap(handler, "ReadFile", lambda _c: "rid-soak")(None, None)
    # The first item is produced in a task, so in a copy of this context ...
    assert await asyncio.create_task(gen.__anext__()) == 1
    # ... and the close comes from here, as a finalizer's would.
    await gen.aclose()
    assert request_id.get() is None
