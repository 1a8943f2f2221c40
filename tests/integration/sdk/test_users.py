"""Exec and files as a named user, end to end: the SDK's ``user=``, the REST API's ``user`` (body
field, upload query parameter, WebSocket start frame) and its checks, against a live platform.
The user is made the way a tenant would, by editing the sandbox's /etc/passwd as root."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.harness.platform import Platform
from warren import AsyncSandbox, Sandbox
from warren.sdk import InvalidArgumentError, PermissionDeniedError

pytestmark = [pytest.mark.root, pytest.mark.timeout(600), pytest.mark.shared_platform]

ADD_USER = """
set -e
echo 'user:x:1000:1000::/home/user:/bin/bash' >> /etc/passwd
echo 'user:x:1000:' >> /etc/group
echo 'dev:x:3000:user' >> /etc/group
mkdir -p /home/user && chown 1000:1000 /home/user && chmod 0750 /home/user
echo secret > /root/secret && chmod 0600 /root/secret
echo shared > /shared && chmod 0600 /shared
"""


@pytest.fixture(scope="module")
def sbx(platform: Platform) -> Iterator[Sandbox]:
    with Sandbox.create(memory_mb=256, **platform.sdk()) as s:
        s.commands.run(["sh", "-c", ADD_USER], check=True)
        yield s


def test_commands_run_as_user_unary_streamed_and_background(sbx: Sandbox) -> None:
    script = 'id -u; id -G; echo "$HOME $USER $LOGNAME"; pwd'
    r = sbx.commands.run(script, user="user")
    uid, groups, env, cwd = r.stdout.splitlines()
    assert (uid, sorted(groups.split()), env, cwd) == (
        "1000",
        ["1000", "3000"],
        "/home/user user user",
        "/home/user",
    )
    seen: list[str] = []
    r = sbx.commands.run("whoami; pwd", user="user", on_stdout=seen.append)  # the WebSocket path
    assert "".join(seen) == "user\n/home/user\n" and r.exit_code == 0
    h = sbx.commands.run("sleep 0.2; id -un", user="user", background=True)
    assert h.wait().stdout == "user\n"
    # Root stays the default, and an explicit cwd still wins.
    assert sbx.commands.run("id -u; pwd").stdout == "0\n/root\n"
    assert sbx.commands.run("pwd", user="user", cwd="/tmp").stdout == "/tmp\n"


def test_unknown_and_malformed_users_are_400(sbx: Sandbox, platform: Platform) -> None:
    with pytest.raises(InvalidArgumentError, match="no such user: mallory"):
        sbx.commands.run("true", user="mallory")
    with pytest.raises(InvalidArgumentError, match="no such user: mallory"):
        sbx.commands.run("true", user="mallory", on_stdout=print)
    with pytest.raises(InvalidArgumentError, match="no such user: mallory"):
        sbx.files.write("/tmp/x", "x", user="mallory")
    for bad in ("../etc", "a b", "x" * 33, "-rf", "root\n", "ü"):
        with pytest.raises(InvalidArgumentError, match="invalid user"):
            sbx.commands.run("true", user=bad)
        with pytest.raises(InvalidArgumentError, match="invalid user"):
            sbx.commands.run("true", user=bad, on_stdout=print)
        with pytest.raises(InvalidArgumentError, match="invalid user"):
            sbx.files.read("/etc/hostname", user=bad)
        with pytest.raises(InvalidArgumentError, match="invalid user"):
            sbx.files.write("/tmp/x", "x", user=bad)
    base = f"{platform.url}/v1/sandboxes/{sbx.id}"
    with httpx.Client(headers=platform.headers, timeout=60) as http:
        for body in (
            {"cmd": "true", "user": 5},
            {"cmd": "true", "user": ["root"]},
            {"cmd": "true", "user": "a\u0000"},
        ):
            r = http.post(f"{base}/exec", json=body)
            assert r.status_code == 400, r.text
        r = http.post(f"{base}/files/stat", json={"path": "/", "user": None})
        assert r.status_code == 400, r.text
        r = http.post(
            f"{base}/files/write", params={"user": "x" * 100}, files={"path": (None, "/tmp/y"), "file": b"y"}
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text


def test_files_as_user_are_theirs_and_relative_to_home(sbx: Sandbox) -> None:
    sbx.files.write("notes/a.txt", "hello", user="user")
    sbx.files.write_stream("notes/big.bin", iter([b"x" * 65536] * 20), user="user")
    out = sbx.commands.run(
        "stat -c '%u:%g %a %n' /home/user/notes /home/user/notes/a.txt /home/user/notes/big.bin"
    ).stdout
    assert out.splitlines() == [
        "1000:1000 755 /home/user/notes",
        "1000:1000 644 /home/user/notes/a.txt",
        "1000:1000 644 /home/user/notes/big.bin",
    ]
    assert sbx.files.read("notes/a.txt", user="user") == "hello"
    assert b"".join(sbx.files.read_stream("notes/big.bin", user="user")) == b"x" * 65536 * 20
    info = sbx.files.get_info("notes/a.txt", user="user")
    assert (info.path, info.owner, info.size) == ("/home/user/notes/a.txt", "user", 5)
    assert sorted(e.name for e in sbx.files.list("notes", user="user")) == ["a.txt", "big.bin"]
    assert sbx.files.make_dir("made", user="user") is True
    assert sbx.files.rename("notes/a.txt", "made/a.txt", user="user").path == "/home/user/made/a.txt"
    assert sbx.files.exists("made/a.txt", user="user")
    sbx.files.remove("notes", user="user")
    assert not sbx.files.exists("/home/user/notes")


def test_user_cannot_read_or_write_what_is_roots(sbx: Sandbox) -> None:
    for path in ("/shared", "/root/secret"):
        with pytest.raises(PermissionDeniedError) as ei:
            sbx.files.read(path, user="user")
        assert ei.value.status == 403 and ei.value.code == "permission_denied"
        with pytest.raises(PermissionDeniedError):
            b"".join(sbx.files.read_stream(path, user="user"))
    for path in ("/root/planted", "/etc/passwd", "/shared", "/usr/bin/evil"):
        with pytest.raises(PermissionDeniedError):
            sbx.files.write(path, "pwned", user="user")
        with pytest.raises(PermissionDeniedError):
            sbx.files.write_stream(path, iter([b"pwned"]), user="user")
    for call in (
        lambda: sbx.files.list("/root", user="user"),
        lambda: sbx.files.make_dir("/usr/evil", user="user"),
        lambda: sbx.files.remove("/shared", user="user"),
        lambda: sbx.files.rename("/shared", "/home/user/stolen", user="user"),
    ):
        with pytest.raises(PermissionDeniedError):
            call()
    r = sbx.commands.run("cat /root/secret /shared", user="user")
    assert r.exit_code != 0 and "Permission denied" in r.stderr
    # Nothing changed: root still reads what it wrote, and nothing was planted.
    r = sbx.commands.run(
        "cat /root/secret /shared; ls /root/planted /usr/bin/evil /usr/evil 2>&1 | wc -l;"
        "grep -c pwned /etc/passwd"
    )
    assert r.stdout.splitlines() == ["secret", "shared", "3", "0"]


async def test_async_sdk_takes_user_too(platform: Platform) -> None:
    async with await AsyncSandbox.create(memory_mb=256, **platform.sdk()) as sbx:
        await sbx.commands.run(["sh", "-c", ADD_USER], check=True)
        assert (await sbx.commands.run("id -un", user="user")).stdout == "user\n"
        await sbx.files.write("a", b"x", user="user")
        assert (await sbx.files.get_info("a", user="user")).owner == "user"
        assert await sbx.files.read("/home/user/a", format="bytes", user="user") == b"x"
