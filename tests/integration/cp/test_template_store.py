"""The template store end to end, on its S3 path: an in-process control plane whose store is a
bucket on a local ``moto_server`` process (tests/harness/s3.py), and two real agents
(127.0.0.64-.65). Template versions are written the way builds and imports write them: layer
tars put into the store, indexed, and a ``templates`` row naming them.

Covers: ``name`` / ``name:tag`` resolution; layers fetched on demand (and again when a host lost
one behind the CP's back); a layer corrupted in the store refused on fetch; garbage collection
keeping layers in use."""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.harness.cp import InProcessCP
from tests.harness.multihost import MultiHost, fleet
from tests.harness.s3 import MotoServer, set_credentials
from warren import ids
from warren.cp.services import layers as layer_svc
from warren.cp.services.layer_gc import collect
from warren.cp.store import S3Store, layer_key
from warren.rpc import hostagent_pb2 as pb

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="real agents need root (namespaces, cgroups, overlayfs)"),
    pytest.mark.timeout(600),
]

IPS = ("127.0.0.64", "127.0.0.65")
BUCKET = "warren-templates"
PREFIX = "it"


@dataclass
class Env(MultiHost):
    moto: MotoServer

    async def create(self, template: str) -> str:
        r = await self.api("POST", "/v1/sandboxes", json={"template": template, "memory_mb": 128})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def layer(self, files: dict[str, str]) -> str:
        """A layer tar of ``files`` put into the store and indexed, as a build step leaves it."""
        meta = await self.store.put(_chunks(tar_of(files)), max_bytes=1 << 20)
        await layer_svc.record_layer(self.cp.engine, meta, store=self.store)
        return meta.digest

    async def template(self, name: str, version: int, digests: list[str], **kw: Any) -> None:
        """A template version row of the user's team, as a build writes it."""
        tags = [f"v{version}", *kw.get("tags", [])]
        await self.cp.sql(
            "INSERT INTO templates (id, name, type, team_id, version, base, layers, config, tags, source) "
            "VALUES (:id, :n, 'base', :t, :v, 'minimal', :l, CAST(:c AS jsonb), :tags, 'build')",
            id=uuid.uuid4(), n=name, t=ids.parse_id(ids.Kind.TEAM, self.user.team_id), v=version,
            l=digests, c=json.dumps(kw.get("config", {})), tags=tags,
        )  # fmt: skip

    async def indexed(self, digest: str) -> bool:
        return bool(await self.cp.sql("SELECT 1 FROM layers WHERE digest = :d", d=digest))


def tar_of(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(p).parent) for p in files} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    set_credentials()
    with MotoServer(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        server.make_bucket(BUCKET)
        yield server


@pytest.fixture(scope="module")
async def env(db_url: str, moto: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    home = Path(tmp_path_factory.mktemp("cp-home"))
    cp = await InProcessCP(
        db_url, home, template_store=f"s3://{BUCKET}/{PREFIX}", s3_endpoint_url=moto.url
    ).start()
    try:
        assert isinstance(cp.app.state.store, S3Store)
        admin = await cp.signup(admin=True)
        user = await cp.signup()
        async with fleet(cp, "template-store") as f:
            for ip in IPS:
                await f.add(admin, ip)
            yield Env(cp, user, await user.api_key(), f.agents, moto)
    finally:
        await cp.stop()


async def test_name_and_tag_pick_the_version_and_layers_come_on_demand(env: Env) -> None:
    one = await env.layer({"srv/tool/VERSION": "one\n"})
    two = await env.layer({"srv/tool/VERSION": "two\n", "srv/tool/extra": "x\n"})
    await env.template("tool", 1, [one], tags=["stable"])
    await env.template("tool", 2, [one, two], config={"env": {"TOOL": "two"}, "workdir": "/srv/tool"})

    newest = await env.create("tool")
    host = await env.agent_of(newest)
    assert await env.sh(newest, 'cat VERSION extra; echo "$TOOL"') == "two\nx\ntwo\n"
    # The host fetched both layers from the bucket, checked them, and the CP knows it has them.
    assert {one, two} <= set(await env.held(host)) and {one, two} <= await env.recorded(host)
    for ref in ("tool:v1", "tool:stable"):
        sb = await env.create(ref)
        assert (
            await env.sh(sb, "cat /srv/tool/VERSION; test -e /srv/tool/extra || echo none") == "one\nnone\n"
        )
        await env.destroy(sb)
    assert (await env.api("POST", "/v1/sandboxes", json={"template": "tool:v9"})).status_code == 404
    assert (await env.api("POST", "/v1/sandboxes", json={"template": "tool:a/b"})).status_code == 400

    # A host that lost a layer behind the CP's back (host_layers still lists it) gets it again:
    # the agent answers "missing layers", the CP pushes and retries once.
    await env.destroy(newest)
    deleted = await env.client(host).stub.DeleteLayers(pb.DeleteLayersRequest(digests=[two]), timeout=30)
    assert list(deleted.deleted) == [two] and two in await env.recorded(host)
    again = await env.create("tool")
    assert await env.agent_of(again) is host  # it still holds the most of the chain
    assert await env.sh(again, "cat VERSION") == "two\n"
    await env.destroy(again)


async def test_a_layer_corrupted_in_the_store_is_refused_on_fetch(env: Env) -> None:
    bad = await env.layer({"etc/broken": "intact bytes\n"})
    await env.template("broken", 1, [bad])
    # Flip bytes of the stored object, keeping its name.
    s3 = boto3.client("s3", endpoint_url=env.moto.url, region_name="us-east-1")
    key = f"{PREFIX}/{layer_key(bad)}"
    data = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[600:612] = b"CORRUPTED!!!"
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))

    r = await env.api("POST", "/v1/sandboxes", json={"template": "broken"})
    assert r.status_code == 500, r.text
    err = r.json()["error"]
    assert err["code"] == "layer_corrupt" and bad in err["message"]
    rows = await env.cp.sql("SELECT status FROM sandboxes WHERE template = 'broken'")
    assert [row[0] for row in rows] == ["error"]
    for agent in env.agents:  # no host keeps it, and none is recorded as having it
        has = await env.client(agent).stub.HasLayers(pb.HasLayersRequest(digests=[bad]), timeout=30)
        assert list(has.missing) == [bad]
        assert bad not in await env.recorded(agent)


async def test_gc_keeps_layers_in_use_and_removes_dead_ones(env: Env) -> None:
    engine, store, pool = env.cp.engine, env.store, env.pool
    kept = await env.layer({"etc/kept": "in use\n"})
    await env.template("ephemeral", 1, [kept])
    running = await env.create("ephemeral")
    holder = await env.agent_of(running)
    gone = await env.layer({"etc/gone": "unused\n"})
    await env.template("short-lived", 1, [gone])
    done = await env.create("short-lived")
    gone_host = await env.agent_of(done)
    await env.destroy(done)
    orphan = await env.layer({"etc/orphan": "never used\n"})
    await env.cp.sql("DELETE FROM templates WHERE name IN ('ephemeral', 'short-lived')")
    # The team's count of its layers in the store (services/team_store.py) names `gone`.
    team = ids.parse_id(ids.Kind.TEAM, env.user.team_id)
    await env.cp.sql(
        "INSERT INTO team_store_layers (id, team_id, digest, size_bytes) VALUES (:i, :t, :d, 1)",
        i=uuid.uuid4(), t=team, d=gone,
    )  # fmt: skip

    # Within the grace period nothing goes.
    report = await collect(engine, store, pool, grace_s=3600)
    assert report.ran and report.store_deleted == [] and report.host_deleted == {}

    report = await collect(engine, store, pool, grace_s=0)
    assert sorted(report.store_deleted) == sorted([gone, orphan])
    for d in (gone, orphan):
        assert not await store.exists(d) and not await env.indexed(d)
    # ... and forgets it with the layer.
    assert not await env.cp.sql("SELECT 1 FROM team_store_layers WHERE digest = :d", d=gone)
    assert gone not in await env.held(gone_host) and gone not in await env.recorded(gone_host)
    # The running sandbox's layers stay, on its host and in the store, although no template
    # names them any more; the sandbox still reads them.
    assert (await env.held(holder)).get(kept) is True
    assert await store.exists(kept) and await env.indexed(kept)
    assert await env.sh(running, "cat /etc/kept") == "in use\n"
    # Layers of live templates stay everywhere.
    tool_layers = await env.cp.sql("SELECT unnest(layers) FROM templates WHERE name = 'tool'")
    for (d,) in tool_layers:
        assert await store.exists(d)

    await env.destroy(running)
    report = await collect(engine, store, pool, grace_s=0)
    assert report.store_deleted == [kept]
    assert kept not in await env.held(holder) and not await store.exists(kept)


async def test_a_build_cancelled_while_its_layer_is_stored_keeps_it_counted(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Session 25: the host installs a step's layer as it sends it and, its last message out,
    cannot tell a reader that left. A build cancelled after that but before the CP recorded the
    layer (here: while the store still writes it) left it on the host in no store and no quota
    until the collector's grace. Now the cancel waits for the step's layer to be stored,
    recorded and counted to the team, as a step that ended just before it."""
    store, put = env.store, env.store.put
    written, release, got = asyncio.Event(), asyncio.Event(), list[str]()

    async def slow_put(chunks: AsyncIterator[bytes], **kw: Any) -> Any:
        meta = await put(chunks, **kw)  # the whole stream read: the host has sent it all
        got.append(meta.digest)
        written.set()
        await release.wait()  # the store's last write, as a slow bucket makes it
        return meta

    monkeypatch.setattr(store, "put", slow_put)
    name = f"late-{uuid.uuid4().hex[:6]}"
    spec = "FROM minimal\nRUN head -c 2M /dev/urandom > /late\n"
    r = await env.api("POST", "/v1/templates", json={"name": name, "spec": spec})
    assert r.status_code == 202, r.text
    build_id = r.json()["build_id"]
    await asyncio.wait_for(written.wait(), 300)
    cancel = asyncio.ensure_future(env.api("POST", f"/v1/templates/{name}/builds/{build_id}/cancel"))
    writer = None
    for _ in range(600):  # the cancel has reached the build's work (its log is ended)
        writer = env.cp.app.state.builds.writers.get(ids.parse_id(ids.Kind.BUILD, build_id))
        if writer is None or writer.ended:
            break
        await asyncio.sleep(0.05)
    release.set()
    r = await cancel
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["error"]) == ("failed", "cancelled by the team"), r.json()
    digest, team = got[0], ids.parse_id(ids.Kind.TEAM, env.user.team_id)
    assert await env.indexed(digest)
    hosts_with = await env.cp.sql("SELECT host_id FROM host_layers WHERE digest = :d", d=digest)
    assert len(hosts_with) == 1  # the build host's copy is known: its collector sees it
    counted = await env.cp.sql(
        "SELECT 1 FROM team_store_layers WHERE team_id = :t AND digest = :d", t=team, d=digest
    )
    cached = await env.cp.sql("SELECT 1 FROM build_cache WHERE team_id = :t AND layer = :d", t=team, d=digest)
    assert counted and cached
