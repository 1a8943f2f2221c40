"""The `warren` CLI end to end against a live platform: typer's CliRunner for most commands
(in process, the real `warren.cli.main` app), a subprocess for the interactive shell."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.harness.cp import PASSWORD
from tests.harness.platform import Platform
from warren.cli.main import app

pytestmark = [pytest.mark.root, pytest.mark.timeout(600), pytest.mark.shared_platform]


@pytest.fixture(scope="module")
def cli_env(platform: Platform, platform_dir: Path) -> dict[str, str]:
    home = platform_dir / "cli-home"
    home.mkdir(exist_ok=True)
    env = {"XDG_CONFIG_HOME": str(home), "WARREN_URL": "", "WARREN_API_KEY": "", "WARREN_ACCESS_TOKEN": ""}
    code, _, err = run(env, "login", "--url", platform.url, "--email", platform.email, "--password", PASSWORD)
    assert code == 0, err
    return env


@pytest.fixture
def fresh_env(platform_dir: Path, tmp_path: Path) -> dict[str, str]:
    home = platform_dir / f"cli-{tmp_path.name}"
    home.mkdir()
    return {"XDG_CONFIG_HOME": str(home), "WARREN_URL": "", "WARREN_API_KEY": "", "WARREN_ACCESS_TOKEN": ""}


def run(env: dict[str, str], *args: str, input: str | None = None) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args), env=env, input=input, catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def js(env: dict[str, str], *args: str) -> object:
    code, out, err = run(env, *args, "--json")
    assert code == 0, (args, out, err)
    return json.loads(out)


def test_login_and_help(platform: Platform, fresh_env: dict[str, str]) -> None:
    cli_env = fresh_env
    code, out, _ = run(cli_env, "--help")
    assert code == 0 and "sandbox" in out and "snapshot" in out
    code, out, _ = run(cli_env, "sandbox", "exec", "--help")
    assert code == 0 and "Examples" in out
    code, _, err = run(cli_env, "sandbox", "list")
    assert code == 1 and "not logged in" in err

    code, out, err = run(cli_env, "login", "--url", platform.url, "--email", platform.email,
                         "--password", "wrong-password")  # fmt: skip
    assert code == 1 and "401" in err
    info = js(cli_env, "login", "--url", platform.url, "--email", platform.email, "--password", PASSWORD)
    cfg_path = Path(cli_env["XDG_CONFIG_HOME"]) / "warren" / "config.json"
    assert info == {"url": platform.url, "config": str(cfg_path), "email": platform.email}  # type: ignore[comparison-overlap]
    assert stat.S_IMODE(cfg_path.stat().st_mode) == 0o600
    cfg = json.loads(cfg_path.read_text())
    assert cfg["api_key"].startswith("wrn_") and cfg["token"] and cfg["url"] == platform.url


def test_sandbox_lifecycle_exec_and_files(cli_env: dict[str, str], platform_dir: Path) -> None:
    sb = js(cli_env, "sandbox", "create", "--timeout", "300", "-e", "WHO=cli")
    assert isinstance(sb, dict) and sb["status"] == "running" and sb["timeout_sec"] == 300
    sid = sb["id"]
    try:
        assert sid in [s["id"] for s in js(cli_env, "sandbox", "list")]  # type: ignore[union-attr]
        code, out, _ = run(cli_env, "sandbox", "list")
        assert code == 0 and sid in out and "running" in out
        assert js(cli_env, "sandbox", "get", sid)["id"] == sid  # type: ignore[index]

        code, out, err = run(cli_env, "sandbox", "exec", sid, "echo $WHO; echo oops >&2; exit 7")
        assert (code, out, err) == (7, "cli\n", "oops\n")
        code, out, _ = run(cli_env, "sandbox", "exec", sid, "--", "printf", "%s,", "a b", "c")
        assert (code, out) == (0, "a b,c,")
        r = js(cli_env, "sandbox", "exec", sid, "cat /etc/hostname >/dev/null; echo json")
        assert r == {"exit_code": 0, "stdout": "json\n", "stderr": "", "error": None}  # type: ignore[comparison-overlap]

        local = platform_dir / "upload.bin"
        local.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
        code, _, err = run(cli_env, "files", "put", sid, str(local), "/root/up/u.bin")
        assert code == 0, err
        back = platform_dir / "download.bin"
        code, _, err = run(cli_env, "files", "get", sid, "/root/up/u.bin", str(back))
        assert code == 0, err
        assert back.read_bytes() == local.read_bytes()
        entries = js(cli_env, "files", "ls", sid, "/root", "--depth", "2")
        assert {"path": "/root/up/u.bin", "size": local.stat().st_size}.items() <= next(
            e
            for e in entries
            if e["path"] == "/root/up/u.bin"  # type: ignore[union-attr]
        ).items()
        code, out, _ = run(cli_env, "files", "ls", sid, "/root/up")
        assert code == 0 and "u.bin" in out
        code, _, err = run(cli_env, "files", "get", sid, "/root/missing", str(platform_dir / "x"))
        assert code == 1 and "404" in err and not (platform_dir / "x").exists()

        assert js(cli_env, "sandbox", "pause", sid)["status"] == "paused"  # type: ignore[index]
        code, _, err = run(cli_env, "sandbox", "exec", sid, "true")
        assert code == 1 and "409" in err
        assert js(cli_env, "sandbox", "resume", sid)["status"] == "running"  # type: ignore[index]

        snap = js(cli_env, "snapshot", "create", sid, "--name", "cli-snap")
        assert snap["name"] == "cli-snap" and snap["kind"] == "filesystem"  # type: ignore[index]
        assert "cli-snap" in [t["name"] for t in js(cli_env, "snapshot", "list", "--type", "snapshot")]  # type: ignore[union-attr]
        code, out, _ = run(cli_env, "snapshot", "list")
        assert code == 0 and "cli-snap" in out and "minimal" in out
        code, _, err = run(cli_env, "snapshot", "create", sid, "--name", "cli-snap")
        assert code == 1 and "already_exists" in err
        code, out, _ = run(cli_env, "snapshot", "delete", "cli-snap")
        assert code == 0 and "deleted" in out
    finally:
        code, out, _ = run(cli_env, "sandbox", "kill", sid)
    assert code == 0 and "stopped" in out
    assert js(cli_env, "sandbox", "get", sid)["status"] == "stopped"  # type: ignore[index]
    code, _, err = run(cli_env, "sandbox", "get", "sb-" + "0" * 25)
    assert code == 1 and "404" in err


def test_keys_and_hosts(platform: Platform, cli_env: dict[str, str]) -> None:
    key = js(cli_env, "key", "create", "--name", "ci")
    assert key["key"].startswith("wrn_") and key["name"] == "ci"  # type: ignore[index]
    assert key["id"] in [k["id"] for k in js(cli_env, "key", "list")]  # type: ignore[index,union-attr]
    code, out, _ = run(cli_env, "key", "list")
    assert code == 0 and "ci" in out
    code, out, _ = run(cli_env, "key", "revoke", key["id"])  # type: ignore[index]
    assert code == 0
    assert key["id"] not in [k["id"] for k in js(cli_env, "key", "list")]  # type: ignore[index,union-attr]

    hosts = js(cli_env, "host", "list")
    assert any(h["status"] == "online" for h in hosts)  # type: ignore[union-attr]
    new = js(cli_env, "host", "create", "--type", "regular")
    assert new["registration_token"] and new["host"]["status"] == "pending"  # type: ignore[index]
    code, out, _ = run(cli_env, "host", "list")
    assert code == 0 and new["host"]["id"] in out  # type: ignore[index]
    code, _, _ = run(cli_env, "host", "delete", new["host"]["id"])  # type: ignore[index]
    assert code == 0
    assert new["host"]["id"] not in [h["id"] for h in js(cli_env, "host", "list")]  # type: ignore[index,union-attr]


def test_interactive_shell(platform: Platform, cli_env: dict[str, str]) -> None:
    sb = js(cli_env, "sandbox", "create")
    sid = sb["id"]  # type: ignore[index]
    try:
        p = subprocess.run(
            [sys.executable, "-m", "warren.cli.main", "sandbox", "shell", sid],
            input=b"echo shell-says-$((6*7))\ntty\nexit 3\n",
            capture_output=True,
            timeout=60,
            env={**os.environ, **cli_env},
        )
        out = p.stdout.decode(errors="replace")
        assert p.returncode == 3, (out, p.stderr)
        assert "shell-says-42" in out and "/dev/pts/" in out  # a real terminal inside
    finally:
        run(cli_env, "sandbox", "kill", sid)
