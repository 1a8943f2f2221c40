"""asyncio steps the agent and the control plane share."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` (helpers of a stream or a server that is ending) and wait until each has
    ended, whatever it ended with: its result or error is of no use to a caller that is done with
    it, and a helper left running would outlive what it works on. All are cancelled before the
    first is awaited, so none waits behind another."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(BaseException):
            await t
