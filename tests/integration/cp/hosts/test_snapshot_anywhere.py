"""Snapshots through the template store on three real agents (127.0.0.61-.63, registered to one
in-process control plane with the default directory store): a snapshot is a layer in the store,
so it starts on any host, its maker only preferred; a host that lacks the layer fetches it.

The tests share the cluster and run in file order; the one that stops an agent comes last."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from tests.harness.agent import AgentProcess
from tests.harness.cp import InProcessCP
from tests.harness.multihost import MultiHost, fleet, wait_for
from warren import clock
from warren.cp.hosts.monitor import HostMonitor
from warren.cp.store import DirectoryStore

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="real agents need root (namespaces, cgroups, overlayfs)"),
    pytest.mark.timeout(600),
]

IPS = ("127.0.0.61", "127.0.0.62", "127.0.0.63")


@dataclass
class Cluster(MultiHost):
    @property
    def store(self) -> DirectoryStore:
        store: DirectoryStore = self.cp.app.state.store
        return store

    async def create(self, **body: Any) -> str:
        r = await self.api("POST", "/v1/sandboxes", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def snapshot(self, sb: str, name: str, **params: Any) -> Any:
        r = await self.api("POST", "/v1/snapshots", json={"sandbox_id": sb, "name": name}, params=params)
        assert r.status_code == 201, r.text
        return r.json()

    async def snapshot_of(self, script: str, name: str) -> AgentProcess:
        """A sandbox that ran ``script``, snapshotted as ``name`` and destroyed: its agent."""
        src = await self.create()
        await self.sh(src, script)
        maker = await self.agent_of(src)
        await self.snapshot(src, name)
        await self.destroy(src)
        return maker

    async def template(self, name: str) -> Any:
        rows = await self.cp.sql(
            "SELECT layers, base, source, host_id, size_bytes FROM templates WHERE name = :n", n=name
        )
        assert len(rows) == 1
        return rows[0]


@pytest.fixture(scope="module")
async def cluster(cp: InProcessCP) -> AsyncIterator[Cluster]:
    admin = await cp.signup(admin=True)
    user = await cp.signup()
    async with fleet(cp, "snapshot-anywhere") as f:
        for ip in IPS:
            await f.add(admin, ip)
        yield Cluster(cp, user, await user.api_key(), f.agents)


async def test_a_snapshot_is_a_store_layer_on_the_parent_chain(cluster: Cluster) -> None:
    c = cluster
    src = await c.create(vcpus=1, memory_mb=256)
    await c.sh(src, "mkdir -p /srv/app && echo one > /srv/app/v && rm -f /etc/motd")
    maker = await c.agent_of(src)
    snap = await c.snapshot(src, "layered")
    assert (snap["name"], snap["type"]) == ("layered", "snapshot")
    layers, base, source, host_id, size = await c.template("layered")
    assert (base, source, host_id) == ("minimal", "snapshot", maker.host_uuid)
    assert len(layers) == 1 and await c.store.exists(layers[0])
    assert size == await c.store.size(layers[0]) == snap["size_bytes"]
    # The maker keeps the layer installed, and the CP knows it.
    assert layers[0] in await c.held(maker) and layers[0] in await c.recorded(maker)

    # A snapshot of a sandbox started from it is its chain plus one more layer.
    child = await c.create(template="layered")
    await c.sh(child, "echo two > /srv/app/w")
    await c.snapshot(child, "layered-2")
    layers2, *_ = await c.template("layered-2")
    assert layers2[:1] == layers and len(layers2) == 2
    grandchild = await c.create(template="layered-2")
    assert (
        await c.sh(grandchild, "cat /srv/app/v /srv/app/w; test -e /etc/motd || echo gone")
        == "one\ntwo\ngone\n"
    )
    await c.destroy(src, child, grandchild)


async def test_the_scheduler_prefers_the_host_holding_the_layers(cluster: Cluster) -> None:
    c = cluster
    maker = await c.snapshot_of("echo near > /root/near", "near")
    # Round robin would spread these over three hosts; all three go where the layer is.
    made = [await c.create(template="near", memory_mb=128) for _ in range(3)]
    assert {(await c.agent_of(sb)).host_id for sb in made} == {maker.host_id}
    await c.destroy(*made)


async def test_overwrite_replaces_and_delete_keeps_running_sandboxes(cluster: Cluster) -> None:
    c = cluster
    src = await c.create()
    await c.sh(src, "echo old > /root/v")
    await c.snapshot(src, "stable")
    old_layers, *_ = await c.template("stable")
    r = await c.api("POST", "/v1/snapshots", json={"sandbox_id": src, "name": "stable"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "already_exists"
    assert (await c.api("POST", f"/v1/sandboxes/{src}/resume")).status_code == 200
    await c.sh(src, "echo new > /root/v")
    await c.snapshot(src, "stable", overwrite="true")
    new_layers, *_ = await c.template("stable")
    assert new_layers != old_layers
    user = await c.create(template="stable")
    assert await c.sh(user, "cat /root/v") == "new\n"
    # Delete is the row: a running sandbox of it goes on, a new one cannot start.
    assert (await c.api("DELETE", "/v1/snapshots/stable")).status_code == 204
    assert await c.sh(user, "cat /root/v") == "new\n"
    r = await c.api("POST", "/v1/sandboxes", json={"template": "stable"})
    assert r.status_code == 404
    await c.destroy(src, user)


async def test_a_snapshot_whose_layer_file_was_corrupted_is_refused_elsewhere(cluster: Cluster) -> None:
    """Bytes flipped in the store's file: the host that took the snapshot still has its own
    copy, but any other host refuses the layer when it is pushed, and keeps nothing."""
    c = cluster
    maker = await c.snapshot_of("echo fragile > /root/f", "fragile")
    (layer,), *_ = await c.template("fragile")
    path = c.store.path_of(layer)
    data = bytearray(path.read_bytes())
    data[-1100] ^= 0xFF  # inside the last member's data or padding
    path.write_bytes(bytes(data))
    await c.cp.sql("UPDATE hosts SET status = 'draining' WHERE id = :h", h=maker.host_uuid)
    try:
        r = await c.api("POST", "/v1/sandboxes", json={"template": "fragile"})
    finally:
        await c.cp.sql("UPDATE hosts SET status = 'online' WHERE id = :h", h=maker.host_uuid)
    assert r.status_code == 500 and r.json()["error"]["code"] == "layer_corrupt", r.text
    assert layer in r.json()["error"]["message"]
    for other in (a for a in c.agents if a is not maker):
        assert layer not in await c.held(other) and layer not in await c.recorded(other)
    assert (await c.api("DELETE", "/v1/snapshots/fragile")).status_code == 204


async def test_a_snapshot_taken_on_a_starts_on_b_while_a_is_stopped(
    cluster: Cluster, fake_clock: Any
) -> None:
    c = cluster
    src = await c.create()
    await c.sh(
        src, "mkdir -p /data && head -c 3000000 /dev/urandom > /data/blob && md5sum /data/blob > /data/sum"
    )
    digest = await c.sh(src, "cat /data/sum")
    a = await c.agent_of(src)
    await c.snapshot(src, "portable")
    (layer,), *_ = await c.template("portable")
    await c.destroy(src)
    others = [x for x in c.agents if x is not a]
    for x in others:
        assert layer not in await c.held(x)

    await a.astop()
    try:
        monitor: HostMonitor = c.cp.app.state.monitor
        fake_clock.advance(91)  # past the heartbeat staleness: the monitor marks A down

        async def others_beat() -> bool:
            rows = await c.cp.sql(
                "SELECT count(*) FROM hosts WHERE id = ANY(:ids) AND last_heartbeat_at >= :t",
                ids=[x.host_uuid for x in others],
                t=clock.now() - timedelta(seconds=1),
            )
            return bool(rows[0][0] == len(others))

        await wait_for(others_beat, 60, "fresh heartbeats of B and C")
        result = await monitor.run_once()
        assert a.host_id in result.marked_down

        sb = await c.create(template="portable")
        b = await c.agent_of(sb)
        assert b is not a
        assert await c.sh(sb, "cd /data && md5sum -c sum >/dev/null && cat sum") == digest
        assert layer in await c.held(b) and layer in await c.recorded(b)
        await c.destroy(sb)
    finally:
        await a.astart()
    await wait_for(lambda: _online(c, a), 30, "host A back online")


async def _online(c: Cluster, agent: AgentProcess) -> bool:
    rows = await c.cp.sql("SELECT status FROM hosts WHERE id = :h", h=agent.host_uuid)
    return bool(rows[0][0] == "online")
