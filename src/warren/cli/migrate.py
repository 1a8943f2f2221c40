"""``warren migrate up|down|status``: the database schema (Alembic revisions shipped in the package).

The database is WARREN_DATABASE_URL, else the embedded one under --home (the running server of
a ``warren up``, or one started just for the command).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from warren.cli.groups import command_group
from warren.cli.home import HomeOpt, database_url
from warren.cp.db import migrate

out = Console(highlight=False)

app = command_group("migrate", "Apply, revert and inspect database schema migrations.")


@app.command("up")
def up(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    home: HomeOpt = None,
) -> None:
    """Apply every pending migration (or up to REVISION)."""
    with database_url(home) as url:
        migrate.upgrade(url, revision)
        st = migrate.status(url)
    out.print(f"database at revision [bold]{st.current}[/bold] (head {st.head})")


@app.command("down")
def down(
    revision: Annotated[
        str, typer.Argument(help="Target revision: an id, -1 for one step, or base (drops everything).")
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    home: HomeOpt = None,
) -> None:
    """Revert migrations down to REVISION. Reverting drops tables and their data."""
    if not yes:
        typer.confirm(f"Revert the schema to {revision!r}? Data in dropped tables is lost", abort=True)
    with database_url(home) as url:
        migrate.downgrade(url, revision)
        st = migrate.status(url)
    out.print(f"database at revision [bold]{st.current or 'base (empty)'}[/bold]")


@app.command("status")
def status(
    check: Annotated[
        bool, typer.Option("--check", help="Exit with code 1 when migrations are pending.")
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Show the database's revision, the newest one, and what is pending."""
    with database_url(home) as url:
        st = migrate.status(url)
    out.print(f"current  {st.current or 'none (empty database)'}")
    out.print(f"head     {st.head}")
    out.print(f"pending  {', '.join(st.pending) if st.pending else 'none'}")
    if check and not st.up_to_date:
        raise typer.Exit(1)
