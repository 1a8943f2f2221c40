"""``warren admin grant|revoke EMAIL``: platform administrators (``users.is_admin``).

No API sets this flag (SPEC §1.2); an operator with access to the database does. The database
is WARREN_DATABASE_URL, else the embedded one under --home.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy import func, select, update

from warren.cli.up import HomeOpt, database_url
from warren.cp.db.engine import make_engine
from warren.cp.db.tables import users

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

app = typer.Typer(name="admin", help="Grant or revoke platform-admin rights.", no_args_is_help=True)

EmailArg = Annotated[str, typer.Argument(help="Email of an existing account.", show_default=False)]


async def set_admin(url: str, email: str, value: bool) -> bool:
    """Set ``users.is_admin`` for ``email`` (normalised like signup does); False if no such user."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(
                update(users)
                .where(users.c.email == email.strip().lower())
                .values(is_admin=value, updated_at=func.now())
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
        err.print(f"[red]No account with email {email.strip().lower()!r}.[/red]")
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
