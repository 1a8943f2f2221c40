"""Cancelling a template build (POST /v1/templates/{name}/builds/{build_id}/cancel) on a live
platform: a build running a long RUN step is cancelled, ends failed with the cancelled error,
its step's process is gone from the build host and the team's build slot is free again; a
build cancelled while queued never runs; another team's cancel is 404, an ended build's 409."""

from __future__ import annotations

import asyncio
import os
import types
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from tests.harness.platform import Platform
from tests.harness.tenant import signup
from tests.integration.cp.api.test_template_builds import _name
from warren import ids
from warren.cp.db.engine import to_async_url
from warren.cp.services.template_build_run import run_build
from warren.cp.services.template_builds import CANCELLED, BuildRequest
from warren.sdk import AsyncTemplate, ConflictError, Template

# On the worker's shared platform: its builds are its own team's.
pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

# A heartbeat (WARREN_BUILD_HEARTBEAT_S, 5 s) and the RPC's cancel: seconds. Slack for a loaded CI.
ENDS_WITHIN_S = 60


def _processes_with(marker: str) -> list[int]:
    """The host's processes whose command line holds ``marker`` (a build step's shell)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.fixture
async def http(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.headers, timeout=120) as client:
        yield client


async def _get(http: httpx.AsyncClient, name: str, build_id: str) -> dict[str, Any]:
    r = await http.get(f"/v1/templates/{name}/builds/{build_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _until(what: str, check: Any) -> None:
    for _ in range(ENDS_WITHIN_S * 10):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {ENDS_WITHIN_S} s")


async def test_a_running_build_is_cancelled_and_its_step_stops(
    http: httpx.AsyncClient, platform: Platform
) -> None:
    name, marker = _name("cancel"), f"mark{uuid.uuid4().hex[:12]}"
    spec = f"FROM minimal\nRUN echo started; sleep 300; echo {marker}\n"
    r = await http.post("/v1/templates", json={"name": name, "spec": spec})
    assert r.status_code == 202, r.text
    build_id = r.json()["build_id"]

    async def step_runs() -> bool:
        log = (await http.get(f"/v1/templates/{name}/builds/{build_id}/log")).json()["data"]
        return "started" in log and bool(_processes_with(marker))

    await _until("the step starts", step_runs)
    # The team's other build slot (WARREN_BUILD_MAX_PER_TEAM: 2) taken: the team is at its bound.
    team, other = ids.parse_id(ids.Kind.TEAM, platform.team_id), ids.new_uuid()
    await platform.sql(
        "INSERT INTO template_builds (id, team_id, name, spec, status, heartbeat_at) "
        "VALUES (:id, :team, :name, 'FROM minimal', 'running', now())",
        id=other, team=team, name=_name("busy"),
    )  # fmt: skip
    try:
        r = await http.post("/v1/templates", json={"name": _name("next"), "spec": "FROM minimal\n"})
        assert r.status_code == 429, r.text

        # Another team cannot cancel it (nor see it).
        stranger = await asyncio.to_thread(signup, platform.url, "stranger")
        r = await asyncio.to_thread(stranger.w, "POST", f"/v1/templates/{name}/builds/{build_id}/cancel")
        assert r.status_code == 404, r.text

        async with await AsyncTemplate.get_build(name, build_id, **platform.sdk()) as build:
            info = await build.cancel()
        assert info.status == "failed" and info.error == CANCELLED, info

        async def step_gone() -> bool:
            return not _processes_with(marker)

        await _until("the step's process ends", step_gone)
        # It was stopped by the cancel itself, on the process that runs it, not by a heartbeat.
        build_uuid = ids.parse_id(ids.Kind.BUILD, build_id)
        cp_log = platform.cp.log_path.read_text(errors="replace")
        assert f"event=build_cancelled_here build_id={build_uuid}" in cp_log
        # The build's work ended too: its failure path kept the cancelled error.
        await asyncio.sleep(1)
        final = await _get(http, name, build_id)
        assert final["status"] == "failed" and final["error"] == CANCELLED and final["finished_at"], final

        # The slot is free: the team builds again.
        r = await http.post("/v1/templates", json={"name": _name("next"), "spec": "FROM minimal\n"})
        assert r.status_code == 202, r.text
    finally:
        await platform.sql("DELETE FROM template_builds WHERE id = :id", id=other)

    # An ended build: 409, through the API and the SDK.
    r = await http.post(f"/v1/templates/{name}/builds/{build_id}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "build_finished", r.text
    with pytest.raises(ConflictError) as e:
        await asyncio.to_thread(_cancel_sync, name, build_id, platform.sdk())
    assert e.value.code == "build_finished"


def _cancel_sync(name: str, build_id: str, opts: dict[str, Any]) -> None:
    with Template.get_build(name, build_id, **opts) as build:
        build.cancel()


async def test_a_build_cancelled_while_queued_never_runs(http: httpx.AsyncClient, platform: Platform) -> None:
    """A queued build cancelled before its task starts (the window between its admission and
    its task's first write): the task finds it ended and returns, running and logging nothing."""
    team, build_id, name = ids.parse_id(ids.Kind.TEAM, platform.team_id), ids.new_uuid(), _name("queued")
    spec = "FROM minimal\nRUN echo ran\n"
    await platform.sql(
        "INSERT INTO template_builds (id, team_id, name, spec, status, heartbeat_at) "
        "VALUES (:id, :team, :name, :spec, 'queued', now())",
        id=build_id, team=team, name=name, spec=spec,
    )  # fmt: skip
    ref = ids.format_id(ids.Kind.BUILD, build_id)
    r = await http.post(f"/v1/templates/{name}/builds/{ref}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "failed" and r.json()["error"] == CANCELLED, r.text

    # The task that would have run it (on whichever replica admitted it): no host, no store.
    engine = create_async_engine(to_async_url(platform.cp.db_url))
    settings = types.SimpleNamespace(build_max_log_mb=1, build_heartbeat_s=5.0, build_timeout_s=30)
    runner = types.SimpleNamespace(
        engine=engine, settings=settings, pool=None, scheduler=None, store=None, writers={}
    )
    try:
        body = BuildRequest(name=name, spec=spec)
        await asyncio.wait_for(run_build(cast(Any, runner), build_id, team, body, None), 30)
    finally:
        await engine.dispose()
    final = await _get(http, name, ref)
    assert final["error"] == CANCELLED and final["started_at"] is None and final["log_bytes"] == 0, final
    rows = await platform.sql("SELECT count(*) FROM template_build_logs WHERE build_id = :id", id=build_id)
    assert rows[0][0] == 0
