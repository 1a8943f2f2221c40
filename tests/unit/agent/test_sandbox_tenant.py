"""Whose share of the agent's per-tenant limits a sandbox uses (record.HostSandbox.tenant): its
owner (CreateSandboxRequest.owner_account_id, else owner_team_id), not its template's team, which
every sandbox of the built-in template shares (session 22: the socket watchdog's workers and the
file transfer windows were shared by that), and not each of one account's teams (session 23)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from warren.agent import record
from warren.agent.create import check_request
from warren.agent.record import HostSandbox
from warren.errors import InvalidRequest

ZERO = str(uuid.UUID(int=0))


def _request(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        sandbox_id="", team_id=ZERO, template_id="", template="minimal", vcpus=1, memory_mb=256,
        disk_size_mb=0, timeout_sec=0, internet=True, env={}, egress_allow=[],
    )  # fmt: skip
    return {**base, **over}


def test_the_owner_is_kept_and_checked() -> None:
    owner = uuid.uuid4()
    assert check_request(**_request(owner_team=str(owner).upper())).owner_team == str(owner)
    assert check_request(**_request()).owner_team == ""  # an older CP: not said
    with pytest.raises(InvalidRequest, match="owner_team_id"):
        check_request(**_request(owner_team="../other"))


def test_the_owning_account_is_kept_and_checked() -> None:
    account = uuid.uuid4()
    req = check_request(**_request(owner_team=str(uuid.uuid4()), owner_account=str(account).upper()))
    assert req.owner_account == str(account) and req.tenant == str(account)
    assert check_request(**_request(owner_account="")).owner_account == ""  # the platform team
    with pytest.raises(InvalidRequest, match="owner_account_id"):
        check_request(**_request(owner_account="x"))


def _record(**over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = dict(
        id="sb-x", status="running", team_id=ZERO, template_id="", template="minimal", vcpus=1,
        memory_mb=256, disk_size_mb=512, timeout_sec=0, internet=True, env={}, slot=3,
        host_ip="10.11.0.14", created_at=0.0, last_active_at=0.0, lower_layers=[],
        snapshot_layers=[], base_config={}, pid=0,
    )  # fmt: skip
    return {**rec, **over}


def _load(tmp: Path, rec: dict[str, Any]) -> HostSandbox:
    (tmp / record.RECORD_FILE).write_text(json.dumps(rec))
    sb = record.load(tmp)
    assert sb is not None
    return sb


def test_two_teams_on_the_built_in_template_are_two_tenants(tmp_path: Path) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    one = _load(tmp_path, _record(id="sb-a", owner_team=a))
    two = _load(tmp_path, _record(id="sb-b", owner_team=b))
    assert one.team_id == two.team_id == ZERO  # the template's team: the same
    assert (one.tenant, two.tenant) == (a, b)


def test_one_accounts_teams_are_one_tenant(tmp_path: Path) -> None:
    # A user may own several teams (at most 10): each a share of its own, they multiplied every
    # per-team limit of the agent (session 23).
    account = str(uuid.uuid4())
    one = _load(tmp_path, _record(id="sb-a", owner_team=str(uuid.uuid4()), owner_account=account))
    two = _load(tmp_path, _record(id="sb-b", owner_team=str(uuid.uuid4()), owner_account=account))
    assert one.owner_team != two.owner_team and one.tenant == two.tenant == account


def test_a_record_without_an_owner_is_a_tenant_of_its_own(tmp_path: Path) -> None:
    old = _load(tmp_path, _record(id="sb-old"))  # written before the field
    assert old.owner_team == "" and old.tenant == "sb-old"
    record.save(tmp_path, old)
    assert _load(tmp_path, json.loads((tmp_path / record.RECORD_FILE).read_text())).tenant == "sb-old"


async def test_a_snapshot_exports_install_takes_its_owners_turn(tmp_path: Path) -> None:
    """layer_slots gives a team at most half the install slots and half the queue while another
    team waits: keyed by the template's team, every team's exports from ``minimal`` sandboxes
    queued as one team (found reading the code: one tenant's exports took the turns and the
    queue share of every team on the built-in template)."""
    from warren.agent import snapshot_export

    owner = str(uuid.uuid4())
    sb = _load(tmp_path, _record(id="sb-exp", status="paused", owner_team=owner))
    turns: list[str] = []
    tar = tmp_path / "layer.tar"

    async def export(*_: object, tenant: str) -> tuple[Path, object]:
        turns.append(tenant)  # its export's turn (fair_turns) is its owner's too
        tar.write_bytes(b"")
        return tar, SimpleNamespace(digest="d" * 64, size=0)

    async def stream_and_install(_tar: Path, _meta: object, *, team: str) -> AsyncIterator[bytes]:
        turns.append(team)
        yield b"chunk"

    layers = SimpleNamespace(export=export, stream_and_install=stream_and_install)
    m = SimpleNamespace(sandbox=lambda _: sb, layers=layers, sandboxes_dir=tmp_path)
    got = [x async for x in snapshot_export.export_snapshot(m, "sb-exp")]  # type: ignore[arg-type]
    assert got[0] == b"chunk" and turns == [owner, owner]
