"""``services/layer_gc.collect`` against a real database and a directory store, no hosts (the
host side runs on real agents: tests/integration/cp/test_template_store.py)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness.fixtures import emptied_engine
from warren.config import Settings
from warren.cp.db import locks
from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.security.ca import CertificateAuthority
from warren.cp.services import layers as layer_svc
from warren.cp.services.layer_gc import collect
from warren.cp.store import DirectoryStore
from warren.errors import ServiceUnavailable
from warren.layers import LayerMeta

GRACE_S = 3600.0


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    async with emptied_engine(
        db_url, "layers", "host_layers", "build_cache", "templates", "hosts", pool_size=4
    ) as e:
        yield e


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[HostClientPool]:
    ca = CertificateAuthority.from_settings(Settings(home=tmp_path / "home", jwt_secret="x" * 32))
    p = HostClientPool(ca)
    yield p
    await p.close()


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def put(engine: AsyncEngine, store: DirectoryStore, data: bytes, *, record: bool = True) -> str:
    meta = await store.put(one(data), max_bytes=len(data))
    if record:
        await layer_svc.record_layer(engine, meta, store=store)
    return meta.digest


async def sql(engine: AsyncEngine, statement: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.text(statement), params)


async def test_dead_layers_go_after_the_grace_period_and_live_ones_stay(
    engine: AsyncEngine, pool: HostClientPool, tmp_path: Path, fake_clock: Any
) -> None:
    store = DirectoryStore(tmp_path / "store")
    in_template, in_cache, dead = [await put(engine, store, b"layer %d" % i) for i in range(3)]
    orphan = await put(engine, store, b"written, never recorded", record=False)
    await sql(
        engine,
        "INSERT INTO templates (id, name, team_id, layers) VALUES (:i, 't', :t, :l)",
        i=uuid.uuid4(), t=uuid.uuid4(), l=[in_template],
    )  # fmt: skip
    await sql(
        engine,
        "INSERT INTO build_cache (team_id, key, layer) VALUES (:t, 'k', :l)",
        t=uuid.uuid4(),
        l=in_cache,
    )

    report = await collect(engine, store, pool, grace_s=GRACE_S)
    assert report.ran and report.store_deleted == [] and report.adopted == [orphan]

    fake_clock.advance(GRACE_S + 1)
    report = await collect(engine, store, pool, grace_s=GRACE_S)
    assert sorted(report.store_deleted) == sorted([dead, orphan])
    assert sorted([d async for d in store.list()]) == sorted([in_template, in_cache])
    async with engine.connect() as conn:
        indexed = {r[0] for r in await conn.execute(sa.text("SELECT digest FROM layers"))}
    assert indexed == {in_template, in_cache}


async def test_recording_a_layer_again_makes_it_young(
    engine: AsyncEngine, pool: HostClientPool, tmp_path: Path, fake_clock: Any
) -> None:
    store = DirectoryStore(tmp_path / "store")
    digest = await put(engine, store, b"old but reused")
    fake_clock.advance(GRACE_S + 1)
    await put(engine, store, b"old but reused")  # a build wrote it again
    assert (await collect(engine, store, pool, grace_s=GRACE_S)).store_deleted == []
    assert await store.exists(digest)


async def test_one_collector_at_a_time(engine: AsyncEngine, pool: HostClientPool, tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    async with locks.held(engine, locks.LAYER_GC_NS, uuid.UUID(int=0)) as got:
        assert got
        report = await collect(engine, store, pool, grace_s=0)
    assert not report.ran
    assert (await collect(engine, store, pool, grace_s=0)).ran


async def test_a_record_after_the_object_was_collected_is_refused(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """The writer of a layer that a collection removed between its put and its record learns
    it (and puts it again), instead of indexing an object that is gone."""
    store = DirectoryStore(tmp_path / "store")
    meta = LayerMeta(hashlib.sha256(b"gone").hexdigest(), 4)
    with pytest.raises(ServiceUnavailable) as e:
        await layer_svc.record_layer(engine, meta, store=store)
    assert e.value.code == "layer_collected"


async def test_build_cache_rows_unused_past_the_ttl_go_and_their_layers_age_out(
    engine: AsyncEngine, pool: HostClientPool, tmp_path: Path, fake_clock: Any
) -> None:
    """A cache entry keeps its layer only while builds hit it: one unused for the TTL is
    dropped, and its layer goes a grace period later; an entry hit meanwhile stays."""
    store = DirectoryStore(tmp_path / "store")
    team = uuid.uuid4()
    stale, used = await put(engine, store, b"stale step"), await put(engine, store, b"used step")
    for key, layer in (("k-stale", stale), ("k-used", used)):
        await sql(
            engine,
            "INSERT INTO build_cache (team_id, key, layer, created_at, used_at) VALUES (:t, :k, :l, :n, :n)",
            t=team, k=key, l=layer, n=fake_clock.now(),
        )  # fmt: skip
    ttl = 7 * 24 * 3600.0
    fake_clock.advance(ttl - 10)
    await sql(engine, "UPDATE build_cache SET used_at = :n WHERE key = 'k-used'", n=fake_clock.now())
    fake_clock.advance(20)

    report = await collect(engine, store, pool, grace_s=GRACE_S, cache_ttl_s=ttl)
    assert report.cache_pruned == 1
    assert report.store_deleted == [stale]  # its layer was already past the grace period
    assert await store.exists(used)
    async with engine.connect() as conn:
        keys = {r[0] for r in await conn.execute(sa.text("SELECT key FROM build_cache"))}
    assert keys == {"k-used"}

    # Without a TTL (a direct call), no entry expires.
    fake_clock.advance(ttl * 2)
    report = await collect(engine, store, pool, grace_s=GRACE_S)
    assert report.cache_pruned == 0 and report.store_deleted == []
