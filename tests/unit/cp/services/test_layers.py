"""``services/layers.py`` against a real database: the layers index and which host holds what.
(Pushing to hosts needs real agents: tests/integration/cp/test_template_store.py.)"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness.fixtures import emptied_engine
from warren import ids
from warren.cp.db.tables import host_layers, layers
from warren.cp.services import layers as svc
from warren.errors import InvalidRequest
from warren.layers import LayerMeta


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    async with emptied_engine(db_url, "layers", "host_layers", pool_size=2) as e:
        yield e


def meta(n: int) -> LayerMeta:
    return LayerMeta(hashlib.sha256(b"%d" % n).hexdigest(), 100 + n)


async def test_record_layer_indexes_it_and_a_second_record_refreshes_it(
    engine: AsyncEngine, fake_clock: object
) -> None:
    await svc.record_layer(engine, meta(1))
    async with engine.connect() as conn:
        first = (await conn.execute(sa.select(layers))).one()
    assert (first.digest, first.size_bytes) == (meta(1).digest, 101)
    fake_clock.advance(7200)  # type: ignore[attr-defined]
    await svc.record_layer(engine, meta(1))
    async with engine.connect() as conn:
        again = (await conn.execute(sa.select(layers))).all()
    assert len(again) == 1
    assert (again[0].created_at - first.created_at).total_seconds() >= 7200
    assert await svc.sizes(engine, [meta(1).digest, meta(2).digest]) == {meta(1).digest: 101}


async def test_a_bad_digest_is_refused(engine: AsyncEngine) -> None:
    with pytest.raises(InvalidRequest):
        await svc.record_layer(engine, LayerMeta("../x", 1))


async def test_host_records(engine: AsyncEngine) -> None:
    host = ids.new_uuid()
    digests = [meta(i).digest for i in range(3)]
    await svc.record_on_host(engine, host, digests + digests[:1])
    await svc.record_on_host(engine, host, digests[:2])  # again: no duplicates
    await svc.forget_on_host(engine, host, digests[1:2])
    async with engine.connect() as conn:
        q = sa.select(host_layers.c.digest).where(host_layers.c.host_id == host)
        held = (await conn.execute(q)).all()
    assert sorted(r.digest for r in held) == sorted([digests[0], digests[2]])
