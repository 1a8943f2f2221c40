"""The OCI spawner (agent/runtime/oci_spawner.py, driven by oci_spawn.py): the runtime's commands
run by a forked child of a small stdlib process, with proc.run's contract (stderr in errors,
timeouts and cancellation kill the command and what it started), crun's mount namespace without
the hybrid cgroup2 mount, the sandbox's RLIMIT_NOFILE; and the agent's default runtime (crun
where it works, runc otherwise), with sandboxes of either re-adopted after a restart."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from importlib.util import cache_from_source
from pathlib import Path

import pytest

import warren.guest
from tests.harness.agent import AgentProcess
from tests.harness.leaks import wait_no_leaks
from warren.agent.proc import CommandError
from warren.agent.runtime import oci_spawn
from warren.agent.runtime.oci import HYBRID_CGROUP2
from warren.agent.runtime.select import choose_default
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root
HYBRID = os.path.ismount(HYBRID_CGROUP2)


@pytest.fixture
async def spawner() -> AsyncIterator[None]:
    yield
    await oci_spawn.stop_spawner()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def _wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_output_exit_status_and_stderr_in_the_error(spawner: None) -> None:
    res = await oci_spawn.run("sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (res.returncode, res.stdout, res.stderr) == (3, "out\n", "err\n")
    with pytest.raises(CommandError) as e:
        await oci_spawn.run("sh", "-c", "echo why it failed >&2; exit 4")
    assert e.value.returncode == 4 and e.value.stderr == "why it failed"
    with pytest.raises(CommandError) as e:
        await oci_spawn.run("/nonexistent/warren-runtime", "run")
    assert e.value.returncode == 127 and "exec" in e.value.stderr
    # Answers come as commands finish: a slow one holds no one else's.
    slow = asyncio.create_task(oci_spawn.run("sleep", "2"))
    assert (await oci_spawn.run("echo", "quick")).stdout == "quick\n"
    assert not slow.done()
    await slow


async def test_a_timeout_kills_the_command_and_what_it_started(spawner: None, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(CommandError) as e:
        await oci_spawn.run("sh", "-c", f"sleep 120 & echo $! > {pid_file}; wait", timeout=1)
    assert e.value.returncode == -9 and "timed out" in e.value.stderr
    assert await _wait_gone(int(pid_file.read_text()))


async def test_a_cancelled_call_kills_its_command(spawner: None, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    task = asyncio.create_task(oci_spawn.run("sh", "-c", f"echo $$ > {pid_file}; exec sleep 120"))
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Waited for before the cancellation went on: gone by now, not just signalled.
    assert _gone(int(pid_file.read_text()))
    assert (await oci_spawn.run("true")).returncode == 0  # the spawner serves on


async def test_its_child_sees_no_cgroup2_and_runs_under_the_limit(spawner: None) -> None:
    # What crun looks at (mountinfo, statfs): no cgroup2 there in the child's own mount namespace
    # (moved away); the agent's namespace keeps it.
    where = HYBRID_CGROUP2
    script = f"grep -c ' {where} .* - cgroup2 ' /proc/self/mountinfo; ulimit -n; stat -f -c %T {where}"
    hidden = await oci_spawn.run("sh", "-c", script, check=False, hide=str(HYBRID_CGROUP2), nofile=777)
    assert hidden.stdout.split() == ["0", "777", "tmpfs"]
    plain = await oci_spawn.run("sh", "-c", script, check=False)
    assert plain.stdout.split()[0] == ("1" if HYBRID else "0")
    assert os.path.ismount(HYBRID_CGROUP2) == HYBRID


async def test_output_is_bounded(spawner: None) -> None:
    res = await oci_spawn.run("sh", "-c", "yes warren", check=False, timeout=30)
    assert res.returncode == -9 and "output over" in res.stderr
    assert len(res.stdout) == 8 << 20


async def test_it_ends_with_its_agent(spawner: None) -> None:
    sp = await oci_spawn.spawner()
    assert sp.proc.stdin is not None
    sp.proc.stdin.close()  # what the agent's end looks like to it
    assert await asyncio.wait_for(sp.proc.wait(), 30) == 0
    assert (await oci_spawn.run("echo", "again")).stdout == "again\n"  # a new one is started


async def test_the_default_runtime(spawner: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await choose_default("runc"))[0] == "runc"
    assert (await choose_default("crun"))[0] == "crun"
    # Linked to a control plane or not (session 13): the CP's creates use the host's default.
    assert (await choose_default("auto"))[0] == "crun"  # this machine has a working crun
    # A crun that does not run here: runc, saying why.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "crun").write_text("#!/bin/sh\necho 'crun: broken here' >&2\nexit 1\n")
    (fake / "crun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    assert await choose_default("auto") == ("runc", "crun does not run here: crun: broken here")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert await choose_default("auto") == ("runc", "crun is not installed")


def test_sandboxes_of_either_runtime_are_readopted_after_restarts(agent_root: Path) -> None:
    """No --runtime: crun. A restart with --runtime runc keeps serving the crun sandbox and
    makes runc ones; back on the default, both are adopted again, and go without leaks."""
    root = agent_root / "either"
    agent = AgentProcess(root / "data", root / "agent.log", runtime=None).start()
    try:
        first = agent.create(memory_mb=128)
        assert (agent.data_dir / "crun" / first.sandbox_id).is_dir()
        # The agent byte-compiled the guest: no sandbox compiles it at its start (entry.py).
        guest = Path(warren.guest.__file__).resolve().parent / "guest_agent"
        assert all(Path(cache_from_source(str(m))).exists() for m in guest.glob("*.py"))
        limit = Path(f"/sys/fs/cgroup/memory/warren/{first.sandbox_id}/memory.limit_in_bytes")
        assert limit.read_text().strip() == str(128 << 20)  # crun applied the v1 limits
        agent.kill9()
        agent.runtime = "runc"
        agent.start()
        second = agent.create(memory_mb=128)
        assert (agent.data_dir / "runc" / second.sandbox_id).is_dir()
        assert agent.exec(first.sandbox_id, "true").exit_code == 0
        agent.stop()
        agent.runtime = None
        agent.start()
        runtimes = {
            s.sandbox_id: s.runtime for s in agent.stub.ListSandboxes(pb.ListSandboxesRequest()).sandboxes
        }
        assert runtimes == {first.sandbox_id: "crun", second.sandbox_id: "runc"}
        for r in (first, second):
            assert agent.exec(r.sandbox_id, "echo", "hi").stdout == b"hi\n"
            agent.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=r.sandbox_id))
            agent.stub.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=r.sandbox_id))
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id))
            assert wait_no_leaks(agent, r.sandbox_id, r.host_ip) == []
        assert not (agent.data_dir / "crun" / first.sandbox_id).exists()
    finally:
        agent.finish()
