"""An agent checks everything it needs before it registers (issue 18 item 6): with a data dir it
cannot use, or a listen address already taken, it exits *before* spending its one-time token,
its host stays ``pending`` (no create is sent there), and the same token registers it once
the problem is fixed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.agent import AgentProcess
from tests.harness.cp import InProcessCP, User
from tests.harness.machine import scratch_dir
from warren import ids

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="real agents need root"),
    pytest.mark.timeout(300),
]

IP = "127.0.0.74"


@pytest.fixture(scope="module")
async def admin(cp: InProcessCP) -> User:
    return await cp.signup(admin=True)


@pytest.fixture
def root() -> Iterator[Path]:
    d = scratch_dir("startup-checks")
    yield d
    subprocess.run(["umount", "-q", str(d / "ro")], check=False)
    shutil.rmtree(d, ignore_errors=True)


async def _host_status(cp: InProcessCP, host_id: str) -> str:
    rows = await cp.sql("SELECT status FROM hosts WHERE id = :i", i=ids.parse_id(ids.Kind.HOST, host_id))
    return str(rows[0][0])


async def _refused_then_registers(
    cp: InProcessCP, admin: User, data_dir: Path, expect: str, fix: object
) -> None:
    host_id, token = await admin.create_host()
    agent = AgentProcess.registered(IP, data_dir, cp.url)
    with pytest.raises(RuntimeError, match="exited"):
        await agent.astart(token)
    assert expect in agent.log_tail(), agent.log_tail()
    assert await _host_status(cp, host_id) == "pending"  # nothing was sent there, the token unspent
    fix()  # type: ignore[operator]
    agent = AgentProcess.registered(IP, data_dir, cp.url)
    await agent.astart(token)
    try:
        assert agent.host_id == host_id
        assert await _host_status(cp, host_id) == "online"
    finally:
        await agent.astop()


async def test_untraversable_parent_keeps_the_token(cp: InProcessCP, admin: User, root: Path) -> None:
    parent = root / "private"
    parent.mkdir(mode=0o700)
    os.chown(parent, 12345, 12345)  # 0700 and another uid's: sandbox root cannot walk through
    await _refused_then_registers(cp, admin, parent / "data", "not searchable", lambda: parent.chmod(0o755))


async def test_read_only_data_dir_keeps_the_token(cp: InProcessCP, admin: User, root: Path) -> None:
    ro = root / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)

    def fix() -> None:
        subprocess.run(["mount", "-o", "remount,rw", str(ro)], check=True)

    await _refused_then_registers(cp, admin, ro, "cannot write to the data dir", fix)


async def test_listen_address_taken_keeps_the_token(cp: InProcessCP, admin: User, root: Path) -> None:
    probe = AgentProcess.registered(IP, root / "data", cp.url)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind((IP, probe.port))
    squatter.listen()
    await _refused_then_registers(cp, admin, root / "data", "cannot listen on", squatter.close)
