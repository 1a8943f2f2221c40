"""UpdateNetwork: replace a running (or paused) sandbox's egress rules.

The new rules are checked again here (the CP checked them first), then applied by the slot's
:class:`~warren.agent.egress_rules.SandboxEgress` in one transaction, under the sandbox's lock
so a destroy cannot free the slot halfway, once :mod:`~warren.agent.egress_pace` gives the
change its turn (at most one application a second per sandbox, four a second per tenant: a
change waits for it, never refused). A sandbox made with ``internet=false`` has nothing to
filter: its every packet is dropped, and an update is refused (409).
"""

from __future__ import annotations

from warren.agent.egress_pace import ChangePace
from warren.agent.manager import SandboxManager
from warren.agent.network import Slot
from warren.agent.per_manager import PerManager
from warren.agent.sandbox_fs import SandboxFs
from warren.egress_rules import EgressRules
from warren.errors import InvalidState, NotFound

# The manager's pace of rule changes (made on first use).
pace_of: PerManager[ChangePace] = PerManager(lambda m: ChangePace())


async def update_network(m: SandboxManager, sandbox_id: str, rules: EgressRules) -> None:
    sb = m.sandbox(sandbox_id)
    if not sb.internet:
        raise InvalidState(f"sandbox {sandbox_id} has no internet access; it has no egress rules to change")
    async with pace_of(m).turn(sandbox_id, sb.tenant), sb.lock:
        if m.sandbox(sandbox_id) is not sb:
            raise NotFound(f"sandbox {sandbox_id} not found")
        resolv = SandboxFs(m.sandboxes_dir / sb.id).identity / "resolv.conf"
        await m.network.rules.apply(Slot(sb.slot), rules, resolv, sb.tenant)
