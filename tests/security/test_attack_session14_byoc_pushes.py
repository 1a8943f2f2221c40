"""Session 14: a BYOC owner makes the control plane send its layers again and again.

A BYOC host's agent is its owner's. One that always answers ``HasLayers`` with "missing" was
sent the whole template from the store for every warm-pool size set through the API (and every
pool reapplied after a heartbeat, every create): 127 ``PUT /v1/hosts/{id}/warm-pools/big`` in
30 s had the CP send one host 4064 MiB of one 32 MiB layer, the CP's network and the store's
reads, paid by every other team, at the team rate limit and over up to 1000 hosts a team.

Now a layer sent to a BYOC host is not sent to it again within ``REPUSH_AFTER_S``
(services/layer_repush.py): the pool set is 503 ``layer_repush_wait``, which harms only the
owner's own host. The control plane is the real app (in-process) on a real PostgreSQL; the
hostile agent is a gRPC server of the test's.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cp import InProcessCP, User, set_byoc
from tests.harness.fake_agent import serve_fake_agent
from warren import ids
from warren.agent.control_plane import load_credentials
from warren.cp.services import layers as layer_svc
from warren.cp.services.layer_repush import REPUSH_AFTER_S
from warren.layers import LayerMeta
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc

pytestmark = pytest.mark.root

MiB = 1 << 20
LAYER_MB = 8
SETS = 12


class Greedy(pb_grpc.HostAgentServicer):
    """Lacks every layer, whatever it was sent; counts what it received."""

    def __init__(self) -> None:
        self.puts = 0
        self.received = 0

    async def HasLayers(self, request: Any, context: Any) -> pb.HasLayersResponse:
        return pb.HasLayersResponse(missing=list(request.digests), admits=False)

    async def PutLayer(self, request_iterator: Any, context: Any) -> pb.PutLayerResponse:
        self.puts += 1
        async for m in request_iterator:
            if m.HasField("chunk"):
                self.received += len(m.chunk)
        return pb.PutLayerResponse(installed=True)

    async def SetWarmPool(self, request: Any, context: Any) -> pb.SetWarmPoolResponse:
        pool = pb.WarmPoolStatus(template=request.template, target=request.size, ready=0)
        return pb.SetWarmPoolResponse(pools=[pool])

    async def ListSandboxes(self, request: Any, context: Any) -> pb.ListSandboxesResponse:
        return pb.ListSandboxesResponse(reports_creating=True)


async def _template(cp: InProcessCP, owner: User, name: str, mb: int = LAYER_MB) -> str:
    """A template of the owner's team with one layer of ``mb`` random MiB in the store (as a
    build of theirs leaves it); the layer's digest."""
    data = os.urandom(mb * MiB)

    async def chunks() -> Any:
        yield data

    meta = await cp.app.state.store.put(
        chunks(), expect=hashlib.sha256(data).hexdigest(), max_bytes=len(data)
    )
    await layer_svc.record_layer(cp.engine, LayerMeta(meta.digest, meta.size))
    await cp.sql(
        "INSERT INTO templates (id, name, type, team_id, version, base, layers, config, tags, source) "
        "VALUES (gen_random_uuid(), :n, 'base', :t, 1, 'minimal', :l, CAST('{}' AS jsonb),"
        " ARRAY['v1'], 'build')",
        n=name, t=ids.parse_id(ids.Kind.TEAM, owner.team_id), l=[meta.digest],
    )  # fmt: skip
    return meta.digest


async def _greedy_host(cp: InProcessCP, owner: User, data_dir: Path) -> tuple[str, Greedy, Any]:
    host_id, token = await owner.create_host("byoc", owner.team_id)
    agent = Greedy()
    server, _ = await serve_fake_agent(agent, cp.url, token, data_dir)
    creds = load_credentials(data_dir)
    assert creds is not None
    r = await cp.http.post(
        f"/v1/hosts/{host_id}/heartbeat", json={"runtimes": ["runc"]}, headers={"X-Host-Token": creds.jwt}
    )
    assert r.status_code == 204, r.text
    return host_id, agent, server


async def _retire(cp: InProcessCP, host_id: str) -> None:
    """Out of every later pass of the module's CP (its agent is gone)."""
    await cp.sql("UPDATE hosts SET status = 'offline' WHERE id = :h", h=ids.parse_id(ids.Kind.HOST, host_id))


@pytest.fixture
async def mallory(cp: InProcessCP) -> User:
    admin, owner = await cp.signup(admin=True), await cp.signup()
    await set_byoc(admin, owner.team_id)
    return owner


async def test_pool_sets_do_not_resend_a_layer_the_host_was_just_sent(
    cp: InProcessCP, mallory: User, tmp_path: Path
) -> None:
    await _template(cp, mallory, "big")
    host_id, agent, server = await _greedy_host(cp, mallory, tmp_path / "h")
    try:
        codes = []
        for i in range(SETS):
            r = await mallory.req("PUT", f"/v1/hosts/{host_id}/warm-pools/big", json={"size": 1 + i % 2})
            codes.append(r.status_code)
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "layer_repush_wait", r.text
        print(f"{SETS} pool sets: {codes}, {agent.puts} pushes, {agent.received // MiB} MiB sent")
        assert agent.puts == 1 and agent.received == LAYER_MB * MiB, (codes, agent.puts)
        assert codes[0] == 200 and codes[1:] == [503] * (SETS - 1), codes
    finally:
        await server.stop(0)
        await cp.sql(
            "UPDATE hosts SET status = 'offline' WHERE id = :h", h=ids.parse_id(ids.Kind.HOST, host_id)
        )


async def test_each_layer_once_and_again_after_the_wait(
    cp: InProcessCP, mallory: User, tmp_path: Path
) -> None:
    """Two templates: each is sent once; once the wait has passed (the clock moved), once more."""
    await _template(cp, mallory, "one")
    await _template(cp, mallory, "two")
    host_id, agent, server = await _greedy_host(cp, mallory, tmp_path / "h")
    try:
        for name in ("one", "two", "one", "two"):
            await mallory.req("PUT", f"/v1/hosts/{host_id}/warm-pools/{name}", json={"size": 1})
        assert agent.puts == 2, agent.puts
        await cp.sql(
            "UPDATE host_layers SET fetched_at = fetched_at - make_interval(secs => :s) WHERE host_id = :h",
            s=REPUSH_AFTER_S + 1, h=ids.parse_id(ids.Kind.HOST, host_id),
        )  # fmt: skip
        r = await mallory.req("PUT", f"/v1/hosts/{host_id}/warm-pools/one", json={"size": 2})
        assert r.status_code == 200, r.text
        assert agent.puts == 3, agent.puts
    finally:
        await server.stop(0)
        await cp.sql(
            "UPDATE hosts SET status = 'offline' WHERE id = :h", h=ids.parse_id(ids.Kind.HOST, host_id)
        )
