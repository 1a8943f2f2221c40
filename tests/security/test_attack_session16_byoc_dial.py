"""Session 16: a hostile BYOC owner and the preview proxy's DialPort fallback.

Every call on a host's shared channel passes the BYOC address check first (session 13,
``cp/hosts/byoc_addresses.DialCheck``), but previews through an agent without a data port go
over a DialPort channel of their own (``cp/hosts/narrow_channel.dial_channel``), which carries no
interceptor. Before this fix that channel dialled whatever address the host's row held: a BYOC
row at 127.0.0.1 (a row from before the allow-list, or one the data path had already given up
on) got a TLS ClientHello from the CP on the first preview. The stream now asks the pool's check
before its call, as every other call does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness.cp import InProcessCP, User, set_byoc
from tests.security.test_attack_session13_byoc import ALLOWED_ELSEWHERE, SPECS, STRICT_CIDRS, Listener
from warren import ids
from warren.cp.proxy.stream import DialStream
from warren.errors import AgentError


@pytest.fixture(scope="module")
async def strict(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessCP]:
    """A CP with production's BYOC allow-list."""
    async with InProcessCP(
        db_url, Path(tmp_path_factory.mktemp("strict-cp")), byoc_allowed_cidrs=STRICT_CIDRS
    ) as server:
        yield server


@pytest.fixture(scope="module")
async def mallory(strict: InProcessCP) -> User:
    admin = await strict.signup(admin=True)
    owner = await strict.signup()
    await set_byoc(admin, owner.team_id)
    return owner


async def test_a_dialport_preview_never_dials_a_refused_byoc_address(
    strict: InProcessCP, mallory: User
) -> None:
    """mallory's host row points at 127.0.0.1 (a row from before the allow-list). A preview's
    DialPort stream to one of its sandboxes is refused as an unreachable host, and no
    connection reaches the address."""
    inside = await Listener().start()
    try:
        host_id, token = await mallory.create_host("byoc", mallory.team_id)
        r = await strict.http.post(
            "/v1/hosts/register",
            json={"token": token, "address": f"{ALLOWED_ELSEWHERE}:{inside.port}", **SPECS},
        )
        assert r.status_code == 201, r.text
        address = f"127.0.0.1:{inside.port}"
        host_uuid = ids.parse_id(ids.Kind.HOST, host_id)
        await strict.sql("UPDATE hosts SET address = :a WHERE id = :h", a=address, h=host_uuid)
        client = strict.pool.get_for(host_uuid, address)
        stream = DialStream(client, "sbx-00000000000000000000000000", 8080)
        with pytest.raises(AgentError) as refused:
            await stream.open()
        await stream.aclose()
        assert refused.value.rpc_code == "UNAVAILABLE"
        assert inside.connections == 0, "the DialPort channel dialled a refused BYOC address"
    finally:
        await inside.stop()
