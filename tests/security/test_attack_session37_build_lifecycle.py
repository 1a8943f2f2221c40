"""Session 37: a hostile tenant against the template build lifecycle (cancels, deletes, leftovers).

The tenant's moves are the public API with its own key or JWT: submit a build, cancel it, delete
its template, delete its team, at each phase of the build; the step's command forks, ignores
SIGTERM, writes a big layer. Afterwards nothing of the build may be left on the host (step
sandboxes, mounts, cgroups, network slots, processes, temporary files) or in the database (a
build still ``running``, a reservation, a template version of a deleted team), and the team's
build slot and the host's room must be free again (a next build and a next create work).

The host's build room here is one step (a step reserves every core, no CPU overcommit), as in
``test_attack_session25_cancel_capacity.py``.

Found (failing until fixed):
- ``test_deleting_the_team_mid_build_...``: a team delete does not touch its running builds. The
  step runs to its end holding its host room (nobody can cancel it: the team's key and JWT are
  refused), and the build then writes a template version for the deleted team: a row no one can
  delete, whose layers the collector keeps for ever (``team_deletion.py`` deletes ``templates``
  rows only; ``template_build_run.finish`` does not look at the team).
Fixed: the delete cancels the team's builds (on whichever replica runs them) and a finish
checks, under the team row's lock, that its team is still live.
Found here, fixed in session 38 (migration 0024): builds waiting for a host's room were not
queued (``BuildHost._reserve`` polled with a backoff up to 5 s), so a team that resubmits the
moment its build ends took the room each time it was freed, and another team's waiting build
could fail ``no_capacity`` after its whole wait while the room was freed and retaken 3-4 times
(``test_a_team_resubmitting_at_once_does_not_take_every_freed_room``).
Held (regression tests kept): cancels at every phase (a SIGTERM-ignoring fork tree, a big
layer's export and stream, the final start check), steps that fill their disk or memory or leave
orphans. Held and not kept (each ran 11-15 s; sessions 24-25 keep cancel tests): a cancel
through a COPY's staging, store write and push; a storm of immediate cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.platform import Platform, running_platform
from tests.harness.tenant import Tenant, signup
from warren import ids

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]

CORES = os.cpu_count() or 2
ENV = {
    "WARREN_BUILD_VCPUS": str(CORES),
    "WARREN_OVERCOMMIT_CPU": "1",
    "WARREN_BUILD_MEMORY_MB": "256",
    "WARREN_BUILD_HEARTBEAT_S": "1",
    # Long enough for a fair queue's wait (two steps ahead); a starved build's wait without one
    # outlasted it (the hog's steps started one after another while it waited).
    "WARREN_BUILD_CAPACITY_WAIT_S": "30",
    "WARREN_BUILD_DISK_MB": "400",
    "WARREN_BUILD_MAX_LAYER_MB": "100",
}


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    async with running_platform(db_url, platform_dir, ENV) as p:
        yield p


def _submit(t: Tenant, name: str, spec: str) -> str:
    r = t.w("POST", "/v1/templates", {"name": name, "spec": spec})
    assert r.status_code == 202, r.text
    return str(r.json()["build_id"])


def _build(t: Tenant, name: str, bid: str) -> dict[str, Any]:
    return dict(t.w("GET", f"/v1/templates/{name}/builds/{bid}").json())


def _log(t: Tenant, name: str, bid: str) -> str:
    r = t.w("GET", f"/v1/templates/{name}/builds/{bid}/log")
    return str(r.json().get("data", "")) if r.status_code == 200 else ""


def _wait_log(t: Tenant, name: str, bid: str, words: tuple[str, ...], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = _log(t, name, bid)
        if any(w in log for w in words):
            return log
        assert time.monotonic() < deadline, f"none of {words} in the log of {name}: {log[-1500:]}"
        time.sleep(0.1)


def _wait_ended(t: Tenant, name: str, bid: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (b := _build(t, name, bid))["status"] not in ("ready", "failed"):
        assert time.monotonic() < deadline, f"build {name} did not end: {b}"
        time.sleep(0.2)
    return b


def _live(marker: str) -> list[int]:
    """Processes whose command line carries ``marker`` (a build step's own)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if marker.encode() in cmd and b"pytest" not in cmd:
                found.append(int(pid))
    return found


def _live_steps(marker: str) -> set[str]:
    """The step sandboxes (by their cgroup's name) that a process carrying ``marker`` is in."""
    steps = set()
    for pid in _live(marker):
        with contextlib.suppress(OSError):
            steps.update(re.findall(r"step-[0-9a-z]+", Path(f"/proc/{pid}/cgroup").read_text()))
    return steps


def _sql(p: Platform, statement: str, **params: Any) -> Any:
    return asyncio.run(p.sql(statement, **params))


def _my_steps(p: Platform) -> set[str]:
    """The build steps' sandbox ids this module's agent started (other agents on the machine run
    steps of their own)."""
    text = p.agents[0].log_path.read_text(errors="replace")
    return set(re.findall(r"event=build_step_start build_id=\S+ sandbox_id=(step-[\w-]+)", text))


def _host_leftovers(p: Platform) -> list[str]:
    """What build steps could leave on the host: their sandboxes' directories, mounts, cgroups,
    network-slot claims, processes, runtime state, temporary layer and export files."""
    found: list[str] = []
    data = p.agents[0].data_dir
    steps = _my_steps(p)
    assert steps, "no build step seen in the agent's log"
    for d in ("sandboxes", "runc", "crun"):
        found += [f"path {x}" for x in glob.glob(str(data / d / "step-*"))]
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {line.split()[4]}" for line in f if str(data) in line and "step-" in line]
    found += [f"cgroup {d}" for d in glob.glob("/sys/fs/cgroup/*/warren/step-*") if Path(d).name in steps]
    for slot in glob.glob("/run/warren/netslots/*"):
        try:
            if any(sid in Path(slot).read_text() for sid in steps):
                found.append(f"slot {slot}")
        except OSError:
            pass
    found += [f"tmp {x}" for x in glob.glob(str(data / "layers" / ".tmp-*"))]
    found += [f"tmp {x}" for x in glob.glob(str(data / "layers" / ".del-*"))]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cg = Path(f"/proc/{pid}/cgroup").read_text()
            except OSError:
                continue
            if "step-" in cg and any(sid in cg for sid in steps):
                found.append(f"process {pid}")
    return found


def _wait_no_host_leftovers(p: Platform, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while (found := _host_leftovers(p)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def _spool(p: Platform) -> list[str]:
    return sorted(os.listdir(p.cp.home / "build-spool")) if (p.cp.home / "build-spool").exists() else []


def test_deleting_the_team_mid_build_leaves_no_template_and_stops_the_step(platform: Platform) -> None:
    """The owner deletes the team while its build's RUN step runs. Team deletion "stops the
    team's sandboxes, removes its templates", and its API keys stop working (so the build can
    no longer be cancelled by anyone). The build must not go on to write a template version for
    the deleted team (a row no one can delete, naming layers the collector must keep), and its
    step must not keep the host's room for the rest of its run."""
    mallory = signup(platform.url, "mallory")
    marker = f"mk{uuid.uuid4().hex[:10]}"
    step_s = 20
    name = "doomed"
    bid = _submit(
        mallory, name, f"FROM minimal\nRUN echo started; sleep {step_s}; echo {marker} > /f # {marker}\n"
    )
    _wait_log(mallory, name, bid, ("\nstarted",))  # its output: the step's header says "started" too
    assert _live(marker), "the step's command is not running"
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        r = c.delete(f"/v1/teams/{mallory.team_id}", headers={"Authorization": f"Bearer {mallory.token}"})
        assert r.status_code == 204, r.text
    deleted_at = time.monotonic()
    # Nobody can cancel it now: the team's key and JWT are refused.
    cancel = _cancel(mallory, name, bid).status_code
    build_uuid = ids.parse_id(ids.Kind.BUILD, bid, what="build_id")
    time.sleep(3)
    reserved = _sql(
        platform, "SELECT reserved_host_id IS NOT NULL FROM template_builds WHERE id = :i", i=build_uuid
    )
    # The step must go well before its own end.
    while _live(marker) and time.monotonic() - deleted_at < step_s + 60:
        time.sleep(0.2)
    step_lived = time.monotonic() - deleted_at
    deadline = time.monotonic() + 120
    while True:
        [(status, error)] = _sql(
            platform, "SELECT status, error FROM template_builds WHERE id = :i", i=build_uuid
        )
        if status not in ("queued", "running") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    versions = _sql(
        platform,
        "SELECT name, version, layers FROM templates WHERE team_id = :t",
        t=ids.parse_id(ids.Kind.TEAM, mallory.team_id, what="team_id"),
    )
    leftovers = _wait_no_host_leftovers(platform)
    assert not versions and step_lived < 10, (
        f"the deleted team's build step ran on {step_lived:.1f} s after the delete (its own end: "
        f"{step_s} s) and the build ended {status!r} {error!r}, writing these template versions "
        f"after the delete: {versions}; 3 s after the delete its host room was still reserved: "
        f"{reserved}; the team's own cancel was answered {cancel}; store objects now: "
        f"{len(_store_objects(platform))}"
    )
    assert status == "failed", (status, error)
    assert not leftovers, leftovers


def _store_objects(p: Platform) -> set[str]:
    root = p.cp.home / "store"
    return {
        Path(f).name.split(".")[0]
        for f in glob.glob(str(root / "**" / "*"), recursive=True)
        if os.path.isfile(f) and len(Path(f).name.split(".")[0]) == 64
    }


def _host_layer_dirs(p: Platform) -> set[str]:
    root = p.agents[0].data_dir / "layers"
    return {n for n in os.listdir(root) if len(n) == 64} if root.exists() else set()


def _consistency(p: Platform) -> list[str]:
    """Layers on the host or in the store that no index knows (the collector never sees them)."""
    indexed = {r[0] for r in _sql(p, "SELECT digest FROM layers")}
    on_host = {r[0] for r in _sql(p, "SELECT digest FROM host_layers")}
    found = [f"store object {d[:12]} not in layers" for d in _store_objects(p) - indexed]
    found += [f"host layer {d[:12]} not in host_layers" for d in _host_layer_dirs(p) - on_host]
    # (A failed row may keep its last reserved_host_id: a cancel that lands just after the
    # reservation's commit; warren_host_usage counts running rows only, so it holds no room.)
    rows = _sql(
        p,
        "SELECT id, status, error, reserved_host_id FROM template_builds "
        "WHERE status IN ('queued', 'running')",
    )
    found += [f"build row {r}" for r in rows]
    return found


HOSTILE = (
    "echo started-{m}; trap '' TERM HUP INT; "
    "for i in 1 2 3 4; do sh -c \"trap '' TERM HUP INT; while :; do sleep 1; done # {m}\" & done; "
    "while :; do sleep 1; done # {m}"
)
BIG = "head -c {mb}M /dev/urandom > /big-{m}; echo wrote-{m}"


def _cancel(t: Tenant, name: str, bid: str) -> httpx.Response:
    return t.w("POST", f"/v1/templates/{name}/builds/{bid}/cancel")


def test_cancels_at_every_phase_leave_nothing(platform: Platform) -> None:
    """Cancel a build whose step forks children that ignore SIGTERM, one whose step writes a big
    layer (cancelled at several points while it is exported and streamed), and one in its final
    start check; then nothing may be left, and the team builds and creates again."""
    eve = signup(platform.url, "eve")
    report: list[str] = []
    # 1. A RUN step that forks and ignores SIGTERM, cancelled mid-command.
    m = f"mk{uuid.uuid4().hex[:10]}"
    bid = _submit(eve, "fork", "FROM minimal\nRUN " + HOSTILE.format(m=m) + "\n")
    _wait_log(eve, "fork", bid, (f"started-{m}",))
    time.sleep(1)
    n_before = len(_live(m))
    live = _host_leftovers(platform)  # the check sees a live step: it can fail
    assert any(x.startswith("cgroup") for x in live) and any(x.startswith("process") for x in live), live
    started = time.monotonic()
    r = _cancel(eve, "fork", bid)
    assert r.status_code == 200, r.text
    answered = time.monotonic() - started
    b = _wait_ended(eve, "fork", bid)
    while _live(m) and time.monotonic() - started < 30:
        time.sleep(0.2)
    report.append(
        f"fork: {n_before} procs, cancel answered {answered:.1f}s, {b['status']}, "
        f"procs left after {time.monotonic() - started:.1f}s: {_live(m)}"
    )
    assert not _live(m), report
    assert b["status"] == "failed", b
    # 2. A big layer, cancelled at points after the command ended (export, stream, store).
    for i, delay in enumerate((0.0, 0.15, 0.3, 0.45, 0.6, 0.8)):
        m = f"mk{uuid.uuid4().hex[:10]}"
        name = f"big{i}"
        bid = _submit(eve, name, "FROM minimal\nRUN " + BIG.format(mb=80, m=m) + "\n")
        _wait_log(eve, name, bid, (f"wrote-{m}",))
        time.sleep(delay)
        r = _cancel(eve, name, bid)
        b = _wait_ended(eve, name, bid)
        report.append(f"{name} +{delay}s: cancel {r.status_code}, {b['status']} {b['error'][:60]!r}")
        found = _wait_no_host_leftovers(platform) + _consistency(platform)
        assert not found, (report, found)
    # 3. The final start check.
    m = f"mk{uuid.uuid4().hex[:10]}"
    bid = _submit(eve, "probe", f"FROM minimal\nRUN echo {m} > /m\n")
    _wait_log(eve, "probe", bid, ("Checking that the template starts",))
    r = _cancel(eve, "probe", bid)
    b = _wait_ended(eve, "probe", bid)
    report.append(f"probe: cancel {r.status_code}, {b['status']} {b['error'][:60]!r}")
    found = _wait_no_host_leftovers(platform) + _consistency(platform)
    assert not found, (report, found)
    # The team's slot and the host's room are free: a build and a create work.
    bid = _submit(eve, "after", f"FROM minimal\nRUN echo {uuid.uuid4().hex} > /x\n")
    b = _wait_ended(eve, "after", bid)
    assert b["status"] == "ready", (report, b)
    sid = eve.create(memory_mb=256)
    assert eve.w("DELETE", f"/v1/sandboxes/{sid}").status_code == 204
    print("\n".join(report))
    assert not _spool(platform), _spool(platform)


def test_steps_that_fill_their_disk_or_memory_leave_nothing(platform: Platform) -> None:
    """A step that fills its disk (its layer past WARREN_BUILD_MAX_LAYER_MB), one past its
    memory, one that forks a hundred sleepers and exits 0 leaving them: each build ends, and
    nothing is left on the host or in the indexes."""
    zoe = signup(platform.url, "zoe")
    report = []
    cases = {
        "disk": "dd if=/dev/zero of=/fill bs=1M 2>&1 | tail -1; df -m /; true",
        "mem": "python3 -c 'b = bytearray(1 << 30)'",
        "orphans": "for i in $(seq 100); do (trap '' TERM HUP; sleep 600 &) ; done; echo forked",
    }
    for name, cmd in cases.items():
        bid = _submit(zoe, name, f"FROM minimal\nRUN {cmd} # {uuid.uuid4().hex[:8]}\n")
        b = _wait_ended(zoe, name, bid)
        log = _log(zoe, name, bid)
        report.append(
            f"{name}: {b['status']} {b['error'][:100]!r} {[x for x in log.splitlines() if '--->' in x]}"
        )
        found = _wait_no_host_leftovers(platform) + _consistency(platform)
        assert not found, (report, found)
    print("\n".join(report))
    assert [r.split(":")[1].split()[0] for r in report] == ["failed", "failed", "ready"], report


def _step_starts(p: Platform, since: int) -> list[str]:
    """The build ids of the step starts in the agent's log after byte ``since``, in order."""
    with p.agents[0].log_path.open("rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return list(dict.fromkeys(re.findall(r"event=build_step_start build_id=(\S+)", text)))


def test_a_team_resubmitting_at_once_does_not_take_every_freed_room(platform: Platform) -> None:
    """The host's build room is one step. The hog keeps two builds going, each resubmitted the
    moment the last one ended, so one of its builds waits for the room while the other's step
    runs, and a new one asks for it the moment it is freed. The victim's one build comes while a
    hog build waits. It must get the room in its turn, after that hog build (at most two hog
    steps start while it waits), not after every room the hog's builds grab, and not fail
    ``no_capacity``."""
    hog, victim = signup(platform.url, "hog"), signup(platform.url, "victim")
    stop, counter, errors = threading.Event(), itertools.count(), list[str]()
    inflight: dict[str, str] = {}

    def resubmit() -> None:
        while not stop.is_set():
            n = next(counter)  # a new command each time: no build cache hit, a real step
            name = f"hog{n}"
            try:
                inflight[name] = _submit(hog, name, f"FROM minimal\nRUN sleep 3; echo {n}\n")
                _wait_ended(hog, name, inflight[name])
            except AssertionError as e:
                errors.append(str(e))
            inflight.pop(name, None)

    def a_hog_build_waits() -> bool:
        return any("Waiting for room" in _log(hog, name, bid) for name, bid in list(inflight.items()))

    loops = [threading.Thread(target=resubmit, daemon=True) for _ in range(2)]
    for t in loops:
        t.start()
    try:
        deadline = time.monotonic() + 90
        while not a_hog_build_waits():
            assert time.monotonic() < deadline and not errors, f"no hog build waits: {errors}"
            time.sleep(0.1)
        offset = platform.agents[0].log_path.stat().st_size
        bid = _submit(victim, "victim", "FROM minimal\nRUN echo victim\n")
        b = _wait_ended(victim, "victim", bid)
        log = _log(victim, "victim", bid)
    finally:
        stop.set()
        for t in loops:
            t.join(timeout=120)
    assert not errors, errors
    assert b["status"] == "ready", f"the victim's build did not get the room: {b}\n{log[-1500:]}"
    starts = _step_starts(platform, offset)
    hog_first = starts[: starts.index(bid)] if bid in starts else starts
    assert len(hog_first) <= 2, (
        f"{len(hog_first)} hog steps took the room while the victim waited: {log[-800:]}"
    )
