"""What a host's warm pools look like to the control plane (issue 17, docs/hosts.md "Warm pools"):
the bounded entry an agent reports with each heartbeat, and the view the API and the dashboard
show. Pure: no database, no RPC (``services/warm_pools.py`` sets sizes and applies them again).

Two sources meet here: ``hosts.warm_pools``, what the agent last reported (its targets, from its
``--warm-pool`` flag or from the API, and how many sandboxes are ready), and
``hosts.warm_pool_targets``, the sizes set through the API. A size set through the API wins over
what the agent reports until the agent reports it too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, TypeAdapter, ValidationError

from warren.cp.services.strict import INT32_MAX, StrictBody
from warren.errors import AgentError, InvalidRequest

# At most this many pools per host, reported or set (a hostile BYOC agent cannot grow the row).
MAX_POOLS = 32
# The largest size the API accepts for one pool: each pooled sandbox holds memory.
MAX_POOL_SIZE = 128
# A pool's name as an agent may report it (agent/warm_pool.py's rule): a template reference,
# with "@runc" or "@crun" for a pool of another runtime than the host's default.
POOL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$"
# The runtimes a pool may hold (agent/warm_pool.py: POOL_RUNTIMES).
POOL_RUNTIMES = ("runc", "crun")


def split_pool_name(name: str) -> tuple[str, str]:
    """``python:v2@runc`` -> ``("python:v2", "runc")``; without ``@``, the host's default runtime
    (``""``). InvalidRequest for a runtime no pool holds."""
    template, at, runtime = name.rpartition("@")
    if not at:
        return name, ""
    if runtime not in POOL_RUNTIMES:
        what = "gVisor sandboxes are not pooled" if runtime == "gvisor" else "unknown runtime"
        raise InvalidRequest(f"{what} {runtime[:20]!r} in a pool's name (want {' or '.join(POOL_RUNTIMES)})")
    return template, runtime


class WarmPoolReport(StrictBody):
    """One pool as the agent reports it in its heartbeat body (``"warm_pools": [...]``)."""

    template: str = Field(max_length=200, pattern=POOL_NAME_PATTERN)
    target: int = Field(ge=0, le=INT32_MAX)
    ready: int = Field(ge=0, le=INT32_MAX)


def _each_once(pools: list[WarmPoolReport]) -> list[WarmPoolReport]:
    # Two entries for one template are two answers to one question: the scheduler read the
    # first, the API the last.
    if len({p.template for p in pools}) != len(pools):
        raise ValueError("each template may be reported once")
    return pools


# What an agent may say of its pools, in a heartbeat or in its answer to ``SetWarmPool``.
WarmPoolReports = Annotated[list[WarmPoolReport], Field(max_length=MAX_POOLS), AfterValidator(_each_once)]
_REPORTS: TypeAdapter[list[WarmPoolReport]] = TypeAdapter(WarmPoolReports)


def checked_answer(pools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pools an agent answered ``SetWarmPool`` with, held to the heartbeat's rule before they
    are stored (a hostile BYOC agent writes this answer as freely as its heartbeat)."""
    try:
        return [p.model_dump() for p in _REPORTS.validate_python(pools)]
    except ValidationError:
        raise AgentError("the host answered with an invalid warm pool list", rpc_code="INTERNAL") from None


class WarmPool(BaseModel):
    """A host's pool in ``GET /v1/hosts/{id}``: its target size and the sandboxes ready in it as
    of the host's last heartbeat."""

    template: str
    target: int
    ready: int


def _decoded(value: Any) -> Any:
    # The raw asyncpg connection hands JSONB over as text; SQLAlchemy's decodes it.
    return json.loads(value) if isinstance(value, str) else value


def reported_targets(reported: Any) -> dict[str, int]:
    """``{template: target}`` of what an agent reported (a list of entries or None)."""
    return {e["template"]: int(e["target"]) for e in _decoded(reported) or ()}


def pool_views(row: Mapping[Any, Any]) -> list[WarmPool] | None:
    """The host's pools for the API (None when it has none): every template the agent reported
    or the API set, sorted by name, with the API's size where the agent has not caught up."""
    reported = {e["template"]: e for e in _decoded(row.get("warm_pools")) or ()}
    targets: dict[str, int] = _decoded(row.get("warm_pool_targets")) or {}
    names = sorted(set(reported) | set(targets))
    if not names:
        return None
    return [
        WarmPool(
            template=name,
            target=targets.get(name, int(reported.get(name, {}).get("target", 0))),
            ready=int(reported.get(name, {}).get("ready", 0)),
        )
        for name in names
    ]
