"""Frozen containers that die (agent/container_exits.py): a sandbox paused in memory, and a
warm-pool member waiting in its pool, whose container the host ends.

Two ways the host ends one: the OOM killer kills and thaws its victim (``kill`` + thaw here, by
the same cgroup file), and a ``kill -9`` from the host leaves the frozen process in the freezer
with its SIGKILL pending. Either is noticed by the agent's watch: the metrics loop's fallback
check is pushed out of the test's reach (once an hour), so only the watch can notice.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.leaks import wait_no_leaks
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

# Generous: the pool's refills build one sandbox at a time on a loaded machine.
DEADLINE_S = 240.0
POOL = 2


def _wait(what: str, cond: Callable[[], bool], timeout: float = DEADLINE_S, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        seen = "".join(line for line in log.open() if "pool_member" in line or "warm_" in line) if log else ""
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{seen}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def pooled(agent_root: Path) -> Iterator[AgentProcess]:
    env = {"WARREN_AGENT_WARM_POOL": f"minimal={POOL}", "WARREN_AGENT_METRICS_INTERVAL": "3600"}
    a = AgentProcess.standalone(agent_root / "frozen", env=env).start()
    try:
        yield a
    finally:
        a.finish()


def _ready(agent: AgentProcess) -> int:
    r = agent.stub.SetWarmPool(pb.SetWarmPoolRequest(template="no-such-pool", size=0), timeout=60)
    return sum(p.ready for p in r.pools if p.template == "minimal")


def _record(d: Path) -> dict[str, Any]:
    return json.loads((d / "record.json").read_text())  # type: ignore[no-any-return]


def _members(agent: AgentProcess) -> dict[str, dict[str, Any]]:
    """Members' ids and records (those far enough built to have one)."""
    return {d.name: _record(d) for d in (agent.data_dir / "warm").iterdir() if (d / "record.json").exists()}


def _container(agent: AgentProcess, sb_id: str) -> str:
    """The sandbox's container id: a claimed member's keeps its ``wp-`` name."""
    claimed = agent.data_dir / "container-ids" / sb_id
    return claimed.read_text().strip() if claimed.exists() else sb_id


def _listed(agent: AgentProcess) -> set[str]:
    return {s.sandbox_id for s in agent.stub.ListSandboxes(pb.ListSandboxesRequest()).sandboxes}


def _freezer_state(pid: int) -> Path:
    """The freezer cgroup (v1) file of ``pid``'s container."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "freezer" in controllers.split(","):
            return Path("/sys/fs/cgroup/freezer") / path.lstrip("/") / "freezer.state"
    raise AssertionError(f"no freezer cgroup for {pid}")


def _end(pid: int, how: str) -> None:
    """End a frozen container's process from the host: ``kill`` (its SIGKILL waits for a thaw)
    or ``oom_kill`` (killed and thawed, as the OOM killer does)."""
    state = _freezer_state(pid)
    assert state.read_text().strip() == "FROZEN"
    os.kill(pid, signal.SIGKILL)
    if how == "oom_kill":
        state.write_text("THAWED")


@pytest.mark.parametrize("how", ["kill", "oom_kill"])
def test_a_memory_paused_sandbox_whose_container_dies_is_noticed(pooled: AgentProcess, how: str) -> None:
    r = pooled.create(memory_mb=128)
    sb = r.sandbox_id
    neighbour = pooled.create(memory_mb=128)
    try:
        for s in (sb, neighbour.sandbox_id):
            pooled.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=s), timeout=60)
        container = _container(pooled, sb)
        _end(int(_record(pooled.data_dir / "sandboxes" / sb)["pid"]), how)
        killed = time.monotonic()

        # Noticed while still paused (no resume, no metrics pass): the sandbox leaves the list
        # (the CP then records it stopped) and nothing of it stays.
        _wait("the dead sandbox to leave the list", lambda: sb not in _listed(pooled))
        print(f"{how}: out of the list {time.monotonic() - killed:.2f} s after the kill")  # seen with -s
        assert f"event=sandbox_died sandbox_id={sb}" in pooled.log_path.read_text()
        assert wait_no_leaks(pooled, sb, r.host_ip) == []
        assert wait_no_leaks(pooled, container, r.host_ip) == []
        # A resume is refused as for any sandbox that is not running (the CP's 409), at once.
        with pytest.raises(grpc.RpcError) as ei:
            pooled.stub.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=sb), timeout=60)
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION, ei.value.details()  # type: ignore[attr-defined]
        assert f"sandbox {sb} is not running: its container exited" in ei.value.details()  # type: ignore[attr-defined]

        # The neighbour, paused beside it, resumes and runs.
        pooled.stub.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=neighbour.sandbox_id), timeout=60)
        assert pooled.exec(neighbour.sandbox_id, "echo", "alive").stdout == b"alive\n"
    finally:
        for s in (sb, neighbour.sandbox_id):
            try:
                pooled.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=s), timeout=60)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["kill", "oom_kill"])
def test_a_dead_pool_member_is_replaced_and_never_handed_out(pooled: AgentProcess, how: str) -> None:
    _wait(f"a pool of {POOL}", lambda: _ready(pooled) == POOL)
    dead = _members(pooled)
    assert len(dead) == POOL
    for rec in dead.values():
        _end(int(rec["pid"]), how)
    # At once, before or after the agent has noticed: the create gets a live sandbox either way
    # (a replacement member, or a cold build), never a dead member.
    r = pooled.create(memory_mb=128)
    try:
        assert pooled.exec(r.sandbox_id, "echo", "alive").stdout == b"alive\n"
        assert _container(pooled, r.sandbox_id) not in dead
        # Killed frozen: still there, its SIGKILL pending. The OOM killer's way: gone, or dying;
        # or, taken by the create in the moment between its signal and its exit's start, its
        # claim failed (and the create went cold).
        why = "killed" if how == "kill" else "(exited|killed)"
        for member, rec in dead.items():
            died = (
                f"event=pool_member_died template=minimal member={member} pid={rec['pid']} why={why}\n"
                f"|event=warm_claim_failed sandbox_id={r.sandbox_id} member={member} "
            )
            _wait(
                f"{member}'s death logged",
                lambda d=died: re.search(d, pooled.log_path.read_text()) is not None,
                log=pooled.log_path,
            )
        # The pool is refilled to its size with new members, and the dead leave nothing.
        _wait(
            f"a pool of {POOL} again",
            lambda: _ready(pooled) == POOL and not set(_members(pooled)) & set(dead),
        )
        for member, rec in dead.items():
            assert wait_no_leaks(pooled, member, rec["host_ip"]) == [], member
    finally:
        pooled.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id), timeout=60)
