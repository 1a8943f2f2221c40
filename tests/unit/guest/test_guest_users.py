"""Exec and files as a named user: the guest resolves the name from its own /etc/passwd and
/etc/group and does the work in a child that became the user.

The parsing tests read files of the test's own; the guest tests run the guest in a private mount
namespace whose /etc/passwd and /etc/group are the test's (bind mounts, hence root), so the
names resolve from those files as they would inside a sandbox.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.unit.guest.guest_helpers import RunningGuest
from warren.agent.guest_client import GuestClient, GuestError
from warren.guest.guest_agent import users
from warren.guest.guest_agent.protocol import GuestFail

PASSWD = """root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
broken:x:notanumber:1::/home/broken:/bin/sh
short:x:5
user:x:1000:1000::{home}:/bin/bash
nohome:x:1001:1001::relative/home:/bin/sh
"""
GROUP = """root:x:0:
user:x:1000:
audio:x:29:user,other
video:x:44:other
bad:x:zz:user
"""


def _db(tmp_path: Path, passwd: str, group: str = GROUP) -> tuple[str, str]:
    (tmp_path / "passwd").write_text(passwd)
    (tmp_path / "group").write_text(group)
    return str(tmp_path / "passwd"), str(tmp_path / "group")


# ------------------------------------------------------------------------------ parsing


def test_lookup_reads_passwd_and_member_groups(tmp_path: Path) -> None:
    pw, gr = _db(tmp_path, PASSWD.format(home="/home/user"))
    u = users.lookup("user", pw, gr)
    assert (u.uid, u.gid, u.home, u.shell) == (1000, 1000, "/home/user", "/bin/bash")
    assert u.groups == [1000, 29]  # primary first; the malformed group line is skipped
    assert users.lookup("nohome", pw, gr).home == "/"  # a relative home is no home


def test_unknown_and_malformed_users_are_refused_by_name(tmp_path: Path) -> None:
    pw, gr = _db(tmp_path, PASSWD.format(home="/home/user"))
    for name in ("nobody", "broken", "short"):
        with pytest.raises(GuestFail) as ei:
            users.lookup(name, pw, gr)
        assert (ei.value.kind, ei.value.message) == ("invalid_argument", f"no such user: {name}")
    for bad in ("", "-x", "a b", "x" * 33, "a:b", "a/b", "é", "a\n", "$"):
        with pytest.raises(GuestFail) as ei:
            users.lookup(bad, pw, gr)
        assert ei.value.kind == "invalid_argument"
    assert users.check_name("svc$") == "svc$"


def test_template_users_by_uid_and_with_a_group(tmp_path: Path) -> None:
    """What an image's or a Warrenfile's USER may say: ``1000``, ``user:audio``, ``4242:29``."""
    pw, gr = _db(tmp_path, PASSWD.format(home="/home/user"))
    u = users.lookup("1000", pw, gr)
    assert (u.name, u.uid, u.gid, u.home, u.groups) == ("user", 1000, 1000, "/home/user", [1000, 29])
    u = users.lookup("4242", pw, gr)  # no entry: the root group and / as home, as Docker does
    assert (u.name, u.uid, u.gid, u.home, u.groups) == ("4242", 4242, 0, "/", [0])
    u = users.lookup("user:audio", pw, gr)
    assert (u.uid, u.gid, u.groups) == (1000, 29, [29])
    u = users.lookup("4242:29", pw, gr)
    assert (u.uid, u.gid, u.groups) == (4242, 29, [29])
    with pytest.raises(GuestFail, match="no such group: nogroup"):
        users.lookup("user:nogroup", pw, gr)
    for bad in ("user:", ":audio", "99999999999", "user:a:b", "1000:x y"):
        with pytest.raises(GuestFail) as ei:
            users.lookup(bad, pw, gr)
        assert ei.value.kind == "invalid_argument"


def test_root_without_a_passwd_entry_is_still_root(tmp_path: Path) -> None:
    u = users.lookup("root", str(tmp_path / "missing"), str(tmp_path / "missing-too"))
    assert (u.uid, u.gid, u.home) == (0, 0, "/root")
    with pytest.raises(GuestFail, match="no such user: user"):
        users.lookup("user", str(tmp_path / "missing"), str(tmp_path / "missing-too"))


def test_hostile_files_are_bounded_and_refused(tmp_path: Path) -> None:
    _pw, gr = _db(tmp_path, "")
    huge = tmp_path / "huge"
    with huge.open("w") as f:  # one enormous line, then the user: never read that far
        f.write("x" * (users.MAX_DB_BYTES + 10) + "\nuser:x:1000:1000::/home/user:/bin/sh\n")
    with pytest.raises(GuestFail, match="larger than"):
        users.lookup("user", str(huge), gr)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opened non-blocking: never hangs
    with pytest.raises(GuestFail, match="not a regular file"):
        users.lookup("user", str(fifo), gr)
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    with pytest.raises(GuestFail, match="not a regular file"):
        users.lookup("user", str(zero), gr)
    proc = tmp_path / "proc"
    proc.symlink_to("/proc/self/status")  # a regular file of the kernel's: read, bounded
    with pytest.raises(GuestFail, match="no such user: user"):
        users.lookup("user", str(proc), gr)
    ids = tmp_path / "ids"
    ids.write_text("user:x:4294967295:1::/h:/bin/sh\nuser:x:99999999999:1::/h:/bin/sh\n")
    with pytest.raises(GuestFail, match="no such user"):
        users.lookup("user", str(ids), gr)  # (uid_t)-1 and overflowing ids are no ids


# ------------------------------------------------------------------ the guest, as a user

HOME_MODE = 0o750


@pytest.fixture(scope="module")
def world() -> Iterator[Path]:
    """A tree user 1000 may walk (pytest's tmp dirs are 0700 root): its home and a root dir."""
    top = Path(tempfile.mkdtemp(prefix="warren-users-", dir="/tmp"))
    top.chmod(0o755)
    home = top / "home" / "user"
    home.mkdir(parents=True)
    os.chown(home, 1000, 1000)
    home.chmod(HOME_MODE)
    secret = top / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    (top / "rootdir").mkdir(mode=0o755)
    etc = top / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(PASSWD.format(home=home))
    (etc / "group").write_text(GROUP)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def as_guest(start_guest: Callable[..., RunningGuest], world: Path) -> GuestClient:
    etc = world / "etc"
    script = (
        f'mount --bind {etc / "passwd"} /etc/passwd && mount --bind {etc / "group"} /etc/group && exec "$@"'
    )
    prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh")
    return start_guest(*prefix).client


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _read(client: GuestClient, path: str, user: str = "") -> bytes:
    return b"".join([c async for c in client.read_file(path, user=user)])


@pytest.mark.root
async def test_exec_as_user_has_its_ids_groups_env_and_home(as_guest: GuestClient, world: Path) -> None:
    script = 'id -u; id -g; id -G; echo "$HOME $USER $LOGNAME"; pwd'
    res = await as_guest.exec("sh", ["-c", script], user="user")
    assert res.exit_code == 0, res.stderr
    uid, gid, groups, env, cwd = res.stdout.decode().splitlines()
    home = str(world / "home" / "user")
    assert (uid, gid, sorted(groups.split())) == ("1000", "1000", ["1000", "29"])
    assert env == f"{home} user user"
    assert cwd == home
    # An explicit cwd wins; one the user may not enter is a permission error, reported.
    res = await as_guest.exec("pwd", [], user="user", cwd="/")
    assert res.stdout == b"/\n"
    with pytest.raises(GuestError) as ei:
        await as_guest.exec("pwd", [], user="user", cwd="/root")
    assert ei.value.kind == "permission"


@pytest.mark.root
async def test_default_is_root_and_unknown_users_are_refused(as_guest: GuestClient) -> None:
    res = await as_guest.exec("sh", ["-c", 'id -u; echo "$HOME"'])
    assert res.stdout == b"0\n/root\n"
    res = await as_guest.exec("id", ["-u"], user="root")
    assert res.stdout == b"0\n"
    for call in (
        as_guest.exec("true", [], user="mallory"),
        as_guest.stat("/", user="mallory"),
        as_guest.write_file("/tmp/x", _one(b"x"), user="mallory"),
    ):
        with pytest.raises(GuestError) as ei:
            await call
        assert (ei.value.kind, str(ei.value.message)) == ("invalid_argument", "no such user: mallory")
    with pytest.raises(GuestError) as ei:
        await as_guest.exec("true", [], user="../../etc")
    assert ei.value.kind == "invalid_argument"


@pytest.mark.root
async def test_files_written_as_user_are_theirs_and_relative_to_home(
    as_guest: GuestClient, world: Path
) -> None:
    home = world / "home" / "user"
    assert await as_guest.write_file("notes/a.txt", _one(b"hello"), user="user") == 5
    f = home / "notes" / "a.txt"
    st, dst = f.stat(), (home / "notes").stat()
    assert (st.st_uid, st.st_gid, dst.st_uid, dst.st_gid) == (1000, 1000, 1000, 1000)
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert await _read(as_guest, "notes/a.txt", user="user") == b"hello"
    await as_guest.make_dir("made/deep", user="user")
    assert (home / "made" / "deep").stat().st_uid == 1000
    entry = await as_guest.stat("notes/a.txt", user="user")
    assert (entry.path, entry.owner, entry.group, entry.size) == (str(f), "user", "user", 5)
    page = await as_guest.list_dir("notes", user="user")
    assert [e.name for e in page.entries] == ["a.txt"]
    await as_guest.move("notes/a.txt", "notes/b.txt", user="user")
    await as_guest.remove("notes", user="user")
    assert not (home / "notes").exists()
    # Replacing a file keeps its mode; as root (the default) the path must still be absolute.
    await as_guest.write_file("m", _one(b"1"), user="user", mode=0o600)
    await as_guest.write_file("m", _one(b"2"), user="user")
    assert stat.S_IMODE((home / "m").stat().st_mode) == 0o600
    with pytest.raises(GuestError) as ei:
        await as_guest.write_file("relative", _one(b"x"))
    assert ei.value.kind == "invalid_argument"


@pytest.mark.root
async def test_user_cannot_reach_what_root_owns(as_guest: GuestClient, world: Path) -> None:
    secret = str(world / "secret")
    with pytest.raises(GuestError) as ei:
        await _read(as_guest, secret, user="user")
    assert ei.value.kind == "permission"
    assert await _read(as_guest, secret) == b"root only"  # root still can
    for path in ("/root/planted", str(world / "rootdir" / "planted")):
        with pytest.raises(GuestError) as ei:
            await as_guest.write_file(path, _one(b"x"), user="user")
        assert ei.value.kind == "permission"
    assert not (world / "rootdir" / "planted").exists()
    assert not [p for p in (world / "rootdir").iterdir()]  # no temp file left behind
    with pytest.raises(GuestError) as ei:
        await as_guest.write_file(secret, _one(b"overwritten"), user="user")
    assert ei.value.kind == "permission"
    assert Path(secret).read_text() == "root only"
    for call in (
        as_guest.remove(secret, user="user"),
        as_guest.make_dir(str(world / "rootdir" / "d"), user="user"),
        as_guest.move(secret, str(world / "home" / "user" / "stolen"), user="user"),
        as_guest.list_dir("/root", user="user"),
    ):
        with pytest.raises(GuestError) as ei:
            await call
        assert ei.value.kind == "permission"
    # Root's fds are not reachable from the user's child through /proc/self/fd.
    with pytest.raises(GuestError):
        await _read(as_guest, "/proc/self/fd/3", user="user")
