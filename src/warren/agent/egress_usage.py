"""What each sandbox has sent out through the host, as the control plane collects it (issue 18:
per-team egress, docs/operations.md "Metrics").

The counters are iptables rules, one per network slot (egress.py, ``WARREN-ACCT``): made with
the slot, read by every ``ListSandboxes`` (the host monitor's pass), and read a last time when
the slot is torn down. That last reading goes into :class:`EndedEgress`, which the following
``ListSandboxes`` calls report for an hour, so the bytes a sandbox sent between the CP's last
pass and its destroy are counted too. The CP adds the growth of each reading to the sandbox's
row, so reporting the same reading twice counts nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from warren import clock
from warren.errors import NotFound

if TYPE_CHECKING:
    from warren.agent.manager import SandboxManager
    from warren.agent.record import HostSandbox

log = logging.getLogger("warren.agent.egress")

ENDED_FILE = "egress-ended.json"
# An hour of monitor passes (30 s apart) to collect a destroyed sandbox's last bytes; a CP down
# longer loses what its sandboxes sent after its last pass.
KEEP_S = 3600.0
# Bounds the file and the answer whatever the destroy rate (~60 bytes an entry).
MAX_ENDED = 4096


class EndedEgress:
    """The final egress reading of each sandbox destroyed in the last :data:`KEEP_S` seconds,
    kept in ``path`` (when given) so an agent restart does not lose them."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._ended: dict[str, tuple[int, float]] = {}
        if path is not None:
            with contextlib.suppress(OSError, ValueError, TypeError):
                raw = json.loads(path.read_text())
                self._ended = {str(k): (int(v[0]), float(v[1])) for k, v in raw.items()}
        self._expire()

    def add(self, sandbox_id: str, sent: int) -> None:
        self._ended[sandbox_id] = (sent, clock.time_s())
        self._expire()
        self._save()

    def entries(self) -> dict[str, int]:
        """Sandbox id → its final reading, for those still kept."""
        if self._expire():
            self._save()
        return {k: v[0] for k, v in self._ended.items()}

    def _expire(self) -> bool:
        cutoff = clock.time_s() - KEEP_S
        kept = sorted(((k, v) for k, v in self._ended.items() if v[1] >= cutoff), key=lambda kv: kv[1][1])
        kept = kept[-MAX_ENDED:]
        changed = len(kept) != len(self._ended)
        self._ended = dict(kept)
        return changed

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({k: list(v) for k, v in self._ended.items()}, f)
            os.replace(tmp, self.path)
        except OSError as e:  # a full data disk: the entry stays in memory
            log.warning("event=egress_ended_not_saved error=%s", e)


async def sandbox_egress(manager: SandboxManager, sandboxes: Iterable[HostSandbox]) -> dict[str, int]:
    """Sandbox id → bytes it has sent out, for those of ``sandboxes`` whose counter could be read
    and which held their slot throughout the read (one destroyed meanwhile may have handed its
    slot, and the slot's counter, to a new sandbox)."""
    listed = list(sandboxes)
    try:
        by_slot = await manager.network.egress_bytes(s.slot for s in listed)
    except Exception as e:  # a listing must not fail (nor lose its auto-paused ids) over counters
        log.warning("event=egress_read_failed error=%s", e)
        return {}
    out: dict[str, int] = {}
    for s in listed:
        if s.slot not in by_slot:
            continue
        with contextlib.suppress(NotFound):
            if manager.sandbox(s.id) is s:
                out[s.id] = by_slot[s.slot]
    return out
