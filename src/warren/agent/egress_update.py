"""UpdateNetwork: replace a running (or paused) sandbox's egress rules.

The new rules are checked again here (the CP checked them first), then applied by the slot's
:class:`~warren.agent.egress_rules.SandboxEgress` in one transaction, under the sandbox's lock
so a destroy cannot free the slot halfway. A sandbox made with ``internet=false`` has nothing
to filter: its every packet is dropped, and an update is refused (409).
"""

from __future__ import annotations

from warren.agent.manager import SandboxManager
from warren.agent.network import Slot
from warren.agent.sandbox_fs import SandboxFs
from warren.egress_rules import EgressRules
from warren.errors import InvalidState, NotFound


async def update_network(m: SandboxManager, sandbox_id: str, rules: EgressRules) -> None:
    sb = m.sandbox(sandbox_id)
    if not sb.internet:
        raise InvalidState(f"sandbox {sandbox_id} has no internet access; it has no egress rules to change")
    async with sb.lock:
        if m.sandbox(sandbox_id) is not sb:
            raise NotFound(f"sandbox {sandbox_id} not found")
        resolv = SandboxFs(m.sandboxes_dir / sb.id).identity / "resolv.conf"
        await m.network.rules.apply(Slot(sb.slot), rules, resolv, sb.tenant)
