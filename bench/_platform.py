"""What the whole-platform benchmarks share (``bench/sdk.py``, ``bench/templates.py``): an
embedded PostgreSQL, migrated, and a platform on it (``tests/harness/platform.py``: the CP in its
own process, real agents registered through the API), all in one temporary directory that is
stopped and removed on the way out. Not a benchmark itself: the scripts import it as
``bench._platform`` (the repository root is on their ``sys.path``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

# For `make bench`, which runs every bench/*.py, this one included (it then does nothing).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness.platform import Platform, start_platform
from warren.cp.db import migrate
from warren.cp.db.embedded import EmbeddedPostgres


def require_root(script: str) -> None:
    if os.geteuid() != 0:
        sys.exit(f"{script} needs root (real agents: namespaces, cgroups, overlayfs)")


@contextlib.asynccontextmanager
async def running_platform(prefix: str, agent_ips: tuple[str, ...]) -> AsyncIterator[tuple[Platform, Path]]:
    """The platform and its temporary directory (free for the benchmark's own files too)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)  # the agents' unprivileged sandbox users must reach their data dirs in it
    pg = EmbeddedPostgres(base / "pg", port=0, fast=True)
    platform: Platform | None = None
    try:
        pg.start()
        await asyncio.to_thread(migrate.upgrade, pg.url)
        platform = await start_platform(pg.url, base, agent_ips=agent_ips)
        yield platform, base
    finally:
        if platform is not None:
            # A failed stop must not keep PostgreSQL running or hide the benchmark's own error.
            with contextlib.suppress(Exception):
                await platform.stop()
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
