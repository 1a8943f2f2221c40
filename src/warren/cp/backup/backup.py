"""``warren admin backup DIR`` (docs/operations.md, "Backups"): the database through
``pg_dump --format=custom``, the template store's manifest, optionally the layers themselves and
the home's secrets, and ``backup.json`` with the checksum of each file.

Consistency: the manifest, the migration revision and the dump all read one snapshot (a
REPEATABLE READ transaction exports it and ``pg_dump --snapshot`` joins it), so the layers
listed are exactly those the dumped rows reference. The directory appears under its name only
when it is complete (built beside it, then renamed).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

import warren
from warren.config import Settings
from warren.cp.backup import pgtools
from warren.cp.backup.manifest import (
    DATABASE_FILE,
    MANIFEST,
    STORE_MANIFEST_FILE,
    BackupError,
    Manifest,
    write_private,
)
from warren.cp.db.engine import make_engine
from warren.cp.store import DirectoryStore, LayerStore, S3Store, layer_key, make_store

Say = Callable[[str], None]

# Every layer a row references: template versions (what creates need) and the build cache
# (what later builds reuse), with its size from the store's index.
REFERENCED_LAYERS = """
WITH refs AS (
    SELECT unnest(layers) AS digest, true AS by_template FROM templates
    UNION ALL
    SELECT layer, false FROM build_cache
)
SELECT r.digest, bool_or(r.by_template) AS by_template, max(l.size_bytes) AS size_bytes
FROM refs r LEFT JOIN layers l ON l.digest = r.digest
GROUP BY r.digest ORDER BY r.digest
"""

# Files of the home that the agents' credentials depend on (docs/operations.md, "Backups").
SECRET_FILES = ("jwt-secret", "ca/ca.pem", "ca/ca.key")


@dataclass
class LayerRef:
    digest: str
    size: int | None
    by_template: bool
    in_store: bool = False


@dataclass
class BackupResult:
    path: Path
    manifest: Manifest
    layers: list[LayerRef] = field(default_factory=list)

    @property
    def missing_layers(self) -> list[LayerRef]:
        return [r for r in self.layers if not r.in_store]


def describe_store(store: LayerStore) -> dict[str, str]:
    if isinstance(store, DirectoryStore):
        return {"kind": "directory", "location": str(store.root)}
    if isinstance(store, S3Store):
        return {"kind": "s3", "location": f"s3://{store.bucket}/{store.prefix}"}
    return {"kind": type(store).__name__, "location": repr(store)}


def check_target(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target} exists and is not an empty directory: choose a new one")


async def _snapshot_reads(conn: AsyncConnection) -> tuple[str, int, str | None, list[LayerRef]]:
    """Inside the exported snapshot: server version, its major, the revision, the layers."""
    version = str((await conn.execute(sa.text("SHOW server_version"))).scalar_one())
    major = int(
        (
            await conn.execute(sa.text("SELECT current_setting('server_version_num')::int / 10000"))
        ).scalar_one()
    )
    has_schema = (
        await conn.execute(sa.text("SELECT to_regclass('public.alembic_version') IS NOT NULL"))
    ).scalar_one()
    if not has_schema:
        raise BackupError(
            "the database holds no Warren schema (no alembic_version table): nothing to back up"
        )
    head = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar()
    rows = (await conn.execute(sa.text(REFERENCED_LAYERS))).all()
    refs = [
        LayerRef(r.digest, None if r.size_bytes is None else int(r.size_bytes), bool(r.by_template))
        for r in rows
    ]
    return version, major, head, refs


async def _dump(
    url: str, work: Path, pg_bin: Path | None, say: Say
) -> tuple[str, str, str | None, list[LayerRef]]:
    """pg_dump into ``work``; returns (server version, pg_dump version, revision, layers)."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as raw:
            conn = await raw.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                snapshot = str((await conn.execute(sa.text("SELECT pg_export_snapshot()"))).scalar_one())
                version, major, head, refs = await _snapshot_reads(conn)
                tool = pgtools.find_tool("pg_dump", major, pg_bin)
                say(f"dumping the database (PostgreSQL {version}, {tool.path} {tool.version}) …")
                args = ["--format=custom", f"--snapshot={snapshot}", f"--file={work / DATABASE_FILE}"]
                await asyncio.to_thread(pgtools.run, tool, args, url, what="pg_dump")
    finally:
        await engine.dispose()
    os.chmod(work / DATABASE_FILE, 0o600)
    return version, tool.version, head, refs


async def _copy_layer(store: LayerStore, digest: str, dest: Path) -> None:
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        async for chunk in store.open(digest):
            await asyncio.to_thread(f.write, chunk)
        f.flush()
        os.fsync(f.fileno())


async def _store_part(
    store: LayerStore, refs: list[LayerRef], work: Path, manifest: Manifest, with_layers: bool, say: Say
) -> None:
    for ref in refs:
        ref.in_store = await store.exists(ref.digest)
        if ref.in_store and ref.size is None:
            ref.size = await store.size(ref.digest)
    body: dict[str, Any] = {
        "store": describe_store(store),
        "layers": [
            {"digest": r.digest, "size": r.size, "by_template": r.by_template, "in_store": r.in_store}
            for r in refs
        ],
    }
    write_private(work / STORE_MANIFEST_FILE, (json.dumps(body, indent=2) + "\n").encode())
    manifest.add(work, STORE_MANIFEST_FILE)
    present = [r for r in refs if r.in_store]
    say(f"template store {body['store']['location']}: {len(refs)} referenced layers, {len(present)} present")
    if not with_layers:
        return
    total = sum(r.size or 0 for r in present)
    say(f"copying {len(present)} layers ({total / 2**20:.1f} MiB) …")
    for r in present:
        name = layer_key(r.digest)
        await _copy_layer(store, r.digest, work / name)
        manifest.add(work, name)
        if manifest.files[name].sha256 != r.digest:
            raise BackupError(
                f"layer {r.digest} in the store does not hash to its name: the store is corrupt"
            )


def _secrets_part(settings: Settings, work: Path, manifest: Manifest, say: Say) -> dict[str, str]:
    """Copy the home's JWT secret and CA (what agents' credentials hang on) when they live there."""
    where: dict[str, str] = {}
    external = {"jwt-secret": bool(settings.jwt_secret), "ca": bool(settings.ca_cert or settings.ca_key)}
    for name in SECRET_FILES:
        kind = name.split("/")[0]
        if external[kind]:
            where[kind] = "external"  # WARREN_JWT_SECRET / WARREN_CA_*: the operator keeps them
            continue
        src = settings.home / name
        if not src.is_file():
            where.setdefault(kind, "absent")
            continue
        dest = work / "secrets" / name
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(dest, src.read_bytes())
        manifest.add(work, f"secrets/{name}")
        where[kind] = "included"
    say(f"secrets: jwt-secret {where['jwt-secret']}, CA {where['ca']}")
    return where


async def _collect(
    url: str, store: LayerStore, work: Path, with_layers: bool, pg_bin: Path | None, say: Say
) -> tuple[Manifest, list[LayerRef]]:
    version, dump_version, head, refs = await _dump(url, work, pg_bin, say)
    manifest = Manifest(
        warren_version=warren.__version__,
        migration_head=head,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        server_version=version,
        store=describe_store(store),
        includes={
            "database": True,
            "pg_dump_version": dump_version,
            "store_manifest": True,
            "layers": with_layers,
        },
    )
    manifest.add(work, DATABASE_FILE)
    say(f"database dumped: {manifest.files[DATABASE_FILE].size / 2**20:.1f} MiB at revision {head}")
    await _store_part(store, refs, work, manifest, with_layers, say)
    return manifest, refs


def make_backup(
    url: str,
    settings: Settings,
    target: Path,
    *,
    with_layers: bool = False,
    with_secrets: bool = True,
    pg_bin: Path | None = None,
    say: Say = lambda _m: None,
) -> BackupResult:
    """Write a complete backup to the new directory ``target`` (refused when it is not empty)."""
    target = target.absolute()
    check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        store = make_store(settings)
        manifest, refs = asyncio.run(_collect(url, store, work, with_layers, pg_bin, say))
        manifest.includes["secrets"] = _secrets_part(settings, work, manifest, say) if with_secrets else {}
        write_private(work / MANIFEST, manifest.to_json())
        _fsync_dir(work)
        check_target(target)  # nothing appeared there meanwhile
        if target.exists():
            target.rmdir()
        work.rename(target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return BackupResult(target, manifest, refs)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
