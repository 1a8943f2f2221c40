"""``backup.json``: what a backup directory holds and the sha256 of every file in it
(docs/operations.md, "Backups"). Written last, so a directory without it is not a backup; read
first by a restore, which checks every listed file before it touches a database."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

FORMAT = "warren-backup"
FORMAT_VERSION = 1
MANIFEST = "backup.json"
DATABASE_FILE = "database.dump"
STORE_MANIFEST_FILE = "store-manifest.json"
# Largest backup.json / store-manifest.json a restore reads (a million layers is ~100 MB).
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
_READ = 1024 * 1024


class BackupError(RuntimeError):
    """A backup or restore that cannot go on; the message says why and what to do."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ):
            h.update(chunk)
    return h.hexdigest()


def write_private(path: Path, data: bytes) -> None:
    """A new 0600 file (its parent exists), fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def safe_relpath(name: str) -> PurePosixPath:
    """``name`` as a path inside the backup directory; a manifest naming anything outside it
    (absolute, ``..``) is refused, since a restore copies files by these names."""
    p = PurePosixPath(name)
    canonical = str(p) == name  # no "a//b", "./x": one spelling per file
    if not name or not canonical or p.is_absolute() or ".." in p.parts or "\\" in name:
        raise BackupError(f"backup.json names an invalid file: {name[:120]!r}")
    return p


@dataclass
class FileEntry:
    sha256: str
    size: int


@dataclass
class Manifest:
    """The contents of ``backup.json``."""

    warren_version: str
    migration_head: str | None
    created_at: str
    server_version: str
    store: dict[str, str]
    includes: dict[str, Any]
    files: dict[str, FileEntry] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def add(self, root: Path, name: str) -> None:
        """Record ``root/name``'s checksum and size."""
        path = root / safe_relpath(name)
        self.files[name] = FileEntry(sha256_file(path), path.stat().st_size)

    def to_json(self) -> bytes:
        body = {
            "format": FORMAT,
            "format_version": self.format_version,
            "warren_version": self.warren_version,
            "migration_head": self.migration_head,
            "created_at": self.created_at,
            "server_version": self.server_version,
            "store": self.store,
            "includes": self.includes,
            "files": {k: {"sha256": v.sha256, "size": v.size} for k, v in sorted(self.files.items())},
        }
        return (json.dumps(body, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            body = json.loads(data)
            if body.get("format") != FORMAT:
                raise BackupError("backup.json is not a Warren backup manifest")
            version = int(body["format_version"])
            if version > FORMAT_VERSION:
                raise BackupError(
                    f"backup format {version} is newer than this Warren reads ({FORMAT_VERSION}): "
                    "restore with the Warren version that made it, or a newer one"
                )
            files = {
                str(safe_relpath(str(name))): FileEntry(str(e["sha256"]), int(e["size"]))
                for name, e in dict(body["files"]).items()
            }
            return cls(
                warren_version=str(body["warren_version"]),
                migration_head=body.get("migration_head"),
                created_at=str(body["created_at"]),
                server_version=str(body.get("server_version", "")),
                store=dict(body.get("store") or {}),
                includes=dict(body.get("includes") or {}),
                files=files,
                format_version=version,
            )
        except BackupError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BackupError(f"backup.json is malformed: {e}") from None


def read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BackupError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes")
        return Manifest.from_json(path.read_bytes())
    except FileNotFoundError:
        raise BackupError(f"{root} holds no {MANIFEST}: not a Warren backup (or an unfinished one)") from None


def verify(root: Path, manifest: Manifest) -> list[str]:
    """Every problem with the listed files: missing, wrong size or wrong checksum (empty: all good).
    The database dump must be among them."""
    problems: list[str] = []
    if DATABASE_FILE not in manifest.files:
        problems.append(f"{DATABASE_FILE} is not listed in backup.json")
    for name, entry in sorted(manifest.files.items()):
        path = root / safe_relpath(name)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{name}: missing")
            continue
        if size != entry.size:
            problems.append(f"{name}: {size} bytes, backup.json says {entry.size}")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{name}: sha256 does not match backup.json (the file is corrupt)")
    return problems
