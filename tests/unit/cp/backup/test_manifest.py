"""backup.json: its round trip, the checksum verification a restore starts with, and the names
it may hold (a restore copies files by them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from warren.cp.backup.backup import check_target
from warren.cp.backup.manifest import (
    DATABASE_FILE,
    MANIFEST,
    BackupError,
    Manifest,
    read_manifest,
    safe_relpath,
    sha256_file,
    verify,
    write_private,
)


def _backup(root: Path) -> Manifest:
    write_private(root / DATABASE_FILE, b"PGDMP" + b"x" * 1000)
    (root / "secrets").mkdir()
    write_private(root / "secrets" / "jwt-secret", b"s" * 48)
    m = Manifest(
        warren_version="0.1.0",
        migration_head="0006",
        created_at="2026-12-02T10:00:00+00:00",
        server_version="18.6",
        store={"kind": "directory", "location": "/var/lib/warren/store"},
        includes={"database": True, "layers": False},
    )
    m.add(root, DATABASE_FILE)
    m.add(root, "secrets/jwt-secret")
    write_private(root / MANIFEST, m.to_json())
    return m


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    m = _backup(tmp_path)
    back = read_manifest(tmp_path)
    assert back == m
    assert back.files[DATABASE_FILE].sha256 == sha256_file(tmp_path / DATABASE_FILE)
    assert back.files[DATABASE_FILE].size == 1005


def test_files_are_private(tmp_path: Path) -> None:
    _backup(tmp_path)
    assert (tmp_path / DATABASE_FILE).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / MANIFEST).stat().st_mode & 0o777 == 0o600


def test_an_intact_backup_verifies(tmp_path: Path) -> None:
    assert verify(tmp_path, _backup(tmp_path)) == []


def test_a_flipped_byte_is_caught(tmp_path: Path) -> None:
    m = _backup(tmp_path)
    data = bytearray((tmp_path / DATABASE_FILE).read_bytes())
    data[500] ^= 1
    (tmp_path / DATABASE_FILE).write_bytes(bytes(data))
    assert verify(tmp_path, m) == [
        f"{DATABASE_FILE}: sha256 does not match backup.json (the file is corrupt)"
    ]


def test_missing_and_truncated_files_are_caught(tmp_path: Path) -> None:
    m = _backup(tmp_path)
    (tmp_path / "secrets" / "jwt-secret").unlink()
    (tmp_path / DATABASE_FILE).write_bytes(b"PGDMP")
    assert verify(tmp_path, m) == [
        f"{DATABASE_FILE}: 5 bytes, backup.json says 1005",
        "secrets/jwt-secret: missing",
    ]


def test_a_manifest_without_the_dump_is_not_a_backup(tmp_path: Path) -> None:
    m = _backup(tmp_path)
    del m.files[DATABASE_FILE]
    assert verify(tmp_path, m) == [f"{DATABASE_FILE} is not listed in backup.json"]


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "", "a\\..\\b", "./x"])
def test_names_outside_the_backup_are_refused(name: str) -> None:
    with pytest.raises(BackupError, match="invalid file"):
        safe_relpath(name)


def test_a_manifest_naming_an_outside_file_is_refused(tmp_path: Path) -> None:
    _backup(tmp_path)
    body = json.loads((tmp_path / MANIFEST).read_bytes())
    body["files"]["../../etc/shadow"] = {"sha256": "0" * 64, "size": 1}
    (tmp_path / MANIFEST).write_text(json.dumps(body))
    with pytest.raises(BackupError, match="invalid file"):
        read_manifest(tmp_path)


def test_a_newer_format_is_refused_with_advice(tmp_path: Path) -> None:
    _backup(tmp_path)
    body = json.loads((tmp_path / MANIFEST).read_bytes())
    body["format_version"] = 99
    (tmp_path / MANIFEST).write_text(json.dumps(body))
    with pytest.raises(BackupError, match="format 99 is newer"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("text", ["{", '{"format": "other"}', '{"format": "warren-backup"}', "[]"])
def test_malformed_manifests_are_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(BackupError):
        read_manifest(tmp_path)


def test_a_directory_without_manifest_is_not_a_backup(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="not a Warren backup"):
        read_manifest(tmp_path)


def test_backups_go_only_into_new_or_empty_directories(tmp_path: Path) -> None:
    check_target(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    with pytest.raises(BackupError, match="not an empty directory"):
        check_target(tmp_path / "used")
    (tmp_path / "file").write_text("")
    with pytest.raises(BackupError, match="not an empty directory"):
        check_target(tmp_path / "file")
