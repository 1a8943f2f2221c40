"""Plain result types returned by the SDK (parsed from the API's JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "CommandResult",
    "EntryInfo",
    "MetricPoint",
    "ProcessInfo",
    "SandboxInfo",
    "SnapshotInfo",
]


def _ts(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    text = str(value)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text)


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the API describes it (``sbx.info``, ``Sandbox.list()``): ``status`` is
    ``running``, ``paused``, ``stopped`` or ``error``; ``runtime`` is ``runc``, ``crun`` or
    ``gvisor``; ``paused_state`` says how a paused one is paused, ``memory`` (frozen in place) or
    ``disk`` (checkpointed, its memory freed), and is None otherwise; ``end_reason`` says why a
    ``stopped`` or ``error`` one ended (``deleted``, ``lifetime_ended``, ``team_deleted``,
    ``host_deleted``, ``host_lost``, ``gone_from_host``, ``create_failed``: docs/api.md §2), None
    while it is active; ``raw`` is the whole JSON answer."""

    id: str
    status: str
    template: str
    vcpus: int
    memory_mb: int
    timeout_sec: int
    created_at: datetime | None = None
    started_at: datetime | None = None
    last_active_at: datetime | None = None
    host_ip: str = ""
    runtime: str = ""
    paused_state: str | None = None
    end_reason: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SandboxInfo:
        return cls(
            id=d["id"],
            status=d.get("status", ""),
            template=d.get("template", ""),
            vcpus=int(d.get("vcpus") or 0),
            memory_mb=int(d.get("memory_mb") or 0),
            timeout_sec=int(d.get("timeout_sec") or 0),
            created_at=_ts(d.get("created_at")),
            started_at=_ts(d.get("started_at")),
            last_active_at=_ts(d.get("last_active_at")),
            host_ip=d.get("host_ip", "") or "",
            runtime=d.get("runtime", "") or "",
            paused_state=d.get("paused_state") or None,
            end_reason=d.get("end_reason") or None,
            raw=d,
        )


@dataclass(frozen=True)
class CommandResult:
    """What a finished command produced. ``stdout``/``stderr`` are text (invalid UTF-8 is
    replaced); the exact bytes are in ``stdout_bytes``/``stderr_bytes``."""

    stdout: str
    stderr: str
    exit_code: int
    error: str | None = None
    stdout_bytes: bytes = field(default=b"", repr=False)
    stderr_bytes: bytes = field(default=b"", repr=False)
    duration_ms: int | None = None

    @classmethod
    def from_bytes(
        cls,
        out: bytes,
        err: bytes,
        exit_code: int,
        *,
        error: str | None = None,
        duration_ms: int | None = None,
    ) -> CommandResult:
        return cls(
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            exit_code=exit_code,
            error=error or None,
            stdout_bytes=out,
            stderr_bytes=err,
            duration_ms=duration_ms,
        )


@dataclass(frozen=True)
class ProcessInfo:
    """A process running in a sandbox (``sbx.commands.list()``)."""

    pid: int
    tag: str | None
    cmd: str
    args: list[str]
    cwd: str = ""

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProcessInfo:
        return cls(
            pid=int(d["pid"]),
            tag=d.get("tag") or None,
            cmd=d.get("cmd", ""),
            args=list(d.get("args") or []),
            cwd=d.get("cwd", "") or "",
        )


@dataclass(frozen=True)
class EntryInfo:
    """A file, directory or symlink in a sandbox (``sbx.files.list()``, ``get_info()``)."""

    name: str
    type: str  # file | dir | symlink | other
    path: str
    size: int = 0
    mode: int = 0
    permissions: str = ""
    owner: str = ""
    group: str = ""
    modified_time: datetime | None = None
    symlink_target: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EntryInfo:
        return cls(
            name=d.get("name", ""),
            type=d.get("type", ""),
            path=d.get("path", ""),
            size=int(d.get("size") or 0),
            mode=int(d.get("mode") or 0),
            permissions=d.get("permissions", "") or "",
            owner=d.get("owner", "") or "",
            group=d.get("group", "") or "",
            modified_time=_ts(d.get("modified_time")),
            symlink_target=d.get("symlink_target") or None,
        )


@dataclass(frozen=True)
class SnapshotInfo:
    """A template: ``type`` is ``base`` or ``snapshot``; ``kind`` says what a snapshot holds
    (``filesystem`` on the container runtime, ``memory`` when RAM is captured too)."""

    name: str
    type: str
    kind: str | None
    size_bytes: int
    platform: bool
    vcpus: int | None = None
    memory_mb: int | None = None
    created_at: datetime | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SnapshotInfo:
        return cls(
            name=d["name"],
            type=d.get("type", ""),
            kind=d.get("kind"),
            size_bytes=int(d.get("size_bytes") or 0),
            platform=bool(d.get("platform")),
            vcpus=d.get("vcpus"),
            memory_mb=d.get("memory_mb"),
            created_at=_ts(d.get("created_at")),
        )


@dataclass(frozen=True)
class MetricPoint:
    """One sample of ``sbx.metrics()``: CPU percent, memory and disk bytes at ``timestamp``."""

    timestamp: datetime
    cpu_pct: float
    mem_bytes: int
    disk_bytes: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MetricPoint:
        ts = _ts(d.get("timestamp"))
        assert ts is not None
        return cls(
            timestamp=ts,
            cpu_pct=float(d.get("cpu_pct") or 0.0),
            mem_bytes=int(d.get("mem_bytes") or 0),
            disk_bytes=int(d.get("disk_bytes") or 0),
        )
