"""Warren's file entries and watch events in envd's proto3 JSON (docs/e2b.md §3.2).

``EntryInfo``: ``type`` is ``FILE_TYPE_FILE`` / ``FILE_TYPE_DIRECTORY``; a symlink is reported
as envd does: ``isSymlink``, the type and permission bits of what it points to, and
``symlinkTarget`` resolved to an absolute path inside the sandbox (a dangling link is
``FILE_TYPE_SYMLINK`` with the link's own path as its target). ``size`` is an int64, so a string.
Anything that is neither file, directory nor symlink is ``FILE_TYPE_UNSPECIFIED`` (E2B's SDK
leaves those out of listings).

A Warren ``rename`` event (one event, old and new path) is E2B's pair: ``RENAME`` for the old
name, ``CREATE`` for the new one, as inotify reports a move to envd.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from warren.rpc import hostagent_pb2 as pb

FILE_TYPES = {"file": "FILE_TYPE_FILE", "dir": "FILE_TYPE_DIRECTORY", "symlink": "FILE_TYPE_SYMLINK"}
EVENT_TYPES = {
    "create": "EVENT_TYPE_CREATE",
    "write": "EVENT_TYPE_WRITE",
    "remove": "EVENT_TYPE_REMOVE",
    "rename": "EVENT_TYPE_RENAME",
    "chmod": "EVENT_TYPE_CHMOD",
}


def rfc3339(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def entry_json(e: pb.EntryInfo) -> dict[str, Any]:
    is_link = e.type == "symlink"
    kind, mode = e.type, e.mode
    if is_link and e.target_type:
        kind, mode = e.target_type, e.target_mode
    out: dict[str, Any] = {
        "name": e.name,
        "type": FILE_TYPES.get(kind, "FILE_TYPE_UNSPECIFIED"),
        "path": e.path,
        "size": str(e.size),
        "mode": mode & 0o777,
        "permissions": e.permissions,
        "owner": e.owner,
        "group": e.group,
        "metadata": dict(e.metadata),
        "isSymlink": is_link,
    }
    if e.modified_time_unix:
        out["modifiedTime"] = rfc3339(e.modified_time_unix)
    if is_link:
        out["symlinkTarget"] = e.resolved_target or e.symlink_target or e.path
    return out


def event_name(path: str, root: str) -> str:
    """``path`` relative to the watched directory ``root`` (both the guest's absolute paths)."""
    prefix = root.rstrip("/") + "/"
    if path.startswith(prefix):
        return path[len(prefix) :]
    return path.rsplit("/", 1)[-1]


def events_json(ev: pb.WatchEvent, root: str, include_entry: bool) -> list[dict[str, Any]]:
    """envd's ``FilesystemEvent``s for one Warren event (none for an overflow marker)."""
    if ev.type not in EVENT_TYPES:
        return []
    new: dict[str, Any] = {"name": event_name(ev.path, root), "type": EVENT_TYPES[ev.type]}
    if include_entry and ev.HasField("entry"):
        new["entry"] = entry_json(ev.entry)
    if ev.type == "rename":
        old = {"name": event_name(ev.old_path, root), "type": "EVENT_TYPE_RENAME"}
        if not ev.old_path.startswith(root.rstrip("/") + "/"):
            return [{**new, "type": "EVENT_TYPE_CREATE"}]  # moved in from outside the watch
        return [old, {**new, "type": "EVENT_TYPE_CREATE"}]
    return [new]
