"""Display formatting for the dashboard templates (Jinja filters). Presentation only: no rules."""

from __future__ import annotations

from datetime import UTC, datetime

from warren import clock

# Status → badge colour (docs/spec.md §8.5: running green, paused amber, error red, others muted;
# docs/spec.md §8.7 hosts: online green, pending amber, offline/unreachable red, draining blue).
_STATUS_TONE = {
    "running": "ok",
    "online": "ok",
    "paused": "warn",
    "pending": "warn",
    "starting": "warn",
    "hibernated": "warn",
    "error": "danger",
    "offline": "danger",
    "unreachable": "danger",
    "missing": "danger",
    "draining": "info",
}


def status_tone(status: str | None) -> str:
    return _STATUS_TONE.get((status or "").lower(), "")


def ago(value: datetime | str | None) -> str:
    """'just now', '42s ago', '5m ago', '3h ago', '2d ago'; '—' when there is no time."""
    dt = _as_datetime(value)
    if dt is None:
        return "—"
    secs = int((clock.now() - dt).total_seconds())
    if secs < 5:
        return "just now"
    if secs < 60:
        return f"{secs}s ago"
    if secs < 3600:
        return f"{secs // 60}m ago"
    if secs < 86400:
        return f"{secs // 3600}h ago"
    return f"{secs // 86400}d ago"


def when(value: datetime | str | None) -> str:
    """An absolute UTC time, e.g. '2026-04-09 19:24 UTC'."""
    dt = _as_datetime(value)
    if dt is None:
        return "—"
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def day(value: datetime | str | None) -> str:
    dt = _as_datetime(value)
    if dt is None:
        return "—"
    return dt.astimezone(UTC).strftime("%b %-d, %Y")


def iso(value: datetime | str | None) -> str:
    dt = _as_datetime(value)
    if dt is None:
        return ""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def idle_timeout(seconds: int | None) -> str:
    """docs/spec.md §8.4: 'None' / 'Ns' / 'Nm' / 'Nh'."""
    if not seconds or seconds <= 0:
        return "None"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def size(num_bytes: int | None) -> str:
    """B / KB / MB / GB (docs/spec.md §8.8)."""
    n = float(num_bytes or 0)
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def memory(mb: int | None) -> str:
    if not mb:
        return "—"
    if mb >= 1024 and mb % 1024 == 0:
        return f"{mb // 1024} GB"
    if mb >= 1024:
        return f"{mb / 1024:.1f} GB"
    return f"{mb} MB"


def host_specs(cpu: int | None, memory_mb: int | None, disk_gb: int | None) -> str:
    """docs/spec.md §8.7: 'N vCPU · XGB RAM · YGB disk' (parts that are unknown are left out)."""
    parts = []
    if cpu:
        parts.append(f"{cpu} vCPU")
    if memory_mb:
        gb = memory_mb / 1024
        parts.append(f"{gb:.0f}GB RAM" if gb >= 10 or gb == int(gb) else f"{gb:.1f}GB RAM")
    if disk_gb:
        parts.append(f"{disk_gb}GB disk")
    return " · ".join(parts) or "—"


def initial(text: str | None) -> str:
    text = (text or "").strip()
    return text[:1].upper() if text else "?"


def _as_datetime(value: datetime | str | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


FILTERS = {
    "ago": ago,
    "when": when,
    "day": day,
    "iso": iso,
    "idle_timeout": idle_timeout,
    "size": size,
    "memory": memory,
    "status_tone": status_tone,
    "initial": initial,
}


# Characters a sans-serif face draws alike (I/l/1/|, O/0): folded so look-alike names count as
# the same name. HTML also collapses runs of spaces, so "A  B" is drawn as "A B".
_LOOKALIKE = str.maketrans({"i": "l", "1": "l", "|": "l", "0": "o"})


def look_alike_key(name: str) -> str:
    """The form two team names share when the sidebar would draw them the same."""
    return " ".join(name.lower().split()).translate(_LOOKALIKE)
