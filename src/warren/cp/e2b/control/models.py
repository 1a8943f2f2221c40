"""E2B's JSON shapes (camelCase, as the ``e2b`` SDK's generated models read them): requests
parsed leniently (unknown fields ignored, as E2B's API does) but with their types checked, and
responses built from Warren's sandbox rows. Rules live in ``cp/services``; this module only
translates."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from warren import clock, ids
from warren.config import Settings
from warren.cp.e2b.envd import ENVD_VERSION
from warren.cp.services import metrics
from warren.cp.services.e2b_forks import DEFAULT_FORKS, DEFAULT_TIMEOUT_S, ForkRequest, check_count
from warren.cp.services.e2b_sandboxes import E2BCreate
from warren.cp.services.env import validate_env
from warren.cp.services.envd_tokens import envd_access_token
from warren.errors import InvalidRequest

CLIENT_ID = "warren"  # E2B's id of the node a sandbox runs on; Warren does not expose its hosts
MIB = 1024 * 1024


class Unsupported(Exception):
    """A request field for a feature Warren does not have (answered 501, naming it)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _get(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidRequest(f"{key} has the wrong type")
    return value


def _str_list(body: Mapping[str, Any], key: str) -> list[str] | None:
    value = _get(body, key, list)
    if value is not None and not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{key} must be a list of strings")
    return value


def _present(value: Any) -> bool:
    return value not in (None, [], {}, "")


_UNSUPPORTED_NETWORK = (
    ("network rules (transforms)", "rules"),
    ("egress proxies", "egressProxy"),
    ("custom DNS servers", "dnsServers"),
    ("masking the request host", "maskRequestHost"),
)


def new_sandbox(body: Mapping[str, Any], *, default_timeout: int) -> E2BCreate:
    """``NewSandbox`` (v1, ``secure`` ignored) and ``NewSandboxV2``."""
    template = body.get("templateID")
    if not isinstance(template, str) or not template:
        raise InvalidRequest("templateID is required")
    for name, key in (("MCP servers", "mcp"), ("volume mounts", "volumeMounts"), ("IAM", "iam")):
        if _present(body.get(key)):
            raise Unsupported(name)
    network = _get(body, "network", dict, {})
    for name, key in _UNSUPPORTED_NETWORK:
        if _present(network.get(key)):
            raise Unsupported(name)
    auto_resume = _get(body, "autoResume", dict, {})
    return E2BCreate(
        template=template,
        timeout_s=timeout_of(body, default_timeout),
        auto_pause=_get(body, "autoPause", bool, False),
        auto_resume=_get(auto_resume, "enabled", bool, False),
        internet=_get(body, "allow_internet_access", bool, True),
        metadata=body.get("metadata"),
        env=validate_env(body.get("envVars")),
        allow_out=_str_list(network, "allowOut"),
        deny_out=_str_list(network, "denyOut"),
        public_traffic=_get(network, "allowPublicTraffic", bool, True),
    )


def timeout_of(body: Mapping[str, Any], default: int | None = None) -> object:
    """The ``timeout`` of a timeout or connect request (checked by ``services/lifetimes``)."""
    if "timeout" not in body or body["timeout"] is None:
        if default is None:
            raise InvalidRequest("timeout is required")
        return default
    return body["timeout"]


def fork_request(body: Mapping[str, Any]) -> ForkRequest:
    """``SandboxForkRequest``: ``timeout`` (checked by ``services/lifetimes``) and ``count``
    (1 to 20), each E2B's API default when left out."""
    count = check_count(_get(body, "count", int, DEFAULT_FORKS))
    return ForkRequest(timeout_s=timeout_of(body, DEFAULT_TIMEOUT_S), count=count)


# ---------------------------------------------------------------------------------- responses


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _metadata(row: Mapping[str, Any]) -> dict[str, str]:
    value = row.get("metadata")
    # asyncpg's own connection hands jsonb over as text; SQLAlchemy's decodes it.
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value) if isinstance(value, dict) else {}


def _end_at(row: Mapping[str, Any]) -> datetime:
    """``endAt``: the lifetime's end; for a Warren-API sandbox (no lifetime), when its
    inactivity timeout would pause it."""
    if row.get("end_at") is not None:
        end: datetime = row["end_at"]
        return end
    last = row.get("last_active_at") or row.get("started_at") or clock.now()
    return last + timedelta(seconds=int(row.get("timeout_sec") or 0))


def created(
    *, sandbox_id: str, template: str, settings: Settings, traffic_token: str | None, token_epoch: int = 0
) -> dict[str, Any]:
    """``Sandbox``: what create and connect answer (``envdAccessToken``: the token at the
    sandbox's current epoch, so a connect after a rotation gets the new one)."""
    return {
        "templateID": template,
        "sandboxID": sandbox_id,
        "clientID": CLIENT_ID,
        "alias": template,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": envd_access_token(settings.jwt_secret, sandbox_id, token_epoch),
        "trafficAccessToken": traffic_token,
        "domain": settings.preview_domain or None,
    }


def listed(row: Mapping[str, Any]) -> dict[str, Any]:
    """``ListedSandbox``."""
    return {
        "templateID": row["template"],
        "alias": row["template"],
        "sandboxID": ids.sandbox_id(row["id"]),
        "clientID": CLIENT_ID,
        "startedAt": _ts(row.get("started_at") or row["created_at"]),
        "endAt": _ts(_end_at(row)),
        "cpuCount": row["vcpus"],
        "memoryMB": row["memory_mb"],
        "diskSizeMB": row["disk_size_mb"],
        "metadata": _metadata(row),
        "state": row["status"],
        "envdVersion": ENVD_VERSION,
    }


def _network(row: Mapping[str, Any]) -> dict[str, Any]:
    egress = row.get("egress")
    if isinstance(egress, str):
        egress = json.loads(egress)
    egress = egress if isinstance(egress, dict) else {}
    return {
        "allowPublicTraffic": bool(row.get("all_ports_public")),
        "allowOut": list(egress.get("allow_out") or []),
        "denyOut": list(egress.get("deny_out") or []),
    }


def detail(row: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """``SandboxDetail``."""
    sid = ids.sandbox_id(row["id"])
    return {
        **listed(row),
        "envdAccessToken": envd_access_token(settings.jwt_secret, sid, int(row.get("envd_token_epoch") or 0)),
        "domain": settings.preview_domain or None,
        "allowInternetAccess": bool(row["internet"]),
        "network": _network(row),
        "lifecycle": {
            "onTimeout": "pause" if row.get("on_end") == "pause" else "kill",
            "autoResume": bool(row.get("auto_resume")),
        },
    }


def metric(p: metrics.MetricPoint, vcpus: int, memory_mb: int, disk_size_mb: int) -> dict[str, Any]:
    """``SandboxMetric``; Warren does not sample the page cache (``memCache`` 0)."""
    return {
        "timestamp": _ts(p.timestamp),
        "timestampUnix": p.timestamp_unix,
        "cpuCount": vcpus,
        "cpuUsedPct": p.cpu_pct,
        "memUsed": p.mem_bytes,
        "memTotal": memory_mb * MIB,
        "memCache": 0,
        "diskUsed": p.disk_bytes,
        "diskTotal": disk_size_mb * MIB,
    }


def snapshot(name: str) -> dict[str, Any]:
    """``SnapshotInfo``: the id is the snapshot's name, which ``templateID`` resolves."""
    return {"snapshotID": name, "names": [name]}


def network_update(body: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``SandboxNetworkUpdateConfig`` → Warren's egress rules. E2B's update replaces the rules
    whole: a list left out is cleared."""
    for name, key in (("network rules (transforms)", "rules"), ("egress proxies", "egressProxy"),
                      ("custom DNS servers", "dnsServers"),
                      ("changing internet access after create", "allow_internet_access")):  # fmt: skip
        if body.get(key) is not None and (key == "allow_internet_access" or _present(body.get(key))):
            raise Unsupported(name)
    return _str_list(body, "allowOut") or [], _str_list(body, "denyOut") or []
