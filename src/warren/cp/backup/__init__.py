"""Backup and restore of a Warren installation (docs/operations.md, "Backups"): the database
(``pg_dump`` custom format), the template store's manifest (optionally its layers) and the
home's secrets, described by ``backup.json``. ``warren admin backup|restore`` drive it."""

from warren.cp.backup.backup import BackupResult, make_backup
from warren.cp.backup.manifest import BackupError, Manifest, read_manifest, verify
from warren.cp.backup.restore import RestoreResult, restore_backup

__all__ = [
    "BackupError",
    "BackupResult",
    "Manifest",
    "RestoreResult",
    "make_backup",
    "read_manifest",
    "restore_backup",
    "verify",
]
