"""A sandbox's own egress rules (issue 14): the create's ``network`` field and its record.

The rules themselves (what an entry may be, the bounds, the matching) are
``warren.egress_rules``, shared with the agents, which enforce them (docs/networking.md §5).
Here: the API's model, the checks a create adds (rules need internet access), and the
sandbox row's ``egress`` column. Changing them while a sandbox runs is ``sandbox_network``.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncEngine

from warren.cp.db.engine import autocommit
from warren.cp.db.tables import sandboxes
from warren.cp.services.strict import StrictBody
from warren.egress_rules import MAX_RULES, EgressRules, parse
from warren.errors import InvalidRequest
from warren.rpc import hostagent_pb2 as pb


class NetworkRules(StrictBody):
    """``{"allow_out": [...], "deny_out": [...]}``: IPv4 addresses, CIDRs or domain names (a
    create's ``network`` and what GET/PATCH ``/network`` answer)."""

    allow_out: list[str] = Field(
        default_factory=list, max_length=MAX_RULES,
        description="exceptions to deny_out: IPv4 addresses, CIDRs, example.com, *.example.com",
    )  # fmt: skip
    deny_out: list[str] = Field(
        default_factory=list, max_length=MAX_RULES,
        description="refused unless allowed: IPv4 addresses, CIDRs (0.0.0.0/0: all), domain names",
    )  # fmt: skip


def checked(network: NetworkRules | None, *, internet: bool) -> EgressRules:
    """The create's rules, normalized (400 naming a bad entry); none without ``network``."""
    if network is None:
        return EgressRules()
    rules = parse(network.allow_out, network.deny_out)
    if not internet and not rules.empty:
        raise InvalidRequest("network rules need internet access (with internet=false nothing leaves)")
    return rules


def model(rules: EgressRules) -> NetworkRules:
    return NetworkRules(**rules.to_json())


def stored(value: object) -> EgressRules:
    """The rules of a sandbox row's ``egress`` column (checked when written)."""
    if not isinstance(value, dict):
        return EgressRules()
    return parse(list(value.get("allow_out", ())), list(value.get("deny_out", ())))


def to_pb(rules: EgressRules) -> pb.EgressRules:
    j = rules.to_json()
    return pb.EgressRules(allow_out=j["allow_out"], deny_out=j["deny_out"])


async def record_created(engine: AsyncEngine, sb_uuid: uuid.UUID, rules: EgressRules) -> None:
    """A new sandbox's rules on its ``pending`` row, before its agent is asked (no statement at
    all for the usual create without rules)."""
    if rules.empty:
        return
    async with autocommit(engine) as conn:
        stmt = sa.update(sandboxes).where(sandboxes.c.id == sb_uuid).values(egress=rules.to_json())
        await conn.execute(stmt)
