"""Which sandboxes' containers ended on their own, learnt the moment they do.

One pidfd per running sandbox (``os.pidfd_open`` works for any process, child or not), on the
event loop's reader: it becomes readable when the container's init (runc, crun) or gVisor's
sandbox process exits, for whatever reason — the host's OOM killer, a ``kill -9`` from the host,
the guest (PID 1) ending. The metrics loop's check (:func:`gone` every ``metrics_interval``) is
only the fallback where a pidfd cannot be had.

A frozen container (paused in memory, a waiting warm-pool member) is the exception. The host's
OOM killer thaws its victim, which then exits and fires the pidfd as any other; but a
``kill -9`` from the host leaves the frozen process in the freezer (cgroup v1), alive with the
SIGKILL pending, until something thaws it: no pidfd fires, and a resume would thaw a sandbox
that dies at once. Nothing tells of a signal pending, so frozen ones are polled (their
``/proc/<pid>/stat``, ~15 µs each), every ``FROZEN_POLL_S`` or slower with many of them.

The manager decides what an exit means (a gVisor checkpoint ends the process on purpose); for a
death it calls :meth:`ContainerExits.died`, which ends the guest calls in flight
(``GuestClient.container_gone``) and makes new ones fail at once with the same
:class:`~warren.errors.InvalidState`, also after the sandbox's teardown has removed it.

:class:`PidWatch` is the one pidfd watch: of every sandbox here, and of a new container's init
while its create waits for the guest (:func:`until_exit`, ``create.SandboxBuilder._wait_guest``:
a dead init fails the create at once), before there is a sandbox to register.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping

from warren.agent.guest_client import GuestClient
from warren.agent.proc import process_alive
from warren.agent.record import HostSandbox
from warren.errors import InvalidState

log = logging.getLogger("warren.agent")

# Sandboxes that died, remembered for the calls that come after their teardown (the CP's row
# says running until its next monitor pass). Bounded: the oldest are forgotten first.
REMEMBERED = 4096
# How often frozen containers are checked for a pending SIGKILL: every 0.1 s, or slower past
# ~30 of them so that the checks cost at most ~0.5 % of a core (3 ms between checks apiece).
FROZEN_POLL_S = 0.1
FROZEN_POLL_EACH_S = 0.003
_SIGKILL_BIT = 1 << 8  # signal 9 in the pending mask
_PF_EXITING = 0x4  # the kernel's task flag: exit under way


def ending(pid: int) -> bool:
    """Whether ``pid`` is on its way out though not gone yet: a SIGKILL pending (a frozen process
    acts on it only once thawed) or its exit under way (its pidfd fires only at the end)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # Counted from the state, after the command's ")": field 9 is the task's flags,
            # field 31 its thread's pending signals (a kill(2) of the process sets SIGKILL on
            # each of its threads).
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[6]) & _PF_EXITING != 0 or int(fields[28]) & _SIGKILL_BIT != 0
    except (OSError, IndexError, ValueError):
        return False


def frozen(sb: HostSandbox) -> bool:
    return sb.status == "paused" and sb.paused_state == "memory"


def process_gone(pid: int) -> bool:
    """Whether a container's process has ended or is ending (a frozen one when thawed)."""
    return not process_alive(pid) or ending(pid)


def gone(sb: HostSandbox) -> bool:
    """Whether the sandbox's container has ended. A sandbox paused to disk has no process to end."""
    return (sb.status == "running" or frozen(sb)) and process_gone(sb.pid)


async def confirmed_gone(sandboxes: Mapping[str, HostSandbox], sb_id: str, pid: int) -> HostSandbox | None:
    """The sandbox whose watched process ``pid`` ended (or, frozen, was killed) if that is a
    death: not when a pause or resume under way (waited for: its lock) leaves it paused to disk
    or with another process (a gVisor checkpoint ends the process on purpose)."""
    if (sb := sandboxes.get(sb_id)) is None or sb.pid != pid:
        return None
    async with sb.lock:
        pass
    return sb if sandboxes.get(sb_id) is sb and gone(sb) else None


def gone_message(sb_id: str) -> str:
    return f"sandbox {sb_id} is not running: its container exited (killed on the host, or out of memory)"


class PidWatch:
    """``fired()`` on the loop once ``pid`` has exited: its pidfd on the loop's reader (soon, if
    it is gone already). Raises :class:`OSError` where pidfds cannot be had (a kernel before 5.3)."""

    def __init__(self, pid: int, fired: Callable[[], object]) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = -1
        self._soon: asyncio.Handle | None = None
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._soon = self._loop.call_soon(fired)  # gone already (and reaped)
            return
        self._loop.add_reader(self._fd, fired)

    def exit_status(self) -> str:
        """How the exited process ended, e.g. `` (status 3)``, or empty where that cannot be told.
        The agent is a container init's subreaper (its parent once the runtime's CLI exited).
        WNOWAIT: the zombie stays for whoever reaps it (``Teardown.track``); WNOHANG: it has
        exited already."""
        if self._fd < 0:
            return ""
        try:
            got = os.waitid(os.P_PIDFD, self._fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except OSError:  # not our child (gVisor's sandbox process may not be), or reaped already
            return ""
        if got is None:
            return ""
        return f" (status {got.si_status})" if got.si_code == os.CLD_EXITED else f" (signal {got.si_status})"

    def close(self) -> None:
        if self._soon is not None:
            self._soon.cancel()
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


async def until_exit(pid: int) -> str:
    """Once ``pid`` (a new container's init) has exited: how (:meth:`PidWatch.exit_status`).
    Never returns without a pid (0) or pidfds: the caller's own timeout then ends the wait."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def fired() -> None:
        if not done.done():
            done.set_result(None)

    try:
        watch = PidWatch(pid, fired) if pid > 0 else None
    except OSError:
        watch = None
    try:
        await done  # without a watch, never done: cancelled with the wait
        return watch.exit_status() if watch is not None else ""
    finally:
        if watch is not None:
            watch.close()


class ContainerExits:
    """``on_exit(sandbox_id, pid)`` on the loop once a watched sandbox's process has exited."""

    def __init__(self, on_exit: Callable[[str, int], object]) -> None:
        self._on_exit = on_exit
        self._watches: dict[str, PidWatch] = {}  # sandbox id → its process's watch
        self._died: OrderedDict[str, None] = OrderedDict()
        self._frozen: dict[str, int] = {}  # sandbox id → pid, polled (see the module's doc)
        self._poll: asyncio.Task[None] | None = None

    def watch_sandbox(self, sb: HostSandbox) -> None:
        """Watch a sandbox as it is now: its process, and whether it is frozen."""
        self.watch(sb.id, sb.pid, frozen=frozen(sb))

    def watch(self, sb_id: str, pid: int, *, frozen: bool = False) -> None:
        """Watch ``pid`` as the sandbox's process (instead of any earlier one); 0: none.
        ``frozen``: its cgroup is frozen (a SIGKILL then waits for a thaw: polled)."""
        self.forget(sb_id)
        self._died.pop(sb_id, None)
        if pid <= 0:
            return
        if frozen:
            self._frozen[sb_id] = pid
            if self._poll is None or self._poll.done():
                self._poll = asyncio.get_running_loop().create_task(self._poll_frozen(), name="frozen-exits")
        watch: PidWatch | None = None

        def fired() -> None:
            if watch is not None and self._watches.get(sb_id) is watch:
                self.forget(sb_id)
                self._on_exit(sb_id, pid)

        try:
            watch = PidWatch(pid, fired)
        except OSError as e:  # no pidfds (a kernel before 5.3): the metrics loop notices
            log.warning("event=pidfd_unavailable sandbox_id=%s pid=%d error=%s", sb_id, pid, e)
            return
        self._watches[sb_id] = watch

    async def _poll_frozen(self) -> None:
        """While any is frozen: one whose SIGKILL waits is reported as if it had exited."""
        while self._frozen:
            await asyncio.sleep(max(FROZEN_POLL_S, len(self._frozen) * FROZEN_POLL_EACH_S))
            for sb_id, pid in list(self._frozen.items()):
                if self._frozen.get(sb_id) == pid and ending(pid):
                    log.info("event=frozen_container_killed sandbox_id=%s pid=%d", sb_id, pid)
                    self.forget(sb_id)
                    self._on_exit(sb_id, pid)

    def forget(self, sb_id: str) -> None:
        self._frozen.pop(sb_id, None)
        watch = self._watches.pop(sb_id, None)
        if watch is not None:
            watch.close()

    def close(self) -> None:
        for sb_id in list(self._watches):
            self.forget(sb_id)
        self._frozen.clear()
        if self._poll is not None:
            self._poll.cancel()  # it ends at its next turn; nothing to wait for

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
