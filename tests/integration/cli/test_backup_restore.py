"""``warren admin backup`` then ``warren admin restore`` onto a fresh home and a fresh database:
a live platform (a CP process and a real agent) with two users, a second team, API keys, a
host, a built template, a snapshot and running sandboxes is backed up; the restore goes into an
empty database and an empty home; a CP on them (same address, so the agent keeps its
credentials) serves every record again: the old API key authenticates, the templates start
sandboxes, the sandbox running at backup time answers an exec (the CA came back), and the
monitor settles a sandbox destroyed after the backup. Then the refusals: a non-empty
directory, a corrupt file, a non-empty database without --force, and a store missing layers."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.harness.cp import PASSWORD, CPProcess
from tests.harness.platform import Platform, start_platform

pytestmark = pytest.mark.root

AGENT_IP = "127.0.0.61"
SPEC = "FROM minimal\nRUN echo built-for-backup > /etc/backup-test\n"


def warren(*args: str, home: Path, db: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WARREN_HOME": str(home), "WARREN_DATABASE_URL": db}
    env.pop("WARREN_JWT_SECRET", None)
    return subprocess.run(
        [sys.executable, "-m", "warren.cli.main", *args], env=env, capture_output=True, text=True, timeout=300
    )


CREATED: list[str] = []  # databases this module made, dropped when its platform stops


async def _admin(server_url: str, statement: str) -> None:
    conn = await asyncpg.connect(make_url(server_url).set(drivername="postgresql").render_as_string(False))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def new_database(server_url: str) -> str:
    """An empty database (no schema) on the test server."""
    name = f"restore_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    CREATED.append(name)
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def wait_for(http: httpx.AsyncClient, path: str, field: str, want: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(600):
        r = await http.get(path)
        if r.status_code == 200 and (body := r.json()).get(field) == want:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path}: {field} never became {want!r} (last {body})")


async def wait_for_any(
    http: httpx.AsyncClient, path: str, field: str, want: tuple[str, ...]
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(600):
        r = await http.get(path)
        if r.status_code == 200 and (body := r.json()).get(field) in want:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path}: {field} never became one of {want} (last {body})")


@dataclass
class World:
    platform: Platform
    backup: Path
    server_url: str
    home_a: Path
    db_a: str
    other_email: str
    other_key: str
    other_team: str
    template_layers: list[str]
    kept: str  # a sandbox running at backup time and after
    gone: str  # running at backup time, destroyed afterwards


@pytest.fixture(scope="module")
def scratch(platform_dir: Path) -> Path:
    return platform_dir


@pytest.fixture(scope="module")
async def world(pg_server_url: str, db_url: str, platform_dir: Path) -> AsyncIterator[World]:
    p = await start_platform(db_url, platform_dir, agent_ips=(AGENT_IP,))
    try:
        yield await _populate_and_back_up(p, pg_server_url, db_url, platform_dir)
    finally:
        await p.stop()
        for name in CREATED:
            await _admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _populate_and_back_up(p: Platform, server_url: str, db_url: str, base: Path) -> World:
    async with httpx.AsyncClient(base_url=p.url, headers=p.headers, timeout=120) as http:
        # A second user, their own team and an API key for it.
        email = f"other{uuid.uuid4().hex[:8]}@example.com"
        r = await http.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "O"})
        assert r.status_code == 201, r.text
        other_jwt = {"Authorization": f"Bearer {r.json()['token']}"}
        r = await http.post("/v1/teams", json={"name": "second"}, headers=other_jwt)
        assert r.status_code == 201, r.text
        team = r.json()["id"]
        r = await http.post("/v1/api-keys", json={"name": "k2"}, headers=other_jwt)
        assert r.status_code == 201, r.text
        other_key = r.json()["key"]
        # A built template, a snapshot, and sandboxes.
        r = await http.post("/v1/templates", json={"name": "bk-built", "spec": SPEC})
        assert r.status_code == 202, r.text
        build = await wait_for(
            http, f"/v1/templates/bk-built/builds/{r.json()['build_id']}", "status", "ready"
        )
        assert build["status"] == "ready"
        src = (await http.post("/v1/sandboxes", json={"template": "bk-built"})).json()["id"]
        r = await http.post(
            f"/v1/sandboxes/{src}/exec", json={"cmd": "/bin/sh", "args": ["-c", "echo s > /snap"]}
        )
        assert r.status_code == 200, r.text
        r = await http.post("/v1/snapshots", json={"sandbox_id": src, "name": "bk-snap"})
        assert r.status_code == 201, r.text
        gone = (await http.post("/v1/sandboxes", json={"template": "minimal"})).json()["id"]
        layers = await p.sql(
            "SELECT DISTINCT unnest(layers) FROM templates WHERE name IN ('bk-built', 'bk-snap')"
        )
        backup = base / "backup"
        res = warren("admin", "backup", str(backup), "--with-layers", home=p.cp.home, db=db_url)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "backup complete" in res.stdout, res.stdout
        # After the backup: this one is destroyed, so the restored record is stale.
        assert (await http.delete(f"/v1/sandboxes/{gone}")).status_code == 204
    return World(
        p, backup, server_url, p.cp.home, db_url, email, other_key, team, [r[0] for r in layers], src, gone
    )


@pytest.fixture(scope="module")
async def restored(world: World, platform_dir: Path) -> AsyncIterator[CPProcess]:
    """The backup restored onto a fresh home and database, served by a CP at the old address."""
    home_b = platform_dir / "home-b"
    db_b = await new_database(world.server_url)
    res = warren("admin", "restore", str(world.backup), home=home_b, db=db_b)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "template store complete" in res.stdout, res.stdout
    old = world.platform.cp
    old.stop()
    cp_b = CPProcess(db_b, home_b)
    cp_b.port, cp_b.url, cp_b.log_path = old.port, old.url, home_b / "cp.log"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WARREN_MONITOR_INTERVAL_S", "1")
        await asyncio.to_thread(cp_b.start)
    world.platform.cp = cp_b  # the platform's stop() force-deletes the host through it
    yield cp_b


async def test_every_record_is_back_and_serves(world: World, restored: CPProcess) -> None:
    p = world.platform
    async with httpx.AsyncClient(base_url=restored.url, headers=p.headers, timeout=120) as http:
        # The same API keys authenticate, the same passwords sign in.
        r = await http.get("/v1/sandboxes")
        assert r.status_code == 200, r.text
        assert world.kept in {s["id"] for s in r.json()}
        r = await http.get("/v1/sandboxes", headers={"X-API-Key": world.other_key})
        assert r.status_code == 200, r.text
        r = await http.post("/v1/auth/login", json={"email": world.other_email, "password": PASSWORD})
        assert r.status_code == 200, r.text
        teams = await http.get("/v1/teams", headers={"Authorization": f"Bearer {r.json()['token']}"})
        assert world.other_team in {t["id"] for t in teams.json()}
        # The host comes back online through its agent's heartbeats (its credentials still hold).
        http.headers.update(p.user_headers)  # hosts are for platform admins' sessions
        host = await wait_for(http, f"/v1/hosts/{p.host_ids[0]}", "status", "online")
        assert host["id"] == p.host_ids[0]
        del http.headers["Authorization"]
        names = {t["name"] for t in (await http.get("/v1/templates")).json()}
        assert {"bk-built", "bk-snap"} <= names
        # The sandbox running at backup time answers through the new CP (the CA came back). The
        # agent pauses its sandboxes after 3 failed heartbeats (1 s each here) while no CP
        # answers, and the monitor records that: its owner resumes it.
        kept = await wait_for_any(http, f"/v1/sandboxes/{world.kept}", "status", ("running", "paused"))
        if kept["status"] == "paused":
            assert (await http.post(f"/v1/sandboxes/{world.kept}/resume")).status_code == 200
        r = await http.post(f"/v1/sandboxes/{world.kept}/exec", json={"cmd": "cat", "args": ["/snap"]})
        assert r.status_code == 200 and r.json()["stdout"] == "s\n", r.text
        # The one destroyed after the backup is settled by the monitor.
        stopped = await wait_for(http, f"/v1/sandboxes/{world.gone}", "status", "stopped")
        assert stopped["status"] == "stopped"
        # Both templates start sandboxes from the restored store.
        for template, cmd in (("bk-built", "cat /etc/backup-test"), ("bk-snap", "cat /snap")):
            r = await http.post("/v1/sandboxes", json={"template": template})
            assert r.status_code == 201, r.text
            sb = r.json()["id"]
            r = await http.post(f"/v1/sandboxes/{sb}/exec", json={"cmd": "/bin/sh", "args": ["-c", cmd]})
            assert r.status_code == 200 and r.json()["stdout"] in ("built-for-backup\n", "s\n"), r.text
            assert (await http.delete(f"/v1/sandboxes/{sb}")).status_code == 204


def test_the_backup_is_private_and_complete(world: World) -> None:
    assert world.backup.stat().st_mode & 0o777 == 0o700
    files = [f for f in world.backup.rglob("*") if f.is_file()]
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    names = {f.relative_to(world.backup).as_posix() for f in files}
    assert {
        "backup.json",
        "database.dump",
        "store-manifest.json",
        "secrets/ca/ca.pem",
        "secrets/ca/ca.key",
    } <= names
    assert world.template_layers
    assert {f"layers/sha256/{d}.tar" for d in world.template_layers} <= names


def test_a_backup_refuses_a_directory_that_is_not_empty(world: World, scratch: Path) -> None:
    used = scratch / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    res = warren("admin", "backup", str(used), home=world.home_a, db=world.db_a)
    assert res.returncode == 1 and "not an empty directory" in res.stderr, res.stdout + res.stderr
    assert [f.name for f in used.iterdir()] == ["keep.txt"]
    assert not [f for f in scratch.iterdir() if ".partial-" in f.name]


async def test_a_corrupt_backup_restores_nothing(world: World, scratch: Path) -> None:
    bad = scratch / "corrupt"
    shutil.copytree(world.backup, bad)
    dump = bad / "database.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    db = await new_database(world.server_url)
    res = warren("admin", "restore", str(bad), home=scratch / "home-corrupt", db=db)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "database.dump: sha256 does not match" in res.stderr and "nothing was restored" in res.stderr
    conn = await asyncpg.connect(
        make_url(db).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
    finally:
        await conn.close()


async def test_a_database_in_use_needs_force(world: World, restored: CPProcess, scratch: Path) -> None:
    res = warren("admin", "restore", str(world.backup), home=restored.home, db=restored.db_url)
    assert res.returncode == 1 and "the target database is not empty" in res.stderr, res.stdout + res.stderr


async def test_missing_layers_are_listed(world: World, scratch: Path) -> None:
    # A backup without the layers, restored where the store is empty.
    lean = scratch / "lean"
    res = warren("admin", "backup", str(lean), home=world.home_a, db=world.db_a)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not (lean / "layers").exists()
    db = await new_database(world.server_url)
    res = warren("admin", "restore", str(lean), home=scratch / "home-lean", db=db)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "database restored" in res.stdout
    assert "referenced layers are missing from the template store" in res.stderr
    for digest in world.template_layers:
        assert digest in res.stderr
    # --force restores again over it (the database is no longer empty).
    res = warren("admin", "restore", str(lean), "--force", home=scratch / "home-lean", db=db)
    assert res.returncode == 2 and "--force: dropping" in res.stdout, res.stdout + res.stderr


@pytest.fixture(scope="module", autouse=True)
def _no_partial_dirs(platform_dir: Path) -> Iterator[None]:
    yield
    assert not [f for f in platform_dir.iterdir() if ".partial-" in f.name]
