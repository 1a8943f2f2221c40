"""``warren admin grant|revoke EMAIL``: platform administrators (``users.is_admin``; granting
also verifies the account's email); ``warren admin user verify EMAIL``: vouch for an address;
``warren admin backup|restore DIR``: the installation's backups (``warren.cp.backup``).

No API sets this flag (docs/spec.md §1.2); an operator with access to the database does. The database
is WARREN_DATABASE_URL, else the embedded one under --home.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from sqlalchemy import func, select, update

from warren.cli.groups import command_group
from warren.cli.home import HomeOpt, database_url, prepare_home
from warren.cli.terminal import SafeConsole
from warren.config import Settings, default_home
from warren.cp.backup import BackupError, make_backup, restore_backup
from warren.cp.db.embedded import EmbeddedPostgres
from warren.cp.db.engine import make_engine
from warren.cp.db.tables import users
from warren.cp.services import users as users_service

# What the database holds (emails, paths) is shown, not obeyed: terminal.py. Markup is read only
# where a call asks for it, and what such a call quotes is escaped.
out = SafeConsole(highlight=False)
err = SafeConsole(stderr=True, highlight=False)
# Backup and restore lines name long paths: never wrapped, so logs and scripts can grep them.
_out = SafeConsole(highlight=False, soft_wrap=True)
_err = SafeConsole(stderr=True, highlight=False, soft_wrap=True)

app = command_group("admin", "Platform-admin rights, backups and restores.")

EmailArg = Annotated[str, typer.Argument(help="Email of an existing account.", show_default=False)]


async def set_admin(url: str, email: str, value: bool) -> bool:
    """Set ``users.is_admin`` for ``email`` (normalised like signup does); False if no such user."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(
                update(users)
                .where(users.c.email == email.strip().lower())
                .values(
                    is_admin=value,
                    updated_at=func.now(),
                    # The operator who makes an admin vouches for the address (docs/auth.md).
                    email_verified_at=func.coalesce(users.c.email_verified_at, func.now())
                    if value
                    else users.c.email_verified_at,
                )
                .returning(users.c.id)
            )
            return result.first() is not None
    finally:
        await engine.dispose()


async def list_admins(url: str) -> list[str]:
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(users.c.email).where(users.c.is_admin).order_by(users.c.email))
            return [r[0] for r in rows]
    finally:
        await engine.dispose()


def _set(email: str, value: bool, home: HomeOpt) -> None:
    with database_url(home) as url:
        found = asyncio.run(set_admin(url, email, value))
    if not found:
        err.print(f"[red]No account with email {escape(repr(email.strip().lower()))}.[/red]", markup=True)
        raise typer.Exit(1)
    out.print(f"{email.strip().lower()} is {'now' if value else 'no longer'} a platform admin")


@app.command("grant")
def grant(email: EmailArg, home: HomeOpt = None) -> None:
    """Make the account with EMAIL a platform admin."""
    _set(email, True, home)


@app.command("revoke")
def revoke(email: EmailArg, home: HomeOpt = None) -> None:
    """Take platform-admin rights away from the account with EMAIL."""
    _set(email, False, home)


@app.command("list")
def list_command(home: HomeOpt = None) -> None:
    """List the platform admins."""
    with database_url(home) as url:
        emails = asyncio.run(list_admins(url))
    for e in emails:
        out.print(e)


user_app = command_group("user", "Accounts: verify an email address an operator vouches for.")
app.add_typer(user_app)


async def _verify(url: str, email: str) -> bool:
    engine = make_engine(url, pool_size=1)
    try:
        return await users_service.mark_verified(engine, email)
    finally:
        await engine.dispose()


@user_app.command("verify")
def verify(email: EmailArg, home: HomeOpt = None) -> None:
    """Mark the account with EMAIL verified: it may accept team invitations. Without SMTP
    (WARREN_SMTP_URL) this is how password sign-ups get verified; check the address first."""
    with database_url(home) as url:
        found = asyncio.run(_verify(url, email))
    if not found:
        err.print(f"[red]No account with email {escape(repr(email.strip().lower()))}.[/red]", markup=True)
        raise typer.Exit(1)
    out.print(f"{email.strip().lower()} is verified")


DirArg = Annotated[Path, typer.Argument(help="The backup directory.", show_default=False)]
PgBinOpt = Annotated[
    Path | None,
    typer.Option(
        "--pg-bin",
        envvar="WARREN_PG_BIN",
        help="Directory of the pg_dump/pg_restore to use.",
        show_default="found by the server's version",
    ),
]


def _settings(home: Path | None) -> Settings:
    return Settings(home=prepare_home(home)) if home is not None else Settings()


def _say(message: str) -> None:
    _out.print(f"  {message}")


@app.command("backup")
def backup(
    directory: DirArg,
    with_layers: Annotated[
        bool,
        typer.Option("--with-layers", help="Also copy every referenced layer out of the template store."),
    ] = False,
    without_secrets: Annotated[
        bool, typer.Option("--without-secrets", help="Leave out the home's JWT secret and CA.")
    ] = False,
    pg_bin: PgBinOpt = None,
    home: HomeOpt = None,
) -> None:
    """Back up the database (pg_dump), the template store's manifest and the home's secrets into
    DIR, a new or empty directory (docs/operations.md, "Backups")."""
    settings = _settings(home)
    _out.print(f"backing up to {directory}")
    try:
        with database_url(home) as url:
            result = make_backup(
                url, settings, directory, with_layers=with_layers, with_secrets=not without_secrets,
                pg_bin=pg_bin, say=_say,
            )  # fmt: skip
    except BackupError as e:
        _err.print(f"[red]Backup failed:[/red] {escape(str(e))}", markup=True)
        raise typer.Exit(1) from None
    m = result.manifest
    size = sum(f.size for f in m.files.values())
    _out.print(
        f"[green]backup complete[/green]: {escape(str(result.path))} "
        f"({len(m.files)} files, {size / 2**20:.1f} MiB), "
        f"revision {m.migration_head}, {len(result.layers)} referenced layers"
        + (" copied" if with_layers else " listed"),
        markup=True,
    )
    for ref in result.missing_layers:
        warning = f"[yellow]warning:[/yellow] layer {escape(ref.digest)} is referenced but not in the store"
        _err.print(warning, markup=True)


@contextlib.contextmanager
def _target_database(home: Path | None) -> Iterator[str]:
    """WARREN_DATABASE_URL, else the embedded database of ``home``: the running one, or one
    started (and on a fresh home created) for the duration of the restore."""
    if url := os.environ.get("WARREN_DATABASE_URL"):
        yield url
        return
    pg = EmbeddedPostgres(prepare_home(home or default_home()))
    if pg.attach():
        yield pg.url
        return
    with pg:
        yield pg.url


@app.command("restore")
def restore(
    directory: DirArg,
    force: Annotated[
        bool,
        typer.Option("--force", help="Restore into a database that holds tables (they are dropped first)."),
    ] = False,
    pg_bin: PgBinOpt = None,
    home: HomeOpt = None,
) -> None:
    """Restore the backup in DIR into an empty database (WARREN_DATABASE_URL, else the embedded
    one of --home, created when the home is new), then check the template store."""
    settings = _settings(home)
    _out.print(f"restoring {directory}")
    try:
        with _target_database(home) as url:
            result = restore_backup(url, settings, directory, force=force, pg_bin=pg_bin, say=_say)
    except BackupError as e:
        _err.print(f"[red]Restore failed:[/red] {escape(str(e))}", markup=True)
        raise typer.Exit(1) from None
    moved = f" (migrated from {result.migrated_from})" if result.migrated_from else ""
    done = f"[green]database restored[/green] at revision {escape(str(result.revision))}{escape(moved)}"
    _out.print(done, markup=True)
    if result.missing:
        missing = f"[red]{len(result.missing)} referenced layers are missing from the template store[/red]:"
        _err.print(missing, markup=True)
        for digest, size, by_template in result.missing:
            what = "template layer" if by_template else "build cache layer"
            _err.print(f"  {digest}  {size if size is not None else '?'} bytes  ({what})")
        _err.print(
            "Copy them into the store (layers/sha256/<digest>.tar) or rebuild their templates: "
            "creates that need them fail with 500 layer_missing."
        )
        raise typer.Exit(2)
    _out.print(f"template store complete: {result.layers_referenced} referenced layers present")
