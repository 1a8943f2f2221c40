"""Re-adoption: at startup, take back the sandboxes a previous agent left running.

A sandbox is adopted when its record is readable, its container is running or paused and its
rootfs is still mounted; its network slot is claimed again and, for a sandbox without internet,
the block rule restored. Everything else under ``sandboxes/`` and every container of ours that
is not adopted is a crash's leftover and is removed, then the network slots nobody holds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from warren import clock
from warren.agent import record
from warren.agent.network import NetworkSlots, Slot
from warren.agent.record import HostSandbox
from warren.agent.runtime.base import ContainerStatus, Runtime
from warren.agent.teardown import Teardown
from warren.errors import WarrenError

log = logging.getLogger("warren.agent")


async def readopt(
    sandboxes_dir: Path,
    runtime: Runtime,
    network: NetworkSlots,
    teardown: Teardown,
    adopt: Callable[[HostSandbox], None],
) -> None:
    """Rebuild state from records + the runtime (``adopt`` registers each survivor); remove
    everything else we own."""
    adopted: dict[str, HostSandbox] = {}
    for d in sorted(sandboxes_dir.iterdir()):  # noqa: ASYNC240 - startup, a few entries
        if d.is_dir() and (sb := await _survivor(d, runtime)) is not None:
            network.mark_used(sb.slot, sb.id)
            if not sb.internet:
                await network.block_internet(Slot(sb.slot))
            adopt(sb)
            adopted[sb.id] = sb
            log.info("event=sandbox_readopted sandbox_id=%s status=%s", sb.id, sb.status)
    # Leftovers: sandbox dirs and containers that are not adopted.
    leftovers = {d.name for d in sandboxes_dir.iterdir() if d.is_dir()} - adopted.keys()  # noqa: ASYNC240
    leftovers |= {c.id for c in await runtime.list()} - adopted.keys()
    for sb_id in sorted(leftovers):
        log.info("event=leftover_cleanup sandbox_id=%s", sb_id)
        try:
            await teardown.cleanup(sb_id, slot=teardown.leftover_slot(sb_id), pid=0)
        except WarrenError as e:
            log.error("event=leftover_cleanup_failed sandbox_id=%s error=%s", sb_id, e)
    await network.cleanup_leftovers(keep={sb.slot for sb in adopted.values()})


async def _survivor(d: Path, runtime: Runtime) -> HostSandbox | None:
    """The sandbox of one directory, if it survived the previous agent."""
    sb = record.load(d)
    # A build step's sandbox dies with the call that made it, which a restart ended. A record
    # that names another sandbox than its dir is a warm-pool member's whose claim did not finish
    # (warm_claim.py): destroyed like any leftover.
    if sb is None or sb.id.startswith(record.STEP_ID_PREFIX) or sb.id != d.name:
        return None
    state = await runtime.state(sb.id)
    alive = state is not None and state.status in (ContainerStatus.RUNNING, ContainerStatus.PAUSED)
    if not alive or not os.path.ismount(d / "rootfs"):  # noqa: ASYNC240
        return None
    assert state is not None
    sb.status = "paused" if state.status == ContainerStatus.PAUSED else "running"
    sb.pid = state.pid
    sb.last_active_at = clock.time_s()  # activity before the restart is unknown
    return sb
