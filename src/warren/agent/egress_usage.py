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
    """The final egress reading of each sandbox destroyed in the last :data:`KEEP_S` seconds (at
    most :data:`MAX_ENDED`), kept in ``path`` (when given) so an agent restart does not lose
    them. The file is a log, one JSON line per teardown, rewritten once it holds twice as many
    lines as entries: a destroy costs one short append, whatever the number kept."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        # Insertion order is time order: expiry and the bound drop from the front.
        self._ended: dict[str, tuple[int, float]] = {}
        self._lines = 0
        if path is not None:
            with contextlib.suppress(OSError):
                for line in path.read_text().splitlines():
                    self._lines += 1
                    with contextlib.suppress(ValueError, TypeError, IndexError):
                        sid, sent, at = json.loads(line)
                        self._put(str(sid), int(sent), float(at))
        self._expire()

    def add(self, sandbox_id: str, sent: int) -> None:
        at = clock.time_s()
        self._put(sandbox_id, sent, at)
        self._expire()
        if self.path is None:
            return
        try:
            if self._lines >= 2 * len(self._ended) + 64:
                self._rewrite()
            else:
                with open(self.path, "a") as f:
                    f.write(json.dumps([sandbox_id, sent, at]) + "\n")
                self._lines += 1
        except OSError as e:  # a full data disk: the entry stays in memory
            log.warning("event=egress_ended_not_saved error=%s", e)

    def entries(self) -> dict[str, int]:
        """Sandbox id → its final reading, for those still kept."""
        self._expire()
        return {k: v[0] for k, v in self._ended.items()}

    def _put(self, sandbox_id: str, sent: int, at: float) -> None:
        self._ended.pop(sandbox_id, None)
        self._ended[sandbox_id] = (sent, at)

    def _expire(self) -> None:
        cutoff = clock.time_s() - KEEP_S
        while self._ended:
            first = next(iter(self._ended))
            if len(self._ended) <= MAX_ENDED and self._ended[first][1] >= cutoff:
                return
            del self._ended[first]

    def _rewrite(self) -> None:
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(json.dumps([k, *v]) + "\n" for k, v in self._ended.items())
        os.replace(tmp, self.path)
        self._lines = len(self._ended)


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
