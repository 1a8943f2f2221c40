"""`warren team member list|remove [--revoke-keys]` (docs/auth.md "API keys and departing
members"), through typer's CliRunner against the worker's shared live platform."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import jwt
import pytest
from typer.testing import CliRunner

from tests.harness.cp import PASSWORD
from tests.harness.platform import Platform
from tests.harness.tenant import signup
from tests.security.test_attack_session15_envd_tokens import add_member
from warren.cli.main import app

pytestmark = [pytest.mark.shared_platform]


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def _status(url: str, key: str) -> int:
    return httpx.get(f"{url}/v1/sandboxes", headers={"X-API-Key": key}, timeout=60).status_code


def test_member_remove_keeps_or_revokes_their_keys(platform: Platform, platform_dir: Path) -> None:
    owner = signup(platform.url, "cli-mkr-owner")
    keeper = add_member(platform, owner, "cli-mkr-keeper")
    leaver = add_member(platform, owner, "cli-mkr-leaver")
    home = platform_dir / f"cli-mkr-{uuid.uuid4().hex[:8]}"
    home.mkdir()
    env = {"XDG_CONFIG_HOME": str(home), "WARREN_URL": "", "WARREN_API_KEY": "", "WARREN_ACCESS_TOKEN": ""}
    email = jwt.decode(owner.token, options={"verify_signature": False})["email"]
    code, _, err = run(env, "login", "--url", platform.url, "--email", email, "--password", PASSWORD)
    assert code == 0, err

    code, out, err = run(env, "team", "member", "list", "--json")
    assert code == 0, err
    members = {m["user_id"]: m for m in json.loads(out)}
    assert {keeper.user_id, leaver.user_id} <= members.keys()

    # By email, no flag: removed, the key they made listed and still working.
    code, out, err = run(env, "team", "member", "remove", members[keeper.user_id]["email"])
    assert code == 0, err
    assert "Still live" in out and "cli-mkr-keeper-key" in out and "warren key revoke" in out, out
    assert _status(platform.url, keeper.team_key) == 200

    code, out, err = run(env, "team", "member", "remove", leaver.user_id, "--revoke-keys", "--json")
    assert code == 0, err
    done = json.loads(out)
    assert [k["name"] for k in done["revoked_keys"]] == ["cli-mkr-leaver-key"] and done["live_keys"] == []
    assert _status(platform.url, leaver.team_key) == 401
    assert _status(platform.url, keeper.team_key) == 200

    code, _, err = run(env, "team", "member", "remove", "nobody@example.com")
    assert code == 1 and "not a member" in err, err
