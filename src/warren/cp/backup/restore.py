"""``warren admin restore DIR`` (docs/operations.md, "Backups"): checks ``backup.json`` and every
checksum before anything is written, refuses a database that already holds tables (unless
forced), ``pg_restore``s the dump in one transaction, migrates forward when the backup is older
than this Warren, puts the home's secrets back and checks that the template store holds every
referenced layer (copying them back from a ``--with-layers`` backup)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from warren.config import Settings
from warren.cp.backup import pgtools
from warren.cp.backup.backup import SECRET_FILES, Say, describe_store
from warren.cp.backup.manifest import (
    DATABASE_FILE,
    STORE_MANIFEST_FILE,
    BackupError,
    Manifest,
    read_manifest,
    safe_relpath,
    verify,
    write_private,
)
from warren.cp.db import migrate
from warren.cp.db.engine import make_engine
from warren.cp.store import CHUNK, LayerStore, check_digest, layer_key, make_store

# Relations outside PostgreSQL's own schemas: any means the database is in use.
USER_RELATIONS = """
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
  AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
"""
# A restored layer is checked against its digest anyway; this only bounds a corrupt manifest.
_MAX_LAYER_BYTES = 1 << 40


@dataclass
class RestoreResult:
    migrated_from: str | None
    revision: str | None
    layers_referenced: int = 0
    layers_copied: int = 0
    missing: list[tuple[str, int | None, bool]] = field(default_factory=list)  # digest, size, by_template
    secrets: dict[str, str] = field(default_factory=dict)


def load_verified(source: Path, say: Say) -> Manifest:
    manifest = read_manifest(source)
    made = f"Warren {manifest.warren_version}, revision {manifest.migration_head}"
    say(f"backup of {manifest.created_at} ({made})")
    problems = verify(source, manifest)
    if problems:
        raise BackupError("the backup is damaged; nothing was restored:\n  " + "\n  ".join(problems))
    say(f"checksums of {len(manifest.files)} files verified")
    head = manifest.migration_head
    if head is not None:
        try:
            known = ScriptDirectory.from_config(migrate.alembic_config()).get_revision(head)
        except CommandError:
            known = None
        if known is None:
            raise BackupError(
                f"the backup is at migration {head}, which this Warren does not know: restore it "
                "with the Warren version that made it (or a newer one)"
            )
    return manifest


async def _prepare_database(url: str, force: bool, say: Say) -> int:
    """The server's major version, after checking (or with ``force`` emptying) the database."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            major = int(
                (
                    await conn.execute(sa.text("SELECT current_setting('server_version_num')::int / 10000"))
                ).scalar_one()
            )
            used = int((await conn.execute(sa.text(USER_RELATIONS))).scalar_one())
            if used and not force:
                raise BackupError(
                    f"the target database is not empty ({used} tables, sequences or views): restore "
                    "into a new database, or pass --force to drop everything in its public schema first"
                )
            if used:
                say(f"--force: dropping the public schema's {used} relations")
                await conn.execute(sa.text("DROP SCHEMA public CASCADE"))
                await conn.execute(sa.text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()
    return major


def _dump_major(manifest: Manifest) -> int:
    m = re.match(r"(\d+)", str(manifest.includes.get("pg_dump_version", "")))
    return int(m.group(1)) if m else 0


def _restore_database(url: str, source: Path, tool: pgtools.PgTool, server_major: int, say: Say) -> None:
    say(f"restoring the database (PostgreSQL {server_major}, {tool.path} {tool.version}) …")
    # Objects end up owned by the role restoring them: the target may have other role names.
    args = [
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--single-transaction",
        str(source / DATABASE_FILE),
    ]
    pgtools.run(tool, args, url, what="pg_restore")


def _restore_secrets(source: Path, manifest: Manifest, home: Path, force: bool, say: Say) -> dict[str, str]:
    """Put the backup's JWT secret and CA into ``home`` (agents' credentials depend on them)."""
    done: dict[str, str] = {}
    for name in SECRET_FILES:
        if f"secrets/{name}" not in manifest.files:
            continue
        data = (source / "secrets" / safe_relpath(name)).read_bytes()
        dest = home / name
        if dest.exists():
            if dest.read_bytes() == data:
                done[name] = "unchanged"
                continue
            if not force:
                raise BackupError(
                    f"{dest} exists and differs from the backup's: agents trust the backup's "
                    "(pass --force to replace it; the old one is kept as *.before-restore)"
                )
            dest.replace(dest.with_name(dest.name + ".before-restore"))
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(dest, data)
        done[name] = "restored"
    if done:
        say("secrets: " + ", ".join(f"{k} {v}" for k, v in done.items()))
    return done


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk
    finally:
        f.close()


async def _check_store(
    store: LayerStore, source: Path, manifest: Manifest, result: RestoreResult, say: Say
) -> None:
    body = json.loads((source / STORE_MANIFEST_FILE).read_bytes())
    refs = body.get("layers", [])
    result.layers_referenced = len(refs)
    for ref in refs:
        digest = check_digest(str(ref["digest"]))
        if await store.exists(digest):
            continue
        name = layer_key(digest)
        if name in manifest.files:
            await store.put(_file_chunks(source / name), expect=digest, max_bytes=_MAX_LAYER_BYTES)
            result.layers_copied += 1
            continue
        size = ref.get("size")
        result.missing.append((digest, None if size is None else int(size), bool(ref.get("by_template"))))
    say(
        f"template store {describe_store(store)['location']}: {result.layers_referenced} referenced layers, "
        f"{result.layers_copied} copied back, {len(result.missing)} missing"
    )


def restore_backup(
    url: str,
    settings: Settings,
    source: Path,
    *,
    force: bool = False,
    pg_bin: Path | None = None,
    say: Say = lambda _m: None,
) -> RestoreResult:
    """Restore ``source`` into the (empty) database of ``url`` and the home/store of ``settings``."""
    manifest = load_verified(source, say)
    # The database is checked (or, forced, emptied) first, then the secrets: a conflicting CA
    # stops an unforced restore before anything is written.
    tool = pgtools.find_tool("pg_restore", _dump_major(manifest), pg_bin)  # before anything is dropped
    server_major = asyncio.run(_prepare_database(url, force, say))
    settings.home.mkdir(parents=True, exist_ok=True)
    secrets = _restore_secrets(source, manifest, settings.home, force, say)
    _restore_database(url, source, tool, server_major, say)
    st = migrate.status(url)
    result = RestoreResult(migrated_from=None, revision=st.current)
    if st.pending:
        say(f"migrating forward from {st.current} to {st.head} …")
        migrate.upgrade(url, "head")
        result.migrated_from, result.revision = st.current, st.head
    result.secrets = secrets
    asyncio.run(_check_store(make_store(settings), source, manifest, result, say))
    return result
