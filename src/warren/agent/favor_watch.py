"""Keeping the kernel's cgroup ``favordynmods`` set while the agent runs (runtime/cmds_cgroup.py).

The agent sets the flag at start, but it is the host's: any later ``cgroup2`` mount without the
option, by any program in the host's cgroup namespace, clears it, and from then on every tenant
command's move into ``cmds`` waits an RCU grace period (a claimed sandbox's first exec 7.6 ->
19.9 ms p50). So the agent looks again every heartbeat interval (``WARREN_HEARTBEAT_INTERVAL_S``,
30 s; one read of ``/proc/self/mountinfo``, :func:`favored`) and sets it again when it is gone:
``event=cgroup_favordynmods_restored`` (warning) once per restore, and two metrics,
``warren_agent_cgroup_favordynmods`` (1 set, 0 not) and ``..._restores_total``.

Watched only when ``WARREN_AGENT_CGROUP_FAVOR_DYNMODS`` is on and the flag could be set when the
agent started (a kernel without the option is not asked again every 30 s).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from prometheus_client import Counter, Gauge

from warren.agent.runtime import cmds_cgroup
from warren.agent.telemetry import REGISTRY

log = logging.getLogger("warren.agent")

_CGROUP2 = " - cgroup2 "  # a mountinfo line's separator and file system type

FAVORED = Gauge(
    "warren_agent_cgroup_favordynmods",
    "1 while the kernel's cgroup favordynmods flag is set (re-checked every heartbeat interval); "
    "0 when it is not, or when the agent does not watch it (WARREN_AGENT_CGROUP_FAVOR_DYNMODS=false).",
    registry=REGISTRY,
)
RESTORES = Counter(
    "warren_agent_cgroup_favordynmods_restores",
    "Times the agent found the favordynmods flag cleared (a cgroup2 mount without it) and set it again.",
    registry=REGISTRY,
)


def favored(mountinfo: Path = Path("/proc/self/mountinfo")) -> bool:
    """Whether the flag is set: what ``cmds_cgroup._favored`` tells, parsing only the cgroup2
    lines (0.17 ms with 260 mounts here, 0.9 ms splitting every line; a host's mounts grow with
    its sandboxes). The flag is the cgroup2 root's, so every cgroup2 mount shows it."""
    try:
        text = mountinfo.read_text()
    except OSError:
        return False
    at = text.find(_CGROUP2)  # mount points escape their spaces: only the separator matches
    while at >= 0:
        end = text.find("\n", at)
        line = text[at:] if end < 0 else text[at:end]
        if cmds_cgroup._FAVOR in line.split()[-1].split(","):
            return True
        at = -1 if end < 0 else text.find(_CGROUP2, end)
    return False


class FavorWatch:
    """One check at a time (:meth:`check`, blocking: run it in a thread); :func:`watch` loops."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.lost = False  # cleared and not restored: said once, until it is back
        self.restores = 0

    def check(self) -> bool:
        """Whether the flag is set after this look (set again if it was cleared)."""
        state, why = ("already", "") if favored() else cmds_cgroup.favor_dynamic_moves(self.scratch)
        if state == "already":
            self.lost = False
        elif state == "on":
            RESTORES.inc()
            self.restores += 1
            self.lost = False
            log.warning(
                "event=cgroup_favordynmods_restored reason='a cgroup2 mount without the option "
                "cleared it' restores=%d", self.restores,
            )  # fmt: skip
        elif not self.lost:
            self.lost = True
            log.warning("event=cgroup_favordynmods_lost reason=%r consequence=slower_command_starts", why)
        FAVORED.set(0 if self.lost else 1)
        return not self.lost


async def watch(scratch: Path, interval_s: float) -> None:
    """Until cancelled: every ``interval_s``, :meth:`FavorWatch.check` (module docstring)."""
    state, _ = await asyncio.to_thread(cmds_cgroup.favor_dynamic_moves, scratch)
    if state == "unavailable":
        return  # the start could not set it either (logged there): not asked every interval
    watcher = FavorWatch(scratch)
    FAVORED.set(1)
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(watcher.check)
        except Exception as e:  # a look that failed must not end the watch
            log.warning("event=cgroup_favordynmods_check_failed error=%s", e)
