"""`warren login` for a user with no team (session 14, docs/spec.md §2.1): logged in without an
API key, told what to do; `warren invitations list|accept|decline` and `warren team
list|create` get them into a team, and the CLI then acts in it. Against the worker's shared live
platform, through typer's CliRunner (the real `warren.cli.main` app)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tests.harness.cp import PASSWORD
from tests.harness.invitations import verify_email
from tests.harness.platform import Platform
from tests.harness.tenant import signup
from warren.cli.main import app

pytestmark = [pytest.mark.shared_platform]


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def _teamless_email(url: str) -> str:
    email = f"cli-tess-{uuid.uuid4().hex[:10]}@example.com"
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "Tess"})
        assert r.status_code == 201, r.text
        h = {"Authorization": f"Bearer {r.json()['token']}"}
        verify_email(c, h)  # session 14: only a verified email accepts an invitation
        assert c.delete(f"/v1/teams/{r.json()['team_id']}", headers=h).status_code == 204
    return email


def _env(platform_dir: Path) -> dict[str, str]:
    home = platform_dir / f"cli-teamless-{uuid.uuid4().hex[:8]}"
    home.mkdir()
    return {"XDG_CONFIG_HOME": str(home), "WARREN_URL": "", "WARREN_API_KEY": "", "WARREN_ACCESS_TOKEN": ""}


def _config(env: dict[str, str]) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        (Path(env["XDG_CONFIG_HOME"]) / "warren" / "config.json").read_text()
    )
    return data


def test_teamless_login_then_accept_an_invitation(platform: Platform, platform_dir: Path) -> None:
    env = _env(platform_dir)
    email = _teamless_email(platform.url)
    code, out, err = run(env, "login", "--url", platform.url, "--email", email, "--password", PASSWORD)
    assert code == 0, err
    assert "not in a team yet" in out and "warren invitations accept" in out, out
    saved = _config(env)
    assert saved["team_id"] is None and "api_key" not in saved and saved["token"], saved
    code, _, err = run(env, "key", "list")
    assert code == 1 and "accept an invitation or create a team" in " ".join(err.split()), err

    owner = signup(platform.url, "cli-owner")
    headers = {"Authorization": f"Bearer {owner.token}"}
    invited = []
    for _ in range(2):
        r = httpx.post(f"{platform.url}/v1/teams", json={"name": "CLI Crew"}, headers=headers, timeout=60)
        assert r.status_code == 201, r.text
        team = r.json()["id"]
        r = httpx.post(
            f"{platform.url}/v1/auth/switch-team", json={"team_id": team}, headers=headers, timeout=60
        )
        h = {"Authorization": f"Bearer {r.json()['token']}"}
        r = httpx.post(
            f"{platform.url}/v1/teams/{team}/members", json={"email": email}, headers=h, timeout=60
        )
        assert r.status_code == 201, r.text
        invited.append((team, r.json()["id"]))
    code, out, err = run(env, "invitations", "list", "--json")
    assert code == 0, err
    assert [i["id"] for i in json.loads(out)] == [inv for _, inv in reversed(invited)]
    code, out, err = run(env, "invitations", "decline", invited[0][1])
    assert code == 0 and "Declined" in out, err
    code, out, err = run(env, "invitations", "accept", invited[1][1])
    assert code == 0 and "Joined CLI Crew" in out and "now acts in this team" in out, (out, err)
    saved = _config(env)
    assert saved["team_id"] == invited[1][0] and str(saved["api_key"]).startswith("wrn_"), saved
    code, out, err = run(env, "key", "list", "--json")  # the user token now acts in the team
    assert code == 0 and [k["name"] for k in json.loads(out)] == ["warren-cli"], (out, err)
    code, out, err = run(env, "sandbox", "list", "--json")  # and so does the new API key
    assert code == 0 and json.loads(out) == [], (out, err)


def test_teamless_login_then_create_a_team(platform: Platform, platform_dir: Path) -> None:
    env = _env(platform_dir)
    email = _teamless_email(platform.url)
    code, _, err = run(env, "login", "--url", platform.url, "--email", email, "--password", PASSWORD)
    assert code == 0, err
    code, out, err = run(env, "team", "list", "--json")
    assert code == 0 and json.loads(out) == [], err
    code, out, err = run(env, "team", "create", "Fresh Start")
    assert code == 0 and "Created Fresh Start" in out and "now acts in this team" in out, (out, err)
    code, out, err = run(env, "team", "list", "--json")
    teams = json.loads(out)
    assert [(t["name"], t["role"]) for t in teams] == [("Fresh Start", "owner")]
    assert _config(env)["team_id"] == teams[0]["id"]
    code, out, err = run(env, "sandbox", "list", "--json")
    assert code == 0 and json.loads(out) == [], (out, err)
