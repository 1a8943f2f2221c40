"""Session 26: a build context read in the control plane's own process.

As the attacker runs it (a tenant's key, ``POST /v1/templates`` with a context tar): the CP
indexed the context (every member's header parsed, every directory its names imply kept) and
wrote each COPY step's staging tar in its tenant threads, holding its process's GIL for as long
as the tenant's context made it: ~3 s of Python each for 100 000 entries, during which another
team's ``GET /v1/sandboxes`` (4 ms alone) took 9-18 ms at the median, 27-53 ms at p90 and up to
0.5 s during 4 and 8 such builds (now 7-8 ms, 13-16 ms, 0.1 s). The index also kept every prefix
of every name: a name of 1000 components is 1000 directories, ~20 MiB of strings for a 40 KiB
name, so a context of 5 MiB made the CP's own process take 2.4 GiB (and a larger one, its
host's memory).

Now both run in a child process (cp/services/context_child.py, as image reads do since session
25): niced, its address space bounded, in the team's turn. Asserted on outcomes, not speed: the
staging's CPU is charged to the CP's reaped children (before: none), and the ballooning context
fails its build with a clear error while the CP answers (before: the CP took the memory, and the
build went on to its COPY).
"""

from __future__ import annotations

import io
import os
import tarfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

FILES = 20_000  # ~0.4 CPU-s to index, ~0.5 to stage: the children's CPU, well above the bound
DEEP = "/".join(f"d{i}" for i in range(10))
BALLOON = (120, 1000, 40)  # entries of 1000 components of 40 bytes: ~2.5 GiB of prefixes, 5 MiB


@pytest.fixture(scope="module")
def mallory(platform: Platform) -> Tenant:
    return signup(platform.url, "mallory")


def _cpu_of(pid: int) -> tuple[float, float]:
    """A process's own CPU seconds and its reaped children's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) / os.sysconf("SC_CLK_TCK") for f in fields[11:15])
    return utime + stime, cutime + cstime


def _tar(members: list[tarfile.TarInfo]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for m in members:
            t.addfile(m)
    return buf.getvalue()


def many_files_then_a_fifo() -> bytes:
    """FILES empty files deep under d0/, then a FIFO that sorts after them: the COPY stages them
    all, then refuses the FIFO (the build fails: no sandbox needed)."""
    fifo = tarfile.TarInfo("d0/~fifo")
    fifo.type = tarfile.FIFOTYPE
    return _tar([*(tarfile.TarInfo(f"{DEEP}/{i:07d}") for i in range(FILES)), fifo])


def ballooning_names() -> bytes:
    entries, depth, width = BALLOON
    part = "a" * width + "/"
    return _tar([tarfile.TarInfo(f"x{i}/{part * depth}f") for i in range(entries)])


def build(t: Tenant, spec: str, context: bytes) -> dict[str, object]:
    """Submit the build; its row once it has ended."""
    name = f"ctx-{uuid.uuid4().hex[:8]}"
    with t.client(300) as c:
        r = c.post("/v1/templates", data={"name": name, "spec": spec}, files={"context": ("c.tar", context)})
        assert r.status_code == 202, r.text
        build_id = r.json()["build_id"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            got: dict[str, object] = c.get(f"/v1/templates/{name}/builds/{build_id}").json()
            if got["status"] in ("ready", "failed"):
                return got
            time.sleep(0.2)
    raise AssertionError(f"build {build_id} did not end")


def test_a_copy_is_staged_outside_the_control_planes_process(platform: Platform, mallory: Tenant) -> None:
    context = many_files_then_a_fifo()
    own, children = _cpu_of(platform.cp.pid)
    got = build(mallory, "FROM minimal\nCOPY d0 /x\n", context)
    own_after, children_after = _cpu_of(platform.cp.pid)
    assert got["status"] == "failed", got
    assert got["error"] == "step 2: line 2: COPY d0/~fifo: only files, directories and symlinks are copied", (
        got
    )
    # The index and the staging (~1.3 CPU-s here), charged to the CP's reaped children: they
    # ran in child processes, not in the CP's threads, which held its GIL (before: 0 here).
    spent = (round(own_after - own, 2), round(children_after - children, 2))
    assert children_after - children >= 0.3, f"(CP's own CPU-s, its children's): {spent}"
    spool = Path(platform.cp.home) / "build-spool"
    assert not list(spool.glob(".staging-*")) + list(spool.glob(".copy-*")), "left in the spool"


def test_a_context_whose_index_balloons_fails_its_build_alone(platform: Platform, mallory: Tenant) -> None:
    context = ballooning_names()
    assert len(context) < 8 << 20
    got = build(mallory, "FROM minimal\nCOPY nothing /x\n", context)
    assert got["status"] == "failed", got
    # Before: the CP's own process took ~2.5 GiB for the index, then the COPY was "not found".
    assert got["error"] == "the build context takes more memory to read than a build may use", got
    assert httpx.get(platform.url + "/healthz", timeout=30).status_code == 200
