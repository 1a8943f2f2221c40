"""Agent faults under a mixed load, on one in-process control plane (its monitor driven by the
test) and three real agents on 127.0.0.71-73; agent C's data dir is a small tmpfs of its own.

* ``kill -9`` of an agent while a create is under way on it: that create gets a definite error
  (the agent had it: never tried again elsewhere), creates sent to the dead host meanwhile are
  tried on another host (the connection was never made), and once the agent is back one
  monitor pass settles what the killed create left;
* ``kill -9`` of an agent in the middle of an upload: the uploader gets a definite error, every
  acknowledged file stays;
* the agent's data disk full: its running sandboxes keep working, and from its next heartbeat
  (which reports the disk's free space) the scheduler sends it no creates: the others take the
  load, and every create succeeds; once space is freed, the next heartbeat brings it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults import invariants as inv
from tests.harness.agent import AgentProcess
from tests.harness.cp import InProcessCP
from tests.harness.multihost import fleet, wait_for
from warren import clock, ids
from warren.cp.hosts.monitor import HostMonitor
from warren.rpc import hostagent_pb2 as pb

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="real agents need root"),
    pytest.mark.timeout(300),
]

IPS = ("127.0.0.71", "127.0.0.72", "127.0.0.73")
DISK_MB = 32
# The control plane's WARREN_HOST_MIN_FREE_DISK_MB here: below C's empty tmpfs, above a full one.
MIN_FREE_MB = 8


@dataclass
class Faults:
    cp: InProcessCP
    key: str
    agents: list[AgentProcess]
    disk: Path  # agent C's data dir, a tmpfs

    @property
    def monitor(self) -> HostMonitor:
        monitor: HostMonitor = self.cp.app.state.monitor
        return monitor

    def load(self) -> inv.Load:
        return inv.Load(self.cp.http, self.key)

    async def check(self, load: inv.Load) -> None:
        """One monitor pass (once the CP can reach every agent again), then every invariant."""
        await inv.reachable(self.cp.pool, self.agents)
        await self.monitor.run_once()
        await inv.all_hold(self.cp.sql, self.cp.pool, self.agents, load)

    async def host_of(self, sb: str) -> AgentProcess:
        rows = await self.cp.sql(
            "SELECT host_id FROM sandboxes WHERE id = :i", i=ids.parse_id(ids.Kind.SANDBOX, sb)
        )
        return next(a for a in self.agents if a.host_uuid == rows[0][0])

    async def creating(self, agent: AgentProcess) -> list[str]:
        client = self.cp.pool.get_for(agent.host_uuid, agent.address)
        resp = await client.stub.ListSandboxes(pb.ListSandboxesRequest(), timeout=5)
        return list(resp.creating_sandbox_ids)


@pytest.fixture(scope="module")
async def cp(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessCP]:
    """The suite's control plane, with a free-disk threshold C's small data disk meets."""
    home = tmp_path_factory.mktemp("cp-home")
    try:
        async with InProcessCP(db_url, home, host_min_free_disk_mb=MIN_FREE_MB) as server:
            yield server
    finally:
        clock.reset()


@pytest.fixture(scope="module")
async def faults(cp: InProcessCP) -> AsyncIterator[Faults]:
    admin = await cp.signup(admin=True)
    user = await cp.signup()
    key = await user.api_key()
    async with fleet(cp, "faults") as f:
        disk = f.root / "disk"
        disk.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0711", "tmpfs", str(disk)], check=True
        )
        try:
            # At once (each its own data dir by name), then in address order.
            await asyncio.gather(
                *(f.add(admin, ip, name=ip) for ip in IPS[:2]), f.add(admin, IPS[2], name="disk")
            )
            f.agents.sort(key=lambda a: a.ip)
            yield Faults(cp, key, f.agents, disk)
        finally:
            pool = cp.pool
            await asyncio.gather(*(a.destroy_all_over(pool) for a in f.agents))
            await asyncio.gather(*(a.astop() for a in f.agents))
            subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture
async def clean(faults: Faults) -> AsyncIterator[Faults]:
    yield faults
    await inv.destroy_everything(faults.cp.sql, faults.cp.pool, faults.agents)


async def test_agent_killed_mid_create(clean: Faults) -> None:
    f = clean
    b = f.agents[1]
    load = f.load()
    # Creates until one is under way on B; B dies with it in hand. Started in waves until B
    # is seen creating: six at once, each ~70 ms on its agent, could all end between two looks
    # (CI once saw none in 60 s).
    creates: list[asyncio.Task[str | None]] = []
    for _ in range(MAX_WAVES):
        creates += [asyncio.create_task(load.create()) for _ in range(3)]
        if await _seen_creating(f, b):
            break
    else:
        raise AssertionError(f"no create seen under way on B in {MAX_WAVES} waves")
    b.kill9()
    await asyncio.gather(*creates)
    # B is dead but still `online` (its heartbeat is not stale yet): creates that pick it are
    # tried elsewhere.
    before = load.successes("create")
    kept = await load.run(workers=3, rounds=2)
    assert load.successes("create") - before == 6, load.answers
    assert [sb for sb in kept if await f.host_of(sb) is b] == []
    # Restarted, B re-adopts what it had made, including sandboxes of creates answered 502 as
    # it died (their records `error`): one monitor pass destroys those (records_match_hosts).
    await b.astart()
    await f.check(load)


MAX_WAVES = 10


async def _seen_creating(f: Faults, b: AgentProcess, looks: int = 40) -> bool:
    """Whether B is seen with a create under way within ``looks`` quick looks."""
    for _ in range(looks):
        if await f.creating(b):
            return True
        await asyncio.sleep(0.005)
    return False


BOUNDARY = "faultsboundary"


async def _slow_upload(path: str, chunks: int) -> AsyncIterator[bytes]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="path"\r\n\r\n{path}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    yield head.encode()
    for _ in range(chunks):
        yield b"u" * 65536
        await asyncio.sleep(0.05)
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


async def test_agent_killed_mid_upload(clean: Faults) -> None:
    f = clean
    load = f.load()
    kept = await load.run(workers=3, rounds=2)
    on_b = [sb for sb in kept if await f.host_of(sb) is f.agents[1]]
    sb = on_b[0] if on_b else None
    while sb is None:  # round robin: B's turn comes within three creates
        s = await load.create()
        if s is not None and await f.host_of(s) is f.agents[1]:
            sb = s
            await load.write(sb)
    upload = asyncio.create_task(
        load.call(
            "upload", "POST", f"/v1/sandboxes/{sb}/files/stream/write",
            content=_slow_upload("/tmp/big", 100),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
    )  # fmt: skip
    await asyncio.sleep(1)  # some 20 chunks in
    f.agents[1].kill9()
    r = await upload
    assert r is None or r.status_code >= 400, "an upload cut by a dead agent was acknowledged"
    await f.agents[1].astart()
    await f.check(load)


async def _disk_reported(f: Faults, agent: AgentProcess, *, low: bool) -> None:
    """Until the host's row holds a heartbeat's report of a disk below (``low``) or at least
    the threshold."""

    async def reported() -> bool:
        rows = await f.cp.sql("SELECT disk_free_bytes FROM hosts WHERE id = :h", h=agent.host_uuid)
        free = rows[0][0]
        return free is not None and (free < MIN_FREE_MB << 20) == low

    await wait_for(reported, 60, f"{agent.ip}'s heartbeat reporting its disk {'full' if low else 'freed'}")


async def test_data_disk_full(clean: Faults) -> None:
    f = clean
    c = f.agents[2]
    await _disk_reported(f, c, low=False)
    load = f.load()
    kept = await load.run(workers=3, rounds=1)
    fill = f.disk / "fill"
    with contextlib.suppress(OSError), open(fill, "wb") as out:
        while True:
            out.write(b"\0" * (1 << 20))
            out.flush()
    try:
        await _disk_reported(f, c, low=True)
        for sb in kept:
            await load.exec(sb)
            await load.write(sb)
        made = len(load.created)
        await load.run(workers=3, rounds=2)
        # C is no longer chosen: every create succeeded, on A or B.
        assert not [a for a in load.answers if a.op == "create" and a.status != 201], load.answers
        assert [sb for sb in load.created[made:] if await f.host_of(sb) is c] == []
        # C's existing sandboxes still answer (their disks are their own).
        assert load.successes("exec") >= len(kept)
        await f.check(load)
        assert not (await inv.listed(f.cp.pool, c)).keys() - {sb for sb in kept}
    finally:
        fill.unlink(missing_ok=True)
    # Space freed: C's next heartbeat makes it eligible again (round robin: within 3 creates).
    await _disk_reported(f, c, low=False)
    made = len(load.created)
    for _ in range(3):
        assert await load.create() is not None, load.answers[-1]
    assert [sb for sb in load.created[made:] if await f.host_of(sb) is c], "C never chosen again"
    await f.check(load)
