"""HostSandbox: the agent's view of one sandbox, and its ``record.json``.

The record is what re-adoption needs (config, network slot, layers, status). It is written
atomically and 0600 (it holds the sandbox's environment) before the container starts and after
every change of status, so a restarted agent, even after ``kill -9``, finds every sandbox it
may have left running (see readopt.py).
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warren.agent import sandbox_fs
from warren.agent.guest_client import GuestClient
from warren.agent.templates import MAPPED_BASE

RECORD_FILE = "record.json"
# Build steps' transient sandboxes (build_step.py): never listed, never re-adopted.
STEP_ID_PREFIX = "step-"

# One metrics point: (unix time, CPU %, memory bytes, disk bytes).
MetricPoint = tuple[int, float, int, int]


@dataclass
class SandboxSpec:
    """A sandbox's template name, sizes and settings: what a create asks for (``CreateRequest``)
    and what the agent keeps of it (``HostSandbox``)."""

    template: str
    vcpus: int
    memory_mb: int
    disk_size_mb: int
    timeout_sec: int
    internet: bool
    env: dict[str, str]


@dataclass
class HostSandbox(SandboxSpec):
    id: str
    status: str  # running | paused
    team_id: str
    template_id: str
    slot: int
    host_ip: str
    created_at: float
    last_active_at: float
    lower_layers: list[str]  # overlay lowerdir, topmost first
    snapshot_layers: list[str]  # the non-base lower layers, bottom first (copied by snapshots)
    base_config: dict[str, Any] = field(default_factory=dict)
    pid: int = 0
    # A sandbox made from layers (chain.Chain.to_record: base and digests) and its template's
    # defaults (chain.TemplateConfig.to_record); None / empty for a legacy template.
    chain: dict[str, Any] | None = None
    template_config: dict[str, Any] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    guest: GuestClient | None = field(default=None, repr=False)
    metrics: dict[str, deque[MetricPoint]] = field(default_factory=dict, repr=False)
    last_cpu: tuple[float, int] | None = field(default=None, repr=False)
    # Commands under way (unary exec, exec streams): the sandbox is in use, whatever the time
    # since they started — the TTL reaper leaves it alone.
    busy: int = field(default=0, repr=False)
    # The runtime it runs on ("" in records older than the choice: the agent's default), how a
    # paused one is paused ("memory": frozen; "disk": checkpointed, gVisor) and, for gVisor, the
    # secret its guest's TCP listener asks for (guest_agent/tcp.py).
    runtime: str = ""
    paused_state: str = ""
    guest_secret: str = field(default="", repr=False)
    # A gVisor checkpoint under way: no new command may reach the guest (gvisor_ops.pause).
    checkpointing: bool = field(default=False, repr=False)
    # Host uid of the sandbox's root (templates.uid_base of its slot; MAPPED_BASE for gVisor
    # and for records older than per-sandbox ranges): exports shift owners back by it.
    uid_base: int = MAPPED_BASE
    # The team that owns it (team_id is its template's); "" in records older than the field and
    # from a CP that did not say.
    owner_team: str = ""
    # The account that owns that team ("": none, or not said).
    owner_account: str = ""

    RECORD_FIELDS = (
        "id", "status", "team_id", "template_id", "template", "vcpus", "memory_mb", "disk_size_mb",
        "timeout_sec", "internet", "env", "slot", "host_ip", "created_at", "last_active_at",
        "lower_layers", "snapshot_layers", "base_config", "pid", "chain", "template_config",
        "runtime", "paused_state", "guest_secret", "uid_base", "owner_team", "owner_account",
    )  # fmt: skip
    # Fields that records written before them lack: such a record loads with their defaults.
    OPTIONAL_FIELDS = frozenset(
        {
            "chain",
            "template_config",
            "runtime",
            "paused_state",
            "guest_secret",
            "uid_base",
            "owner_team",
            "owner_account",
        }
    )

    @property
    def tenant(self) -> str:
        """Whose share of the agent's per-tenant limits it uses (the socket watchdog's workers,
        file transfer windows, turns, the DNS upstream count): its owning account (all the teams
        one account owns together), else its team, else itself when neither is known."""
        return self.owner_account or self.owner_team or self.id

    def record(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every field, the lock (and the futures of any
        # call waiting on it) included, which fails while another call waits for the sandbox.
        return {k: copy.deepcopy(getattr(self, k)) for k in self.RECORD_FIELDS}


def save(sb_dir: Path, sb: HostSandbox) -> None:
    sandbox_fs.write_private(sb_dir / RECORD_FILE, json.dumps(sb.record()))


def load(sb_dir: Path) -> HostSandbox | None:
    """The sandbox its record describes; None when there is no readable, complete record."""
    try:
        rec = json.loads((sb_dir / RECORD_FILE).read_text())
        fields = HostSandbox.RECORD_FIELDS
        return HostSandbox(**{k: rec[k] for k in fields if k in rec or k not in HostSandbox.OPTIONAL_FIELDS})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recorded_slot(sb_dir: Path) -> int | None:
    """The network slot a (possibly partial) record names."""
    try:
        return int(json.loads((sb_dir / RECORD_FILE).read_text())["slot"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
