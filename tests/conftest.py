"""Shared fixtures for the whole suite.

Database: ONE PostgreSQL server per test run. ``WARREN_TEST_DATABASE_URL`` (an admin URL whose
role may create databases) selects an existing server; otherwise an embedded server is started:
 * under pytest-xdist, by the controller process in ``pytest_configure`` (it outlives every
   worker), which hands the URL to the workers through the environment;
 * without xdist, lazily by the first test that needs it.
On that server, the schema is migrated once into a template database (named after a hash of
the migration scripts, built under an advisory lock so concurrent workers build it once), and
each test module gets its own ``CREATE DATABASE ... TEMPLATE`` copy: ~tens of ms, full isolation.

Fixtures (a contract for the whole suite):
 * ``pg_server_url`` (session): admin URL of the server;
 * ``migrated_template_db`` (session): URL of the migrated template database (do not write to it,
   and do not keep connections open to it: PostgreSQL refuses to copy a template in use);
 * ``db_url`` (module): URL of a fresh, migrated database, dropped after the module;
 * ``fake_clock`` (function): the ``warren.clock`` module, reset before and after the test;
 * ``cp``, ``platform_dir``, ``platform`` (module): see ``tests/harness/fixtures.py``.

Everything that starts Warren's parts for a test lives in ``tests/harness/`` (one package, used
by every suite and by ``bench/``). In the xdist controller, ``pytest_configure`` also builds the
shared debootstrapped ``minimal`` template once (``tests/harness/machine.py``).

Markers: ``root`` tests fail in CI (``CI=true``, which runs as root) and skip locally when not
root; ``serial`` tests run in a separate, non-parallel pytest invocation (see the Makefile).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import hypothesis
import pytest
from sqlalchemy.engine import make_url

from tests.harness.agent import AgentProcess
from tests.harness.machine import prebuild_minimal_template
from tests.harness.platform import Platform
from warren import clock
from warren.cli.local_agent import DEFAULT_AGENT_PORT
from warren.cp.db import migrate
from warren.cp.db.embedded import EmbeddedPostgres

T = TypeVar("T")

# The harness's fixtures (``cp``, ``platform_dir``, ``platform``) for every suite.
pytest_plugins = ["tests.harness.fixtures", "tests.harness.cpu_report"]

ENV_URL = "WARREN_TEST_DATABASE_URL"
# Set by the xdist controller for its workers; not meant to be set by hand.
_SHARED_URL = "_WARREN_TEST_PG_URL"
_TEMPLATE_LOCK_KEY = 0x77746D706C  # advisory lock serialising template builds across workers

_server: EmbeddedPostgres | None = None
_server_dir: Path | None = None

# Property-based tests (Hypothesis, and schemathesis on top of it) run the same examples every
# run, and no example has a deadline: a default 200 ms deadline failed on a loaded machine, and
# an example drawn by chance must not decide whether a run passes.
hypothesis.settings.register_profile("warren", deadline=None, derandomize=True, database=None)
hypothesis.settings.load_profile("warren")


# ------------------------------------------------------------------------------------ helpers


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, on a private loop in a helper thread, so
    it never clashes with a loop pytest-asyncio may have running in this thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(lambda: asyncio.run(fn())).result()  # type: ignore[arg-type]


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def _asyncpg_dsn(url: str) -> str:
    u = make_url(url).set(drivername="postgresql")
    return u.render_as_string(hide_password=False)


async def _admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


def _remove_stale_server_dirs() -> None:
    """Dirs of earlier runs whose pytest was killed outright (its server died with it)."""
    for d in Path(tempfile.gettempdir()).glob("warren-testpg-*"):
        try:
            owner = int((d / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if not Path(f"/proc/{owner}").exists():
            shutil.rmtree(d, ignore_errors=True)


def _start_embedded() -> tuple[EmbeddedPostgres, Path]:
    _remove_stale_server_dirs()
    # /tmp itself is world-searchable and the dir is 0755, so the unprivileged postgres user
    # (when we run as root) can reach its data dir.
    d = Path(tempfile.mkdtemp(prefix="warren-testpg-"))
    d.chmod(0o755)
    (d / "owner.pid").write_text(str(os.getpid()))
    pg = EmbeddedPostgres(d / "home", port=0, fast=True, max_connections=400)
    try:
        pg.start()
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    return pg, d


def _stop_embedded() -> None:
    global _server, _server_dir
    if _server is not None:
        _server.stop()
        _server = None
    if _server_dir is not None:
        shutil.rmtree(_server_dir, ignore_errors=True)
        _server_dir = None


def _migrations_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(migrate.MIGRATIONS_DIR.rglob("*.py")):
        h.update(p.relative_to(migrate.MIGRATIONS_DIR).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------ hooks


def pytest_configure(config: pytest.Config) -> None:
    global _server, _server_dir
    config.addinivalue_line(
        "markers", "serial: must not run alongside other tests; `make test` runs these in a serial pass"
    )
    config.addinivalue_line(
        "markers",
        "shared_platform: the module's `platform` is a team of its own on the worker's one shared"
        " platform (tests/harness/fixtures.py), not a platform started for it",
    )
    if not hasattr(config, "workerinput"):
        prebuild_minimal_template()
    if hasattr(config, "workerinput") or os.environ.get(ENV_URL) or os.environ.get(_SHARED_URL):
        return
    numprocesses = getattr(config.option, "numprocesses", None)
    if numprocesses and config.getoption("dist", "no") != "no":
        # xdist controller: start the one server now, before workers exist; they inherit env.
        _server, _server_dir = _start_embedded()
        os.environ[_SHARED_URL] = _server.url


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        if _server is not None:
            os.environ.pop(_SHARED_URL, None)
        _stop_embedded()


# Modules that take a minute or more of a CI worker for only a few tests (`warren up` starts, a
# template build, waits the attack must sit out): handed out first, before the test count
# decides, so that none of them starts late and alone makes the run's tail (the 1-test
# test_up_local_agent.py, ~100 s, came ~140th of ~150 by its count). From CI's --durations.
LONG_FEW_TEST_MODULES = (
    "tests/integration/cli/test_up_local_agent.py",
    "tests/integration/cli/test_up.py",
    "tests/security/test_crashes.py",
    "tests/integration/cp/api/test_openapi.py",
    "tests/integration/cli/test_backup_restore.py",
    "tests/security/test_attack_preview_proxy.py",
    "tests/security/test_attack_session14_host.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The order xdist hands out modules in (the Makefile turns its own reordering off): the
    LONG_FEW_TEST_MODULES, then modules with more tests first, as xdist would, but every unit
    test module after the rest. A module that starts platforms and sandboxes often has only a
    few tests, so xdist's order ran the heaviest last, where one of them alone set the run's
    tail; the unit tests (~5% of the work, in many small modules) are what best fills the
    workers' last minutes evenly. Stable, so every worker collects the same order (xdist
    refuses to run otherwise)."""
    per_module = collections.Counter(item.nodeid.split("::", 1)[0] for item in items)
    long_rank = {m: i for i, m in enumerate(LONG_FEW_TEST_MODULES)}

    def key(item: pytest.Item) -> tuple[bool, int, int]:
        module = item.nodeid.split("::", 1)[0]
        return module.startswith("tests/unit/"), long_rank.get(module, len(long_rank)), -per_module[module]

    items.sort(key=key)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        reason = "needs root (namespaces, cgroups, overlayfs); run the suite as root"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            # CI runs as root: a root test that cannot run there is a broken CI, not a skip.
            pytest.fail(f"CI=true but not root: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that used a platform or an agent shows its CP's logged errors and its
    agents' warnings (each runs in its own process: what it logged is otherwise lost with the
    run's directory, as in CI)."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        agents = [value] if isinstance(value, AgentProcess) else []
        if isinstance(value, Platform):
            agents = value.agents
            if errors := value.cp.errors_tail():
                report.sections.append((f"control plane errors ({name})", errors))
        for i, agent in enumerate(agents):
            if warnings := agent.warnings_tail():
                report.sections.append((f"host agent warnings ({name}, agent {i})", warnings))


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """Admin URL of the run's PostgreSQL server (a role allowed to create databases)."""
    global _server, _server_dir
    url = os.environ.get(ENV_URL) or os.environ.get(_SHARED_URL)
    if url:
        yield url
        return
    if _server is None:
        _server, _server_dir = _start_embedded()
    try:
        yield _server.url
    finally:
        _stop_embedded()


@pytest.fixture(scope="session")
def migrated_template_db(pg_server_url: str) -> str:
    """URL of a database migrated to head, used as the TEMPLATE of every ``db_url``."""
    name = f"warren_tmpl_{_migrations_digest()}"
    building = f"{name}_building"

    async def build() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(pg_server_url))
        try:
            # Session-level lock: concurrent workers wait here and then find the template ready.
            await conn.execute(f"SELECT pg_advisory_lock({_TEMPLATE_LOCK_KEY})")
            try:
                if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                    return
                await conn.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
                await conn.execute(f'CREATE DATABASE "{building}"')
                await asyncio.to_thread(migrate.upgrade, _with_database(pg_server_url, building))
                # Renamed only once complete, so a half-built template is never used.
                await conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
                await conn.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE true')
            finally:
                await conn.execute(f"SELECT pg_advisory_unlock({_TEMPLATE_LOCK_KEY})")
        finally:
            await conn.close()

    _run(build)
    return _with_database(pg_server_url, name)


@contextlib.contextmanager
def _fresh_database(pg_server_url: str, migrated_template_db: str) -> Iterator[str]:
    template = make_url(migrated_template_db).database
    name = f"warren_test_{uuid.uuid4().hex[:12]}"
    _run(lambda: _admin(pg_server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield _with_database(pg_server_url, name)
    finally:
        # FORCE: connections a test's engine left open must not keep the database alive.
        _run(lambda: _admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def db_url(pg_server_url: str, migrated_template_db: str) -> Iterator[str]:
    """A fresh database copied from the migrated template; dropped after the module."""
    with _fresh_database(pg_server_url, migrated_template_db) as url:
        yield url


@pytest.fixture(scope="session")
def session_db_url(pg_server_url: str, migrated_template_db: str) -> Iterator[str]:
    """A fresh database for the whole worker: the shared platform's (tests/harness/fixtures.py)."""
    with _fresh_database(pg_server_url, migrated_template_db) as url:
        yield url


@pytest.fixture
def fake_clock() -> Iterator[Any]:
    """``warren.clock`` with a clean offset; ``fake_clock.advance(seconds)`` moves time."""
    clock.reset()
    try:
        yield clock
    finally:
        clock.reset()


@pytest.fixture(scope="session", autouse=True)
def _default_agent_port_held() -> Iterator[None]:
    """``warren up``'s local agent prefers 127.0.0.1:50051 (and a restarted one reuses the
    address it registered with): two ``warren up``s on two workers (test_up_local_agent.py,
    tests/security/test_crashes.py) could take it in turn, and a restart then find it taken.
    Each worker holds it (bound, not listening), so every test's local agent gets a free port.
    Whoever holds it already (another worker, another run on the machine) may let it go later:
    a thread keeps trying, so it is not left free (a CI run started while another engineer's
    run held it: both modules' agents took it in turn, and both failed)."""
    s, stop = socket.socket(), threading.Event()

    def hold() -> None:
        while not stop.is_set():
            try:
                s.bind(("127.0.0.1", DEFAULT_AGENT_PORT))
                return
            except OSError:
                stop.wait(0.5)

    holder = threading.Thread(target=hold, name="hold-default-agent-port", daemon=True)
    holder.start()
    try:
        yield
    finally:
        stop.set()
        holder.join()
        s.close()


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """What a test writes into ``os.environ`` (itself, or through the code it runs, such as
    ``config_file.apply``) is undone after it: later tests of the same worker start agents and
    control planes that copy the environment (a leaked WARREN_LOG_FORMAT once made an agent
    log JSON under a test that reads its text log). Module fixtures that set variables for
    their module are set before this snapshot and so survive it."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
