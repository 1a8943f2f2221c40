"""The data directory of ``warren up`` and the database every local command uses.

``--home`` (``HomeOpt``) is where ``warren up`` keeps the embedded PostgreSQL and its secrets;
``warren migrate`` and ``warren admin`` reach the same database through :func:`database_url`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from warren.config import default_home
from warren.cp.db.embedded import EmbeddedPostgres

__all__ = ["HomeOpt", "database_url", "load_or_create_secret", "prepare_home"]

err = Console(stderr=True, highlight=False)

HomeOpt = Annotated[
    Path | None,
    typer.Option(
        help="Data directory (database, JWT secret).",
        show_default="$WARREN_HOME, else /var/lib/warren as root, else ~/.local/share/warren",
    ),
]


def load_or_create_secret(path: Path) -> str:
    """A random secret kept in a 0600 file, created on first use."""
    try:
        value = path.read_text().strip()
        if len(value) >= 32:
            return value
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(48)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    tmp.replace(path)
    return value


def prepare_home(home: Path) -> Path:
    home = home.expanduser().absolute()
    # Searchable (not readable) by others: as root the database runs as the `warren` user and
    # must reach <home>/postgres. Secrets inside are 0600.
    home.mkdir(parents=True, exist_ok=True, mode=0o755)
    return home


@contextlib.contextmanager
def database_url(home: Path | None) -> Iterator[str]:
    """URL of Warren's database: WARREN_DATABASE_URL, else the embedded server of ``home``
    (the running one if a ``warren up`` is up, otherwise started just for the duration)."""
    if url := os.environ.get("WARREN_DATABASE_URL"):
        yield url
        return
    pg = EmbeddedPostgres(prepare_home(home or default_home()))
    if not (pg.data_dir / "PG_VERSION").exists():
        err.print(f"[red]No database in {pg.home}[/red]: run `warren up` first, or set WARREN_DATABASE_URL.")
        raise typer.Exit(1)
    if pg.attach():
        yield pg.url
        return
    with pg:
        yield pg.url
