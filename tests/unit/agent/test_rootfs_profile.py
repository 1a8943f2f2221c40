"""The `minimal` rootfs's login-shell files without their forks (agent/rootfs_profile.py): the
same PATH, prompt and umask as Debian's, in bash and dash, as root and as another user; `id`
and `mesg` no longer run where they are not needed."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from warren.agent.rootfs_profile import trim_login_shell

# Debian bookworm's base-files texts (/usr/share/base-files/profile and dot.profile).
DEBIAN_PROFILE = """\
if [ "$(id -u)" -eq 0 ]; then
  PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
else
  PATH="/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
fi
export PATH

if [ "${PS1-}" ]; then
  if [ "${BASH-}" ] && [ "$BASH" != "/bin/sh" ]; then
    if [ -f /etc/bash.bashrc ]; then
      . /etc/bash.bashrc
    fi
  else
    if [ "$(id -u)" -eq 0 ]; then
      PS1='# '
    else
      PS1='$ '
    fi
  fi
fi
"""
DEBIAN_ROOT_PROFILE = """\
# ~/.profile: executed by Bourne-compatible login shells.

if [ "$BASH" ]; then
  if [ -f ~/.bashrc ]; then
    . ~/.bashrc
  fi
fi

mesg n 2> /dev/null || true
"""
NOBODY = 65534
SHOW = 'echo "PATH=$PATH PS1=${PS1-unset} umask=$(umask)"'


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A scratch dir another uid can read (pytest's own is 0700)."""
    with tempfile.TemporaryDirectory(prefix="warren-profile-") as d:
        os.chmod(d, 0o755)
        yield Path(d)


def _rootfs(base: Path, profile: str = DEBIAN_PROFILE, root_profile: str = DEBIAN_ROOT_PROFILE) -> Path:
    (base / "etc").mkdir(parents=True)
    (base / "root").mkdir()
    (base / "etc/profile").write_text(profile)
    (base / "root/.profile").write_text(root_profile)
    base.chmod(0o755)
    for p in (base / "etc", base / "root", base / "etc/profile", base / "root/.profile"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return base


def _source(shell: str, profile: Path, *, uid: int, path: str, ps1: str | None = None) -> str:
    """What ``profile`` leaves in a shell of ``uid`` started with only PATH (and PS1)."""
    env = {"PATH": path, **({"PS1": ps1} if ps1 is not None else {})}
    script = f". {profile}; {SHOW}"
    if uid != os.getuid():
        argv = ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", shell, "-c", script]
    else:
        argv = [shell, "-c", script]
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=30).stdout


def test_the_edits_apply_once_and_leave_other_texts_alone(tmp_path: Path) -> None:
    root = _rootfs(tmp_path / "r")
    mode = (root / "etc/profile").stat().st_mode
    assert trim_login_shell(root) == ["etc/profile", "root/.profile"]
    text = (root / "etc/profile").read_text()
    assert text.count('"${EUID:-$(id -u)}"') == 2 and '"$(id -u)"' not in text
    assert "if [ -t 0 ]; then mesg n 2> /dev/null || true; fi" in (root / "root/.profile").read_text()
    assert (root / "etc/profile").stat().st_mode == mode
    assert trim_login_shell(root) == []  # idempotent
    other = _rootfs(tmp_path / "o", profile="PATH=/bin\n", root_profile="umask 077\n")
    assert trim_login_shell(other) == []
    assert (other / "etc/profile").read_text() == "PATH=/bin\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the shells as another uid (setpriv)")
@pytest.mark.parametrize("shell", ["/bin/bash", "/bin/sh"])
@pytest.mark.parametrize("uid", [0, NOBODY])
@pytest.mark.parametrize("ps1", [None, "> "])
def test_same_path_prompt_and_umask_as_debian(tmp_path: Path, shell: str, uid: int, ps1: str | None) -> None:
    old = _rootfs(tmp_path / "old")
    new = _rootfs(tmp_path / "new")
    trim_login_shell(new)
    path = "/usr/bin:/bin"
    got = _source(shell, new / "etc/profile", uid=uid, path=path, ps1=ps1)
    assert got == _source(shell, old / "etc/profile", uid=uid, path=path, ps1=ps1)
    assert ("/usr/sbin" in got) == (uid == 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the shells as another uid (setpriv)")
@pytest.mark.parametrize("uid", [0, NOBODY])
def test_bash_runs_no_id(tmp_path: Path, uid: int) -> None:
    """With no `id` on PATH Debian's profile cannot tell root (and gives root a user's PATH);
    the edited one asks bash, so it runs no program to know."""
    new = _rootfs(tmp_path / "new")
    trim_login_shell(new)
    got = _source("/bin/bash", new / "etc/profile", uid=uid, path="/nonexistent")
    assert ("PATH=/usr/local/sbin:" in got) == (uid == 0)
    old = _rootfs(tmp_path / "old")
    assert "PATH=/usr/local/bin:" in _source("/bin/bash", old / "etc/profile", uid=0, path="/nonexistent")


def test_root_profile_runs_mesg_only_on_a_terminal(tmp_path: Path) -> None:
    """Without a terminal on stdin `mesg n` fails silently (its stderr goes to /dev/null), so
    it is not run; the profile's status is 0 either way."""
    new = _rootfs(tmp_path / "new")
    trim_login_shell(new)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mesg").write_text(f"#!/bin/sh\necho ran >> {tmp_path}/mesg.log\nexit 1\n")
    (fake / "mesg").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path)}
    for profile in (new, _rootfs(tmp_path / "old")):
        r = subprocess.run(
            ["/bin/sh", "-c", f". {profile}/root/.profile"], env=env, stdin=subprocess.DEVNULL, timeout=30
        )
        assert r.returncode == 0
    assert (tmp_path / "mesg.log").read_text() == "ran\n"  # the old profile's call only


@pytest.mark.skipif(os.geteuid() != 0, reason="re-owns the files to the mapped uids (chown)")
def test_minimal_is_finished_with_the_edits(tmp_path: Path) -> None:
    """The `minimal` build's last step applies them (before re-owning every file)."""
    from warren.agent.templates import MAPPED_BASE, TemplateStore

    root = _rootfs(tmp_path / "rootfs")
    (root / "var/cache/apt/archives").mkdir(parents=True)
    TemplateStore._finish_rootfs(root)
    assert '"${EUID:-$(id -u)}"' in (root / "etc/profile").read_text()
    assert (root / "etc/profile").stat().st_uid == MAPPED_BASE
