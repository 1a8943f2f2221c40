"""Warm pools (issue 17, docs/agent.md "Warm pools"): per template, N sandboxes kept ready.

A pool is named by the template it holds ("minimal", or the reference the control plane
resolved) and keyed by its chain: a create whose template is the pool's claims a member.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from warren.agent.chain import Chain, TemplateConfig
from warren.errors import InvalidRequest

MINIMAL_POOL = "minimal"
# A pool's size bounds what one call can make the host build and keep.
MAX_POOL_SIZE = 256
MAX_POOLS = 32
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$")


@dataclass(frozen=True)
class PoolStatus:
    template: str
    target: int
    ready: int


@dataclass
class Pool:
    """One template's pool: its target size and the chain its members run (None: `minimal`)."""

    name: str
    target: int
    chain: Chain | None = None
    config: TemplateConfig = field(default_factory=TemplateConfig)
    ready: list[str] = field(default_factory=list)


def check_pool(name: str, size: int, chain: Chain | None) -> None:
    if not _NAME.match(name):
        raise InvalidRequest(f"invalid warm pool template {name[:80]!r}")
    if not 0 <= size <= MAX_POOL_SIZE:
        raise InvalidRequest(f"warm pool size must be 0-{MAX_POOL_SIZE}")
    if chain is None and name != MINIMAL_POOL:
        raise InvalidRequest(f"warm pool {name!r}: a chain is required for a template other than minimal")


class WarmPools:
    """The pools of this agent."""

    def __init__(self) -> None:
        self.pools: dict[str, Pool] = {}

    async def set(self, name: str, size: int, chain: Chain | None, config: TemplateConfig | None) -> None:
        """Set a pool's target (0 removes it)."""
        check_pool(name, size, chain)
        if size == 0:
            self.pools.pop(name, None)
            return
        if name not in self.pools and len(self.pools) >= MAX_POOLS:
            raise InvalidRequest(f"at most {MAX_POOLS} warm pools per host")
        pool = self.pools.setdefault(name, Pool(name, size, chain, config or TemplateConfig()))
        pool.target, pool.chain, pool.config = size, chain, config or TemplateConfig()

    def statuses(self) -> list[PoolStatus]:
        return [
            PoolStatus(p.name, p.target, len(p.ready))
            for p in sorted(self.pools.values(), key=lambda p: p.name)
        ]
