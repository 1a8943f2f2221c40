"""Which sandboxes' containers ended on their own, learnt the moment they do.

One pidfd per running sandbox (``os.pidfd_open`` works for any process, child or not), on the
event loop's reader: it becomes readable when the container's init (runc, crun) or gVisor's
sandbox process exits, for whatever reason — the host's OOM killer, a ``kill -9`` from the host,
the guest (PID 1) ending. Nothing polls: the metrics loop's check (``process_alive`` every
``metrics_interval``) is only the fallback where a pidfd cannot be had.

The manager decides what an exit means (a gVisor checkpoint ends the process on purpose); for a
death it calls :meth:`ContainerExits.died`, which ends the guest calls in flight
(``GuestClient.container_gone``) and makes new ones fail at once with the same
:class:`~warren.errors.InvalidState`, also after the sandbox's teardown has removed it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Callable

from warren.agent.guest_client import GuestClient
from warren.errors import InvalidState

log = logging.getLogger("warren.agent")

# Sandboxes that died, remembered for the calls that come after their teardown (the CP's row
# says running until its next monitor pass). Bounded: the oldest are forgotten first.
REMEMBERED = 4096


def gone_message(sb_id: str) -> str:
    return f"sandbox {sb_id} is not running: its container exited (killed on the host, or out of memory)"


class ContainerExits:
    """``on_exit(sandbox_id, pid)`` on the loop once a watched sandbox's process has exited."""

    def __init__(self, on_exit: Callable[[str, int], object]) -> None:
        self._on_exit = on_exit
        self._fds: dict[str, tuple[int, int]] = {}  # sandbox id → (pid, pidfd)
        self._died: OrderedDict[str, None] = OrderedDict()

    def watch(self, sb_id: str, pid: int) -> None:
        """Watch ``pid`` as the sandbox's process (instead of any earlier one); 0: none."""
        self.forget(sb_id)
        self._died.pop(sb_id, None)
        if pid <= 0:
            return
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            loop.call_soon(self._on_exit, sb_id, pid)  # gone already
            return
        except OSError as e:  # no pidfds (a kernel before 5.3): the metrics loop notices
            log.warning("event=pidfd_unavailable sandbox_id=%s pid=%d error=%s", sb_id, pid, e)
            return
        self._fds[sb_id] = (pid, fd)
        loop.add_reader(fd, self._fired, sb_id, pid, fd)

    def _fired(self, sb_id: str, pid: int, fd: int) -> None:
        if self._fds.get(sb_id) == (pid, fd):
            self.forget(sb_id)
            self._on_exit(sb_id, pid)

    def forget(self, sb_id: str) -> None:
        got = self._fds.pop(sb_id, None)
        if got is not None:
            asyncio.get_running_loop().remove_reader(got[1])
            os.close(got[1])

    def close(self) -> None:
        for sb_id in list(self._fds):
            self.forget(sb_id)

    def died(self, sb_id: str, guest: GuestClient | None) -> None:
        """The sandbox's container is gone for good: its guest calls end, new ones are refused."""
        self.forget(sb_id)
        self._died[sb_id] = None
        while len(self._died) > REMEMBERED:
            self._died.popitem(last=False)
        if guest is not None:
            guest.container_gone(gone_message(sb_id))

    def check(self, sb_id: str) -> None:
        """Raise the not-running error for a sandbox whose container died."""
        if sb_id in self._died:
            raise InvalidState(gone_message(sb_id))
