"""Per-sandbox egress, collected from the host agents by the monitor (issue 18: per-team usage;
docs/operations.md, "Metrics").

Each ``ListSandboxes`` answer carries, per sandbox, the bytes it has sent out through its host
since it was created (``SandboxInfo.egress_bytes``: an iptables counter on the host, out of the
tenant's reach), and the final reading of sandboxes destroyed lately (``ended_egress``). The
row keeps the total (``egress_bytes``) and the counter's last reading (``egress_counter``); each
reading adds its growth since the last one, so the same reading reported again adds nothing, a
destroyed sandbox's last bytes are added when the next pass sees its final reading, and a
counter that started over (its reading went down: the agent had to make a new one) adds its
whole new value instead of going negative.

The monitor applies an answer inside the transaction holding the host's advisory lock, the one
it asked under: two replicas never apply readings of one host out of order, so a smaller
reading always means a counter that started over, never a stale answer. Only rows of the host
that answered change, so an agent (a BYOC host's, say) cannot touch another host's sandboxes.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from warren import ids
from warren.errors import WarrenError

# Readings taken from one answer, at most (a host runs far fewer sandboxes; ended ones are
# capped at 4096 by the agent).
MAX_READINGS = 100_000
_INT64_MAX = 2**63 - 1

_ADD = sa.text(
    """
    UPDATE sandboxes s
    SET egress_bytes = s.egress_bytes
            + CASE WHEN v.n >= s.egress_counter THEN v.n - s.egress_counter ELSE v.n END,
        egress_counter = v.n
    FROM unnest(CAST(:ids AS uuid[]), CAST(:counts AS bigint[])) AS v(id, n)
    WHERE s.id = v.id AND s.host_id = :host AND s.egress_counter <> v.n
    """
)


def readings(resp: Any) -> dict[uuid.UUID, int]:
    """A ``ListSandboxesResponse``'s egress readings by sandbox: the listed sandboxes whose
    counter the agent read, and the final ones of sandboxes it destroyed lately. Ids that are
    not sandbox ids and values out of range are left out."""
    pairs = [(s.sandbox_id, s.egress_bytes) for s in resp.sandboxes if s.HasField("egress_bytes")]
    pairs += [(e.sandbox_id, e.egress_bytes) for e in resp.ended_egress]
    out: dict[uuid.UUID, int] = {}
    for sid, n in pairs[:MAX_READINGS]:
        if not 0 <= n <= _INT64_MAX:
            continue
        with contextlib.suppress(WarrenError):
            u = ids.parse_id(ids.Kind.SANDBOX, sid)
            out[u] = max(n, out.get(u, 0))
    return out


async def record_egress(conn: AsyncConnection, host_uuid: uuid.UUID, resp: Any) -> int:
    """Add the answer's readings to the host's sandbox rows (on the caller's transaction, which
    holds the host's monitor lock); how many rows changed."""
    found = readings(resp)
    if not found:
        return 0
    params = {"ids": list(found), "counts": list(found.values()), "host": host_uuid}
    return int((await conn.execute(_ADD, params)).rowcount or 0)
