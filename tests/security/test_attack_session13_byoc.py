"""Session 13's attack from a hostile BYOC owner: mallory registers her own "hosts" and chooses
what the control plane dials, what her agent answers the layer collector, and how long it
takes to answer the monitor. The CP's own code (its API, monitor and layer collector, run
in-process here) is the victim.

Found and fixed:

* the CP dialled whatever address a BYOC host registered: a TLS ClientHello (then every call
  the monitor, the collector, a create or a delete makes) to 127.0.0.1, the CP's own ports, its
  PostgreSQL, 169.254.169.254, private networks, other hosts' agents. An operator allow-list
  (``WARREN_BYOC_ALLOWED_CIDRS``, default: public unicast only) is checked at registration
  (400, the token unused; a name is resolved then and stored as the IP checked) and before
  each channel's first call (a row from before the check is never dialled);
* a name that resolved to an allowed address at registration and to 127.0.0.1 afterwards
  (DNS rebinding) was dialled at 127.0.0.1;
* a BYOC host's ``ListLayers`` ``in_use`` flag kept any layer whose digest it knew (another
  team's, for ever: store space);
* one team's 20 hosts that hang every ``ListSandboxes`` took every BYOC monitor slot, and
  another team's host waited behind all of them (~20 s each).

What held is asserted too: a platform host is not held to the BYOC allow-list, and its
``in_use`` flags are still believed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cp import InProcessCP, User, set_byoc
from tests.harness.fake_agent import serve_fake_agent
from warren import ids
from warren.cp.hosts.monitor import HostMonitor
from warren.cp.services import audit, layer_gc
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc

WAIT_S = 60.0
# The strict CP's allow-list: production's default plus one loopback address the rebinding
# test's name first resolves to ("mallory's public IP"; nothing listens there).
ALLOWED_ELSEWHERE = "127.0.0.2"
STRICT_CIDRS = f"public,{ALLOWED_ELSEWHERE}/32"
SPECS = {"cpu_cores": 4, "memory_mb": 8192, "disk_gb": 50}
# Layers the collections here may delete: older than this (the test's own, made 10 years old).
OLD_S = 5 * 365 * 86400.0


# ------------------------------------------------------------------ mallory's agents


@dataclass
class Scripted(pb_grpc.HostAgentServicer):
    """One servicer for any number of mallory's hosts: what it answers, what it was asked."""

    layers: list[pb.LayerInfo] = field(default_factory=list)
    hang: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    listings: int = 0  # ListSandboxes calls received
    held: int = 0  # held open right now
    most_held: int = 0
    first_listing: asyncio.Event = field(default_factory=asyncio.Event)

    async def ListSandboxes(self, request: Any, context: Any) -> pb.ListSandboxesResponse:
        self.listings += 1
        self.first_listing.set()
        if self.hang:
            self.held += 1
            self.most_held = max(self.most_held, self.held)
            try:
                await self.release.wait()
            finally:
                self.held -= 1
        return pb.ListSandboxesResponse(reports_creating=True)

    async def ListLayers(self, request: Any, context: Any) -> pb.ListLayersResponse:
        return pb.ListLayersResponse(layers=self.layers)

    async def DeleteLayers(self, request: Any, context: Any) -> pb.DeleteLayersResponse:
        return pb.DeleteLayersResponse()

    async def Terminate(self, request: Any, context: Any) -> pb.TerminateResponse:
        return pb.TerminateResponse()


class Listener:
    """A TCP port of the CP's network (its database, its admin port, an agent): counts every
    connection the CP opens to it."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> Listener:
        self.server = await asyncio.start_server(self._on, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _on(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@contextlib.contextmanager
def hosts_entry(name: str) -> Iterator[Callable[[str], None]]:
    """``name`` in /etc/hosts (mallory's DNS, which she answers as she likes): the callable
    points it at an address; the line goes afterwards."""
    path = Path("/etc/hosts")

    def without() -> list[str]:
        return [line for line in path.read_text().splitlines() if line.split()[1:] != [name]]

    def point(ip: str) -> None:
        path.write_text("\n".join([*without(), f"{ip} {name}"]) + "\n")  # in place: may be a mount

    try:
        yield point
    finally:
        path.write_text("\n".join(without()) + "\n")


# ------------------------------------------------------------------ platforms and people


@pytest.fixture(scope="module")
async def strict(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessCP]:
    """A CP with production's allow-list (and one address for the rebinding test)."""
    home = Path(tmp_path_factory.mktemp("strict-cp"))
    async with InProcessCP(db_url, home, byoc_allowed_cidrs=STRICT_CIDRS) as server:
        yield server


async def _byoc_owner(cp: InProcessCP) -> User:
    admin = await cp.signup(admin=True)
    owner = await cp.signup()
    await set_byoc(admin, owner.team_id)
    return owner


@pytest.fixture(scope="module")
async def mallory(strict: InProcessCP) -> User:
    return await _byoc_owner(strict)


async def _register(cp: InProcessCP, token: str, address: str) -> Any:
    return await cp.http.post("/v1/hosts/register", json={"token": token, "address": address, **SPECS})


async def _retire(cp: InProcessCP, *host_ids: str) -> None:
    """Out of every later pass of this module's CPs (their agents are gone)."""
    for h in host_ids:
        await cp.sql("UPDATE hosts SET status = 'offline' WHERE id = :h", h=ids.parse_id(ids.Kind.HOST, h))


# ------------------------------------------------------------------ registration


REFUSED = [
    "127.0.0.1:5432",  # the CP's database
    "127.0.0.1:50051",  # an agent on the CP's machine
    "10.1.2.3:50051",
    "172.16.0.5:50051",
    "192.168.1.10:50051",
    "169.254.169.254:80",  # a cloud's metadata service
    "100.64.0.1:50051",  # CGNAT
    "0.0.0.0:50051",
    "224.0.0.1:50051",
    "[::1]:50051",
    "[::ffff:127.0.0.1]:5432",
    "[fe80::1]:50051",
    "[fd00::1]:50051",
    "localhost:5432",  # a name that resolves to loopback
]


@pytest.mark.parametrize("address", REFUSED)
async def test_a_byoc_host_cannot_register_at_an_internal_address(
    strict: InProcessCP, mallory: User, address: str
) -> None:
    host_id, token = await mallory.create_host("byoc", mallory.team_id)
    r = await _register(strict, token, address)
    assert r.status_code == 400, r.text[:200]
    assert "WARREN_BYOC_ALLOWED_CIDRS" in r.json()["error"]["message"], r.text[:200]
    rows = await strict.sql(
        "SELECT h.status, h.address, t.used_at FROM hosts h JOIN host_tokens t ON t.host_id = h.id"
        " WHERE h.id = :h",
        h=ids.parse_id(ids.Kind.HOST, host_id),
    )
    assert [(r.status, r.address, r.used_at) for r in rows] == [("pending", "", None)]  # token unspent


async def test_a_platform_host_is_not_held_to_the_byoc_allow_list(strict: InProcessCP) -> None:
    admin = await strict.signup(admin=True)
    host_id, token = await admin.create_host("regular")
    r = await _register(strict, token, "127.0.0.9:1")
    assert r.status_code == 201, r.text
    assert r.json()["host"]["address"] == "127.0.0.9:1"
    await _retire(strict, host_id)


# ------------------------------------------------------------------ dialling


async def _dial_everything(cp: InProcessCP, owner: User, host_id: str) -> None:
    """What dials a host: a monitor pass, a layer collection, a forced delete."""
    await cp.app.state.monitor.run_once()
    await cp.app.state.monitor.settled()
    await layer_gc.collect(cp.engine, cp.app.state.store, cp.pool, grace_s=OLD_S)
    r = await owner.req("DELETE", f"/v1/hosts/{host_id}", params={"force": "true"})
    assert r.status_code == 204, r.text


@pytest.mark.root  # writes /etc/hosts
async def test_a_name_that_resolves_elsewhere_after_registration_is_not_dialled(
    strict: InProcessCP, mallory: User
) -> None:
    """mallory's name resolves to an allowed address when she registers, then to 127.0.0.1
    (her DNS server, TTL 0). The CP dials the address it checked, never the name again."""
    inside = await Listener().start()
    name = f"rebind-{uuid.uuid4().hex[:12]}.warren.test"
    try:
        with hosts_entry(name) as point:
            point(ALLOWED_ELSEWHERE)
            host_id, token = await mallory.create_host("byoc", mallory.team_id)
            r = await _register(strict, token, f"{name}:{inside.port}")
            assert r.status_code == 201, r.text
            assert r.json()["host"]["address"] == f"{ALLOWED_ELSEWHERE}:{inside.port}", r.text
            point("127.0.0.1")
            await _dial_everything(strict, mallory, host_id)
        assert inside.connections == 0, "the CP dialled the name's new address"
    finally:
        await inside.stop()


@pytest.mark.parametrize("stored", ["ip", "name"])
async def test_a_byoc_row_at_an_internal_address_is_never_dialled(
    strict: InProcessCP, mallory: User, stored: str
) -> None:
    """A host registered before the allow-list existed (or under a wider one) keeps its
    address: 127.0.0.1, or a name resolving there. No call is made to it."""
    inside = await Listener().start()
    try:
        host_id, token = await mallory.create_host("byoc", mallory.team_id)
        r = await _register(strict, token, f"{ALLOWED_ELSEWHERE}:{inside.port}")
        assert r.status_code == 201, r.text
        address = f"127.0.0.1:{inside.port}" if stored == "ip" else f"localhost:{inside.port}"
        await strict.sql(
            "UPDATE hosts SET address = :a WHERE id = :h", a=address, h=ids.parse_id(ids.Kind.HOST, host_id)
        )
        await _dial_everything(strict, mallory, host_id)
        assert inside.connections == 0
    finally:
        await inside.stop()


# ------------------------------------------------------------------ the layer collector


async def _layer(cp: InProcessCP, text: bytes) -> str:
    """A layer in the store nothing references (alice's, her template deleted), 10 years old."""

    async def chunks() -> AsyncIterator[bytes]:
        yield text

    meta = await cp.app.state.store.put(chunks(), max_bytes=1 << 20)
    await cp.sql(
        "INSERT INTO layers (digest, size_bytes, created_at) VALUES (:d, :s, now() - interval '3650 days')",
        d=meta.digest, s=meta.size,
    )  # fmt: skip
    return str(meta.digest)


@pytest.mark.parametrize(("kind", "kept"), [("byoc", False), ("regular", True)])
async def test_an_in_use_claim_keeps_a_layer_only_for_the_hosts_own_team(
    cp: InProcessCP, tmp_path: Path, kind: str, kept: bool
) -> None:
    """mallory's agent says alice's dead layer is in use: it stayed in the store for ever. Now a
    BYOC host's claim counts only for layers its own team uses; a platform host is believed."""
    admin = await cp.signup(admin=True)
    owner = await _byoc_owner(cp)
    digest = await _layer(cp, f"alice's layer {uuid.uuid4()}".encode())
    agent = Scripted(layers=[pb.LayerInfo(digest=digest, size=1, in_use=True)])
    creator = owner if kind == "byoc" else admin
    host_id, token = await creator.create_host(kind, owner.team_id if kind == "byoc" else None)
    server, _ = await serve_fake_agent(agent, cp.url, token, tmp_path / "agent")
    try:
        report = await layer_gc.collect(cp.engine, cp.app.state.store, cp.pool, grace_s=OLD_S)
        assert report.ran
        assert (digest in report.store_deleted) is not kept, report
        assert await cp.app.state.store.exists(digest) is kept
    finally:
        await server.stop(0)
        await _retire(cp, host_id)


# ------------------------------------------------------------------ the monitor


async def _hosts_of(cp: InProcessCP, owner: User, agent: Scripted, n: int, base: Path) -> list[Any]:
    servers = []
    for i in range(n):
        host_id, token = await owner.create_host("byoc", owner.team_id)
        server, _ = await serve_fake_agent(agent, cp.url, token, base / f"h{i}")
        servers.append((host_id, server))
    return servers


async def test_one_teams_hung_hosts_do_not_hold_another_teams_check(cp: InProcessCP, tmp_path: Path) -> None:
    """mallory's 20 hosts hold every ListSandboxes open to its deadline: they took all the
    monitor's BYOC slots (4 of 8), and bob's host was checked only after all 20 of hers
    (~50 s). Now one team takes at most half of them (2) and bob's check starts at once."""
    mallory, bob = await _byoc_owner(cp), await _byoc_owner(cp)
    hung, quick = Scripted(hang=True), Scripted()
    hers = await _hosts_of(cp, mallory, hung, 20, tmp_path / "mallory")
    his = await _hosts_of(cp, bob, quick, 1, tmp_path / "bob")
    monitor = HostMonitor(cp.engine, cp.pool, audit.record, concurrency=8)  # type: ignore[arg-type]
    try:
        await monitor.run_once()
        await asyncio.wait_for(quick.first_listing.wait(), WAIT_S)
        asked_first = hung.listings  # how many of hers were asked before his
        assert asked_first <= 4, f"bob's check waited behind {asked_first} of mallory's"
        assert hung.most_held <= 2, f"mallory's hosts held {hung.most_held} monitor slots at once"
    finally:
        hung.release.set()
        await monitor.stop()
        for _, server in hers + his:
            await server.stop(0)
        await _retire(cp, *(h for h, _ in hers + his))
