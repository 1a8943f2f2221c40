"""Session 10's hostile tenant: a tiny build context that makes the control plane write without
bound to its own disk.

COPY's staging layer (``services/template_context.staging_layer``) is written whole to the
CP's ``<home>/build-spool`` before the layer store, which alone checks
``WARREN_BUILD_MAX_LAYER_MB``, reads it. What it writes is what the context *claims*:

* a GNU sparse member (``tar --sparse``) claims any size in a header: a 10 KiB context whose
  file says 1 TiB had the CP write a terabyte of zeros (Python's tarfile fills the holes);
* a hard link costs one header, and each one is staged as a full copy of its target's bytes:
  a 1 MiB file and N links is N MiB.

Either fills the CP host's disk from one API call. Expected: the build is refused (at submit
or as a failed build) having written no more than about the layer limit to the CP's disk.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.harness.platform import Platform, running_platform
from tests.harness.tenant import Tenant, signup

pytestmark = pytest.mark.root

LAYER_MB = 64  # WARREN_BUILD_MAX_LAYER_MB here
CLAIMED_MB = 1024


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    async with running_platform(db_url, platform_dir, {"WARREN_BUILD_MAX_LAYER_MB": str(LAYER_MB)}) as p:
        yield p


@pytest.fixture(scope="module")
def mallory(platform: Platform) -> Tenant:
    return signup(platform.url, "mallory")


def written_by_cp(platform: Platform) -> int:
    """Bytes the CP's processes have written so far (``wchar``: files, the spool included)."""
    root = psutil.Process(platform.cp.pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.io_counters().write_chars
        except psutil.Error:
            continue
    return total


def sparse_context(tmp_path: Path) -> bytes:
    hole = tmp_path / "hole"
    with open(hole, "wb") as f:
        f.truncate(CLAIMED_MB << 20)
    out = tmp_path / "ctx.tar"
    subprocess.run(
        ["tar", "--sparse", "--format=gnu", "-C", str(tmp_path), "-cf", str(out), "hole"], check=True
    )
    data = out.read_bytes()
    assert len(data) < 64 << 10, len(data)  # the whole gigabyte fits in a few headers
    return data


def linked_context() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        blob = tarfile.TarInfo("d/blob")
        blob.size = 1 << 20
        t.addfile(blob, io.BytesIO(bytes(blob.size)))
        for i in range(4 * LAYER_MB):
            link = tarfile.TarInfo(f"d/l{i}")
            link.type, link.linkname = tarfile.LNKTYPE, "d/blob"
            t.addfile(link)
    return buf.getvalue()


def build(t: Tenant, context: bytes) -> tuple[int, str]:
    """Submit ``COPY d /dst`` (or ``COPY hole``) with ``context``; the build's end status."""
    name = f"ctx-{uuid.uuid4().hex[:8]}"
    spec = "FROM minimal\nCOPY . /dst\n"
    with t.client(600) as c:
        r = c.post("/v1/templates", data={"name": name, "spec": spec}, files={"context": ("c.tar", context)})
        if r.status_code != 202:
            return r.status_code, r.text
        build_id = r.json()["build_id"]
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            got = c.get(f"/v1/templates/{name}/builds/{build_id}").json()
            if got["status"] in ("ready", "failed"):
                return 202, str(got["status"])
            time.sleep(0.5)
    raise AssertionError(f"build {build_id} did not end")


def attack(platform: Platform, t: Tenant, context: bytes) -> None:
    before = written_by_cp(platform)
    status, outcome = build(t, context)
    wrote_mb = (written_by_cp(platform) - before) >> 20
    assert (status, outcome) == (202, "failed") or 400 <= status < 500, (status, outcome)
    assert wrote_mb <= 2 * LAYER_MB, f"a {len(context)} B context made the CP write {wrote_mb} MiB"


def test_a_sparse_member_does_not_make_the_cp_write_its_claimed_size(
    platform: Platform, mallory: Tenant, tmp_path: Path
) -> None:
    attack(platform, mallory, sparse_context(tmp_path))


def test_hard_links_do_not_multiply_what_the_cp_writes(platform: Platform, mallory: Tenant) -> None:
    attack(platform, mallory, linked_context())


def test_the_cp_still_answers(platform: Platform) -> None:
    assert httpx.get(platform.url + "/healthz", timeout=30).status_code == 200
