"""``warren sandbox create --runtime``: the option reaches the server, whose refusals are printed
(an unknown runtime, one no host offers); and the sandbox table shows a sandbox's runtime and how
a paused one is paused. The control plane here has no host: a create that runs on gVisor is in
tests/integration/cp/api/test_gvisor_sandboxes.py."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.harness.cp import InProcessCP
from warren import ids
from warren.cli.client import sandbox as sandbox_cli
from warren.cli.main import app


async def _run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    # The CLI's client blocks its thread: off the loop that serves the control plane.
    r = await asyncio.to_thread(lambda: CliRunner().invoke(app, list(args), env=env, catch_exceptions=False))
    return r.exit_code, r.stdout, r.stderr


async def test_runtime_option_and_what_the_table_shows(
    cp: InProcessCP, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wide table, whatever width the CLI's console settled on in this worker (it truncated
    # RUNTIME to "RUN…" in CI, although COLUMNS was 200 for the call).
    monkeypatch.setattr(sandbox_cli, "out", Console(width=200))
    user = await cp.signup()
    env = {"WARREN_URL": cp.url, "WARREN_API_KEY": await user.api_key(), "XDG_CONFIG_HOME": "/nonexistent"}
    code, out, err = await _run(env, "sandbox", "create", "--help")
    assert code == 0 and "--runtime" in out
    code, _, err = await _run(env, "sandbox", "create", "--runtime", "gvisor")
    assert code != 0 and "no_hosts_available" in err and "gvisor runtime" in err
    code, _, err = await _run(env, "sandbox", "create", "--runtime", "kata")
    assert code != 0 and "runtime" in err and "invalid_request" in err
    # The table: a paused gVisor sandbox says how it is paused.
    sb = ids.new_uuid()
    await cp.sql(
        """INSERT INTO sandboxes (id, team_id, host_id, status, runtime, paused_state, started_at)
           VALUES (:id, :team, :host, 'paused', 'gvisor', 'disk', now())""",
        id=sb, team=ids.parse_id(ids.Kind.TEAM, user.team_id), host=uuid.uuid4(),
    )  # fmt: skip
    code, out, err = await _run(env, "sandbox", "get", ids.sandbox_id(sb))
    assert code == 0, err
    assert "RUNTIME" in out and "gvisor" in out and "paused (disk)" in out
    # An ended one says why it ended (docs/api.md §2).
    await cp.sql("UPDATE sandboxes SET status = 'stopped', end_reason = 'host_lost' WHERE id = :id", id=sb)
    code, out, err = await _run(env, "sandbox", "get", ids.sandbox_id(sb))
    assert code == 0 and "stopped (host_lost)" in out, err
