"""Fixtures every suite may use (``tests/conftest.py`` loads this module as a plugin). Each
starts one part per test module, on the module's fresh database (``db_url``).

The control plane's modules are imported when a fixture first runs, not here: every pytest
process (the xdist controller too) loads this plugin, and most never start a CP."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.harness.machine import scratch_dir

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tests.harness.cp import InProcessCP
    from tests.harness.platform import Platform


@pytest.fixture(scope="module")
async def cp(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessCP]:
    """A control plane served on the test's event loop; the fake clock is reset afterwards."""
    from tests.harness.cp import InProcessCP
    from warren import clock

    try:
        async with InProcessCP(db_url, Path(tmp_path_factory.mktemp("cp-home"))) as server:
            yield server
    finally:
        clock.reset()


@pytest.fixture(scope="module")
def platform_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Home of one module's live platform (its CP's and its agents' data), removed afterwards."""
    suite = Path(str(request.node.path)).parent.name
    d = scratch_dir(suite)
    yield d
    shutil.rmtree(d, ignore_errors=True)


# The shared platform's preview domain (host-name routing: ``{port}-{sandbox_id}.preview.test``).
PREVIEW_DOMAIN = "preview.test"
# The shared platform's settings, the same for every module on it.
SHARED_ENV = {
    # Every shared module's tenants sign up from this one address, more than the default 60 an
    # hour over a run (the limit has tests of its own: test_abuse).
    "WARREN_SIGNUP_LIMIT_PER_ADDRESS": "100000",
    # Previews by host name as well as by path: the modules of host routing share it too
    # (without it, each started a platform of its own for this one setting).
    "WARREN_PREVIEW_DOMAIN": PREVIEW_DOMAIN,
    # A pass every 5 s (30 s in production): what a test waits for the monitor to record (a
    # sandbox that died on its host) is seconds, not half a minute. The passes are race-safe
    # by design (cp/hosts/monitor.py: several replicas run them at once).
    "WARREN_MONITOR_INTERVAL_S": "5",
    # Requests queued for the unary byte budget give up after 5 s (30 in production): the one
    # module that fills it (test_attack_session14_listings) sees its 503s instead of 20 s of turns.
    "WARREN_UNARY_BUDGET_WAIT_S": "5",
}


class WorkerPlatform:
    """The worker's one shared platform, started when a ``shared_platform`` module first asks
    (a platform start is ~5 s of CPU, paid once per worker instead of once per module)."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.home: Path | None = None
        self._platform: Platform | None = None

    async def get(self) -> Platform:
        from tests.harness.environ import environ
        from tests.harness.platform import start_platform

        if self._platform is None:
            self.home = scratch_dir("shared")
            with environ(SHARED_ENV):
                self._platform = await start_platform(self.db_url, self.home)
        return self._platform

    async def stop(self) -> None:
        if self._platform is not None:
            await self._platform.stop()
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="session")
async def worker_platform(session_db_url: str) -> AsyncIterator[WorkerPlatform]:
    shared = WorkerPlatform(session_db_url)
    try:
        yield shared
    finally:
        await shared.stop()


@pytest.fixture(scope="module")
async def platform(
    request: pytest.FixtureRequest, worker_platform: WorkerPlatform
) -> AsyncIterator[Platform]:
    """A live platform: a CP process and one real agent registered to it, on the module's
    database (``db_url``) and in its ``platform_dir``. A module marked ``shared_platform`` (it
    changes nothing beyond its own teams: no agents, hosts or settings) gets a team of its own on
    the worker's shared platform instead, and no database or directory of its own (a database
    copied and dropped for nothing was ~0.1 s of PostgreSQL a module)."""
    from tests.harness.platform import module_view, running_platform

    if os.geteuid() != 0:
        pytest.skip("real agents need root (namespaces, cgroups, overlayfs)")
    if request.node.get_closest_marker("shared_platform") is not None:
        async with module_view(await worker_platform.get()) as p:
            yield p
        return
    db_url: str = request.getfixturevalue("db_url")
    platform_dir: Path = request.getfixturevalue("platform_dir")
    async with running_platform(db_url, platform_dir) as p:
        yield p


@contextlib.asynccontextmanager
async def emptied_engine(db_url: str, *tables: str, pool_size: int = 5) -> AsyncIterator[AsyncEngine]:
    """An engine on the module's database with ``tables`` truncated first (CASCADE), so each
    test starts from none of their rows; disposed afterwards. For a module's own ``engine``
    fixture (the database itself lives as long as the module)."""
    import sqlalchemy as sa

    from warren.cp.db.engine import make_engine

    e = make_engine(db_url, pool_size=pool_size)
    try:
        async with e.begin() as conn:
            await conn.execute(sa.text(f"TRUNCATE {', '.join(tables)} CASCADE"))
        yield e
    finally:
        await e.dispose()
