"""Calls that reach a sandbox paused for a snapshot its CP resumes right after wait for that
resume instead of being refused (session 35).

E2B's snapshot and fork pause a running sandbox and resume it with the same id
(``cp/services/snapshot_hold.py``). The CP marks the row first, so a command looked up after
the mark waits in the CP. One looked up just before it may reach this agent once the sandbox
is paused; before this, it was refused (FAILED_PRECONDITION, the CP's 409, E2B's "not
running"). The CP left 100 ms between its mark and the pause for those, and retried only its
unary exec and file reads once; a stream (exec stream, terminal, envd ``Start``, a write, a
listing) under load could come later and fail.

So that pause (``PauseSandboxRequest.resume_after``) puts a hold on the sandbox before it
freezes it. :meth:`SandboxManager.ready_guest`, where every command and file call reaches its
guest, waits while one is on. A hold ends with the sandbox's next resume (whether it succeeds
or not: a call that waited is then answered as the sandbox is), its destroy, a failed pause,
or after :data:`WAIT_S` for each waiter (a CP that never resumes it: the call is refused as
before). A waiting call holds only its gRPC call; the CP bounds how many it makes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from typing import TypeVar

T = TypeVar("T")

# The CP's own wait for a snapshot is bounded by its export and resume budgets; a call waits
# here at most this long, then is answered as the sandbox then is.
WAIT_S = 120.0


class ResumeHolds:
    """The sandboxes on hold, by id."""

    def __init__(self) -> None:
        self._holds: dict[str, asyncio.Event] = {}

    def hold(self, sb_id: str) -> None:
        """Calls to ``sb_id`` wait from now until :meth:`release`."""
        self._holds.setdefault(sb_id, asyncio.Event())

    def release(self, sb_id: str) -> None:
        """Its waiting calls go on (a resume, a destroy, a pause that failed)."""
        if (held := self._holds.pop(sb_id, None)) is not None:
            held.set()

    @contextlib.contextmanager
    def during_pause(self, sb_id: str, resume_after: bool) -> Iterator[None]:
        """Around the freeze: a hold from its start when ``resume_after``, let go if it fails."""
        if resume_after:
            self.hold(sb_id)
        try:
            yield
        except BaseException:
            self.release(sb_id)
            raise

    async def released_after(self, sb_id: str, resume: Awaitable[T]) -> T:
        """``resume``, then the hold goes, whether it thawed the sandbox or not."""
        try:
            return await resume
        finally:
            self.release(sb_id)

    def held(self, sb_id: str) -> bool:
        return sb_id in self._holds

    async def wait(self, sb_id: str) -> None:
        """Until ``sb_id`` is not on hold, or :data:`WAIT_S`."""
        if (held := self._holds.get(sb_id)) is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT_S):
                await held.wait()
