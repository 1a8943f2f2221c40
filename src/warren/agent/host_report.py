"""What this agent tells the control plane about itself with each heartbeat: the body the CP
reads as ``cp/services/host_link.py:HostReport``, each key stored in the ``hosts`` column of the
same name. One key per feature, added by the feature: the runtimes this host offers, its warm
pools, its data disk's free space."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warren.agent.main import AgentHandle


def host_report(handle: AgentHandle) -> dict[str, Any]:
    """The heartbeat body, built fresh for each beat (cheap: no subprocess, no RPC)."""
    report: dict[str, Any] = {}
    report["runtimes"] = handle.manager.runtimes.offered()
    return report
