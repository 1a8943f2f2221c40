"""Session 24: a cancelled build's COPY staging went on writing, holding a tenant thread.

The control plane runs tenant-sized thread work (an image import's read, a build's context index
and its COPY steps' staging tars) in 2 threads per process, in turns fair between teams
(cp/services/tenant_threads.py, session 23). A cancelled caller holds its turn until its thread
has ended, but none of the three took the stop event they were given: a build cancelled at its
time limit (``WARREN_BUILD_TIMEOUT_S``, or the control plane stopping) went on staging to the
end. COPY stages each hard link as a full copy of its target, up to ``WARREN_BUILD_MAX_LAYER_MB``
(4 GiB), so a 3 MiB context (a 1 MiB file and 4000 links to it) is 4 GiB written to the CP's
spool; one team's two builds (its bound) held both threads for as long as that takes, and
another team's import, whose read needs one of them, waited for work nobody wanted any more.

Here the builds are cancelled by the team (``POST …/cancel``, the route a time limit takes too:
the build's task is cancelled) once both are staging. Before: both stagings ran to their end,
4001 MiB each, and the victim's import answered only then (8002 MiB written first, ~30 s). Now
the staging stops with the build (since session 26 its child process is killed), and the
victim's import answers once they have (a few hundred MiB written). The assertion is on bytes
(how much of the cancelled staging was written before the victim got a thread), not on speed.

The cancel was a 3 s time limit until session 33: under CI's load the build's first work (its
context's index, a niced child process) outlasted it once, so no staging began in 60 s and the
test could not make its point. A cancel at a moment of the test's choosing has no such race.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness.cp import InProcessCP
from warren.cp.services.template_builds import CANCELLED

MiB = 1 << 20
STAGING_WAIT_S = 120  # both builds' run-up (two niced child processes each) under CI's load
BLOB_MB = 1
LINKS = 4000  # the staging: (LINKS + 1) MiB, under WARREN_BUILD_MAX_LAYER_MB's 4096
STAGED = (LINKS + 1) * BLOB_MB * MiB  # one build's whole staging
BUILDS = 2  # WARREN_BUILD_MAX_PER_TEAM's default: both tenant threads


@pytest.fixture(scope="module")
async def cp(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessCP]:
    home = tmp_path_factory.mktemp("cp-home")
    async with InProcessCP(db_url, home) as server:
        yield server


def _context() -> bytes:
    """A 1 MiB file and LINKS hard links to it: ~3 MiB of tar, STAGED bytes of staging."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        blob = tarfile.TarInfo("d/blob")
        blob.size = BLOB_MB * MiB
        t.addfile(blob, io.BytesIO(bytes(blob.size)))
        for i in range(LINKS):
            link = tarfile.TarInfo(f"d/l{i}")
            link.type, link.linkname = tarfile.LNKTYPE, "d/blob"
            t.addfile(link)
    return buf.getvalue()


def _image() -> bytes:
    """A docker-save tarball of one small layer without python3: read, then refused (400)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as t:
        t.addfile(tarfile.TarInfo("etc/hostname"))
    layer = raw.getvalue()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }
    manifest = [{"Config": "config.json", "RepoTags": [], "Layers": ["layer.tar"]}]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        for name, data in (
            ("config.json", json.dumps(config).encode()),
            ("layer.tar", layer),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


class Spool:
    """The CP's staging files (its build spool), each one's largest size seen: what the
    cancelled work wrote, looked at every 20 ms."""

    def __init__(self, cp: InProcessCP) -> None:
        self.dir = cp.settings.home / "build-spool"
        self.largest: dict[Path, int] = {}

    def files(self) -> list[Path]:
        return list(self.dir.glob(".staging-*")) if self.dir.is_dir() else []

    def look(self) -> None:
        for p in self.files():
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                continue
            self.largest[p] = max(size, self.largest.get(p, 0))

    async def watch(self) -> None:
        while True:
            self.look()
            await asyncio.sleep(0.02)

    def written(self) -> int:
        self.look()
        return sum(self.largest.values())


async def _ended(cp: InProcessCP, key: str, name: str, build_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 180  # before the fix: both stagings' whole 8 GiB first
    while True:
        r = await cp.http.get(f"/v1/templates/{name}/builds/{build_id}", headers={"X-API-Key": key})
        assert r.status_code == 200, r.text
        info: dict[str, object] = r.json()
        if info["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return info
        await asyncio.sleep(0.1)


async def test_a_cancelled_builds_staging_stops_and_frees_its_thread(cp: InProcessCP) -> None:
    attacker, victim = await cp.signup(), await cp.signup()
    a_key, v_key = await attacker.api_key(), await victim.api_key()
    context, image = await asyncio.to_thread(_context), _image()
    spool = Spool(cp)
    watcher = asyncio.create_task(spool.watch())
    try:
        builds = []
        t0 = time.monotonic()
        for n in range(BUILDS):
            r = await cp.http.post(
                "/v1/templates",
                headers={"X-API-Key": a_key},
                data={"name": f"big{n}", "spec": "FROM minimal\nCOPY d /x\n"},
                files={"context": ("ctx.tar", context, "application/x-tar")},
            )
            assert r.status_code == 202, r.text
            builds.append((f"big{n}", r.json()["build_id"]))

        # Both builds stage at once: both tenant threads are the attacker's.
        def staging() -> int:
            return len([s for s in spool.largest.values() if s > 0])

        while staging() < BUILDS and time.monotonic() - t0 < STAGING_WAIT_S:
            await asyncio.sleep(0.02)
        assert staging() == BUILDS, spool.largest
        for name, build_id in builds:
            r = await cp.http.post(
                f"/v1/templates/{name}/builds/{build_id}/cancel", headers={"X-API-Key": a_key}
            )
            assert r.status_code == 200, r.text
        r = await cp.http.post(
            "/v1/templates/import",
            headers={"X-API-Key": v_key},
            data={"name": "small"},
            files={"image": ("i.tar", image, "application/x-tar")},
        )
        answered = time.monotonic() - t0
        written = spool.written()  # by the attacker's staging, before the victim had a thread
        ends = [await _ended(cp, a_key, name, build_id) for name, build_id in builds]
        print(
            f"{BUILDS} builds of {len(context) // 1024} KiB contexts staging {STAGED // MiB} MiB each, "
            f"cancelled: the victim's import answered {r.status_code} after "
            f"{answered:.1f} s, the staging having written {written // MiB} MiB "
            f"({', '.join(str(s // MiB) for s in spool.largest.values())} MiB)"
        )
        assert r.status_code == 400 and "python3" in r.text, r.text  # read (a thread), and refused
        for info in ends:
            assert info["status"] == "failed" and info["error"] == CANCELLED, info
        # Before: the victim's read waited for both stagings' whole STAGED bytes. Now the
        # cancelled stagings stop with their builds: less than one of them was written.
        assert written < STAGED, (written, spool.largest)
        assert not spool.files()  # each cancelled staging's file is removed
    finally:
        watcher.cancel()
