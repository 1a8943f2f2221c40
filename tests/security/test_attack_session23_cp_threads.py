"""Session 23: tenants' image imports held every thread of the control plane's default executor.

A CP worker runs its short blocking calls (the template store's chunk reads and writes, asyncio's
own ``getaddrinfo``) in asyncio's default executor: ``min(32, cpu + 4)`` threads, 6 on a 2-core
machine. An image import read the whole image (``read_image``: every layer decompressed, parsed
and written out) in one call to that same executor, for as long as the tenant's image makes it:
a gzip layer of many empty files is a few MiB to upload and seconds of a thread to read. Four
teams (two imports each, the per-team limit; one account may own ten teams) took all six threads
and queued two more reads, and every other team's call behind them waited: here another team's
warm-pool set, whose layer the CP pushes from the store to that team's host chunk by chunk, did
not answer until the imports' reads had ended: 0.10 s alone, 39.7 s during the imports, six of
which answered meanwhile (8 imports of 4 MiB, 600,000 empty files each; 2 cores).

Now tenant-sized thread work (imports, a build's context and COPY staging) runs in an executor of
its own, bounded and taken in turns fair between teams (cp/services/tenant_threads.py), and the
default executor stays free for short calls: the victim's push answers while the imports are
being read (1.1 s during them, none answered meanwhile). The assertion is on order (how many
imports answer while the victim's push runs), not on speed. Then the attackers' clients leave,
and (session 24) their reads stop with them instead of running to their end (api/disconnect.py;
before, the test waited ~80 s for them). The control plane is the real app
(in-process) on a real PostgreSQL; the victim's host is a gRPC server of the test's that lacks
every layer.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cp import InProcessCP, User, set_byoc
from tests.harness.fake_agent import serve_fake_agent
from tests.security.test_attack_session14_byoc_pushes import _template
from warren import ids
from warren.agent.control_plane import load_credentials
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc

pytestmark = pytest.mark.root

MiB = 1 << 20
LAYER_MB = 32  # the victim's layer: 32 chunk reads from the store
FILES = 600_000  # per attacker image: ~300 MiB of tar headers, ~4 MiB of gzip: seconds to read
DEFAULT_THREADS = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor
PER_TEAM = 2  # WARREN_IMPORT_MAX_PER_TEAM's default
TEAMS = (DEFAULT_THREADS + 2 + PER_TEAM - 1) // PER_TEAM  # every thread, and two reads queued
IMPORTS = TEAMS * PER_TEAM


def _layer_tar() -> bytes:
    """FILES empty files ``d/0000000`` ... as bare ustar headers: the bytes `tarfile` writes for
    them (``addfile(TarInfo(name))`` each, format USTAR, then its end and record padding), made
    from one header with a name and a checksum apiece (a `TarInfo` apiece was 14 CPU-s)."""
    blank = bytearray(tarfile.TarInfo("").tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape"))
    blank[148:156] = b" " * 8  # the checksum counts its own field as spaces
    base = sum(blank)
    out = bytearray()
    for i in range(FILES):
        name = b"d/%07d" % i
        blk = bytearray(blank)
        blk[: len(name)] = name
        blk[148:155] = b"%06o\0" % (base + sum(name))
        out += blk
    out += bytes(2 * tarfile.BLOCKSIZE)
    out += bytes(-len(out) % tarfile.RECORDSIZE)
    return bytes(out)


def _image() -> bytes:
    """A docker-save tarball of one gzip layer of FILES empty files (no python3: the import is
    refused, 400, once the image has been read)."""
    raw = _layer_tar()
    layer = gzip.compress(raw, 6)
    diff = "sha256:" + hashlib.sha256(raw).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff]},
    }
    manifest = [{"Config": "config.json", "RepoTags": [], "Layers": ["layer.tar.gz"]}]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        for name, data in (
            ("config.json", json.dumps(config).encode()),
            ("layer.tar.gz", layer),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


class Lacking(pb_grpc.HostAgentServicer):
    """The victim's own host: lacks every layer, takes what it is sent."""

    async def HasLayers(self, request: Any, context: Any) -> pb.HasLayersResponse:
        return pb.HasLayersResponse(missing=list(request.digests), admits=False)

    async def PutLayer(self, request_iterator: Any, context: Any) -> pb.PutLayerResponse:
        async for _m in request_iterator:
            pass
        return pb.PutLayerResponse(installed=True)

    async def SetWarmPool(self, request: Any, context: Any) -> pb.SetWarmPoolResponse:
        return pb.SetWarmPoolResponse(
            pools=[pb.WarmPoolStatus(template=request.template, target=request.size)]
        )

    async def ListSandboxes(self, request: Any, context: Any) -> pb.ListSandboxesResponse:
        return pb.ListSandboxesResponse(reports_creating=True)


async def _host(cp: InProcessCP, owner: User, data_dir: Path) -> tuple[str, Any]:
    host_id, token = await owner.create_host("byoc", owner.team_id)
    server, _ = await serve_fake_agent(Lacking(), cp.url, token, data_dir)  # type: ignore[abstract]
    creds = load_credentials(data_dir)
    assert creds is not None
    r = await cp.http.post(
        f"/v1/hosts/{host_id}/heartbeat", json={"runtimes": ["runc"]}, headers={"X-Host-Token": creds.jwt}
    )
    assert r.status_code == 204, r.text
    return host_id, server


async def _push(victim: User, host_id: str, size: int) -> float:
    """The victim's warm-pool set (its layer pushed to its host from the store): seconds."""
    await victim.cp.sql(
        "DELETE FROM host_layers WHERE host_id = :h", h=ids.parse_id(ids.Kind.HOST, host_id)
    )  # the host lacks it again: the next set pushes it again
    t0 = time.monotonic()
    r = await victim.req("PUT", f"/v1/hosts/{host_id}/warm-pools/big", json={"size": size})
    assert r.status_code == 200, r.text
    return time.monotonic() - t0


def _reading(cp: InProcessCP) -> int:
    """Imports under way (each has its work directory in the CP's build spool)."""
    spool = cp.settings.home / "build-spool"
    return sum(1 for p in spool.glob(".import-*")) if spool.is_dir() else 0


async def test_tenants_imports_leave_the_default_executor_to_other_teams(
    cp: InProcessCP, tmp_path: Path
) -> None:
    admin, victim = await cp.signup(admin=True), await cp.signup()
    await set_byoc(admin, victim.team_id)
    attackers = [await cp.signup() for _ in range(TEAMS)]
    await _template(cp, victim, "big", LAYER_MB)
    host_id, server = await _host(cp, victim, tmp_path / "h")
    image = await asyncio.to_thread(_image)
    answered: list[float] = []
    try:
        alone = await _push(victim, host_id, 1)

        async def attack(a: User, n: int) -> int:
            r = await a.req(
                "POST", "/v1/templates/import", data={"name": f"big{n}"}, files={"image": ("i.tar", image)}
            )
            answered.append(time.monotonic())
            return r.status_code

        imports = [asyncio.create_task(attack(a, n)) for a in attackers for n in range(PER_TEAM)]
        deadline = time.monotonic() + 120
        while _reading(cp) < IMPORTS and time.monotonic() < deadline and not any(t.done() for t in imports):
            await asyncio.sleep(0.05)
        assert _reading(cp) == IMPORTS, _reading(cp)
        await asyncio.sleep(0.5)  # every read has started or is queued
        t0 = time.monotonic()
        during = await _push(victim, host_id, 2)
        victim_done = time.monotonic()
        meanwhile = sum(1 for t in answered if t0 <= t <= victim_done)
        # The attackers' clients leave: their reads stop (api/disconnect.py, session 24). Before,
        # every image was read to its end, ~80 s of the CP's CPU after the measurement.
        for t in imports:
            t.cancel()
        await asyncio.gather(*imports, return_exceptions=True)
        left = time.monotonic()
        while _reading(cp) and time.monotonic() < left + 20:
            await asyncio.sleep(0.1)
        print(
            f"{IMPORTS} imports by {TEAMS} teams ({len(image) // 1024} KiB each, {DEFAULT_THREADS} default"
            f" threads): the victim's push took {alone:.2f} s alone, {during:.2f} s during them;"
            f" {meanwhile} imports answered meanwhile; after the clients left, {_reading(cp)} reads"
            f" were left, {time.monotonic() - left:.2f} s later"
        )
        # Before: the push's first store read queued behind two queued reads, so three imports'
        # reads had ended first, and their answers' own executor calls came before the push's
        # 32 further reads (six answered meanwhile). Now the push answers beside the reads, two
        # at a time in the tenant executor: a pair of them may happen to end meanwhile.
        assert meanwhile <= 2, (during, meanwhile)
        assert _reading(cp) == 0  # every read stopped with its client (its work directory gone)
    finally:
        await server.stop(0)
        await cp.sql(
            "UPDATE hosts SET status = 'offline' WHERE id = :h", h=ids.parse_id(ids.Kind.HOST, host_id)
        )
