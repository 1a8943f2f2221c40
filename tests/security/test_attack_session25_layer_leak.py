"""Session 25: a build cancelled while its step's layer streamed left that layer on the host.

A build step that ends well exports the sandbox's writable layer; the agent streams the tar to
the CP (which puts it in the template store, counted in the team's store quota, and records it
on the host) while it installs the same tar in its own layer cache. A cancel in that window
(``POST /v1/templates/{name}/builds/{id}/cancel``, or the build's time limit) stopped the CP's
reading, but the agent's install went on and its layer stayed: in no store, on no team's quota,
recorded nowhere, on the host's disk until the layer collector noticed it and its grace
(``WARREN_LAYER_GC_GRACE_S``, an hour) ran out. Before: each cancelled build of an 80 MiB layer
left 160 MiB on the host (6 cancels at 0.4-1.3 s after the step's last line: 4 left 640 MiB);
a build's layer is up to ``WARREN_BUILD_MAX_LAYER_MB`` (4 GiB) and a team cancels as fast as
it builds.

As the attacker runs it: a build whose one step writes ``LAYER_MB`` of random bytes, cancelled
while its layer streams (the test watches the agent's cache for the install starting, which the
attacker reaches by trying delays). A snapshot past the team's snapshot quota did the same with
no timing at all: the CP stops reading at the quota (429), the agent's install of the whole
layer went on. Fixed (agent/layer_cache.py ``stream_and_install``, closed by build_step.py and
snapshot_export.py): a stream its reader left removes the layer once its install ends. A build
that is not cancelled keeps its layer on the host.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import signup

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

LAYER_MB = 160  # streams for a moment: the cancel lands while it does
SETTLE_S = 60  # the install ends and its removal follows (seconds alone; slack for a loaded CI)


def _layers_dir(platform: Platform) -> Path:
    return platform.agents[0].data_dir / "layers"


def _layer_dirs(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if len(p.name) == 64 and p.is_dir()}


def _installing(root: Path, before: set[str]) -> bool:
    """An install's work directory (``.tmp-…``) is there: the layer streams."""
    return any(p.name.startswith(".tmp-") and p.is_dir() and p.name not in before for p in root.iterdir())


def _settled_leftovers(platform: Platform, root: Path, before: set[str]) -> set[str]:
    """The new layers on the host in no store, once installs have ended (or SETTLE_S passed)."""
    left: set[str] = set()
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        left = (_layer_dirs(root) - before) - _stored(platform)
        if not left and not _installing(root, before):
            break
        time.sleep(0.2)
    return left


def _stored(platform: Platform) -> set[str]:
    rows = asyncio.run(platform.sql("SELECT digest FROM layers"))
    return {r[0] for r in rows}


def _build(c: httpx.Client, spec: str) -> tuple[str, str]:
    name = f"s25leak-{uuid.uuid4().hex[:8]}"
    r = c.post("/v1/templates", json={"name": name, "spec": spec})
    assert r.status_code == 202, r.text
    return name, r.json()["build_id"]


def _spec() -> str:
    return f"FROM minimal\nRUN head -c {LAYER_MB}M /dev/urandom > /big-{uuid.uuid4().hex[:8]}\n"


def test_a_build_cancelled_while_its_layer_streams_leaves_no_layer_on_the_host(platform: Platform) -> None:
    mallory = signup(platform.url, "mallory-s25leak")
    root = _layers_dir(platform)
    before = _layer_dirs(root) | {p.name for p in root.iterdir()}
    with httpx.Client(base_url=platform.url, headers={"X-API-Key": mallory.api_key}, timeout=60) as c:
        name, build_id = _build(c, _spec())
        deadline = time.monotonic() + 120
        while not _installing(root, before):
            assert time.monotonic() < deadline, "the step's layer never started to install"
            time.sleep(0.005)
        r = c.post(f"/v1/templates/{name}/builds/{build_id}/cancel")
        # 200 while it streams; a 409 (it ended first, on a very slow machine) proves nothing
        # but must not leave a layer either.
        assert r.status_code in (200, 409), r.text

    # Whatever the install made is removed once it ends; nothing recorded it anywhere.
    left = _settled_leftovers(platform, root, before)
    assert not left, f"layers left on the host by the cancelled build, in no store: {sorted(left)}"


def test_a_snapshot_past_the_quota_leaves_no_layer_on_the_host(platform: Platform) -> None:
    """The CP stops reading the export at what the team's snapshot quota leaves (429)."""
    mallory = signup(platform.url, "mallory-s25snap")
    with httpx.Client(base_url=platform.url, headers=platform.user_headers, timeout=60) as admin:
        r = admin.put(f"/v1/admin/teams/{mallory.team_id}/quotas", json={"snapshot_mb": 4})
        assert r.status_code == 200, r.text
    sid = mallory.create(memory_mb=256)
    mallory.sh(sid, f"head -c {LAYER_MB // 4}M /dev/urandom > /big")
    root = _layers_dir(platform)
    before = _layer_dirs(root) | {p.name for p in root.iterdir()}
    r = mallory.w("POST", "/v1/snapshots", json={"sandbox_id": sid, "name": "s25-over"})
    assert r.status_code == 429, r.text
    left = _settled_leftovers(platform, root, before)
    assert not left, f"layers left on the host by the refused snapshot, in no store: {sorted(left)}"


def test_a_build_that_ends_keeps_its_layer_on_the_host(platform: Platform) -> None:
    """The removal is only for a stream its reader left: a finished build's layer stays installed
    (its template's sandboxes start there without a fetch)."""
    tenant = signup(platform.url, "builder-s25leak")
    root = _layers_dir(platform)
    with httpx.Client(base_url=platform.url, headers={"X-API-Key": tenant.api_key}, timeout=60) as c:
        name, build_id = _build(c, "FROM minimal\nRUN echo s25 > /s25\n")
        deadline = time.monotonic() + 120
        url = f"/v1/templates/{name}/builds/{build_id}"
        while (info := c.get(url).json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, info
            time.sleep(0.2)
        assert info["status"] == "ready", info
        layers = c.get(f"/v1/templates/{name}").json()
    time.sleep(1)  # a removal, were one wrongly scheduled, would have run
    digests = set(layers["versions"][0]["layers"])  # newest first: the build's version
    assert digests, layers
    assert digests <= _layer_dirs(root), layers
