"""Session 8's login-profile edit (agent/rootfs_profile.trim_login_shell) attacked by a tenant who
controls a command's environment: ``/etc/profile`` now reads ``${EUID:-$(id -u)}``. bash and
dash both take an EUID from the environment (bash sets its own only when none was imported;
session 8 assumed otherwise). Expected: a hostile EUID runs nothing (no expansion
of its text, no arithmetic evaluation), gives no privilege (``id -u`` is still the caller's),
and at most changes the caller's own PATH (the documented, harmless effect); the edit
touches only the rootfs it is given (a link in place of a file is left alone).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.machine import MINIMAL_CACHE
from warren.agent.rootfs_profile import EDITS, trim_login_shell

pytestmark = pytest.mark.root

NOBODY = 65534
HOSTILE = (
    "0",
    "$(touch {mark})",
    "`touch {mark}`",
    "x[$(touch {mark})]",
    "0 -o 1 -eq 1",
    "0; touch {mark}",
    "a[$(touch {mark})]+0",
)


@pytest.fixture(scope="module")
def profile() -> Iterator[Path]:
    """The minimal rootfs's /etc/profile (Debian's) with the session-8 edit applied, where
    ``nobody`` can read it."""
    src = MINIMAL_CACHE / "rootfs/etc/profile"
    if not src.is_file():
        src = Path("/etc/profile")  # this host is Debian bookworm too: the same text
    # Debian's own text: a cached minimal built by this tree has the edit applied already.
    _, debian, edited = EDITS[0]
    text = src.read_text().replace(edited, debian)
    root = Path(tempfile.mkdtemp(prefix="warren-attack-profile-"))
    try:
        (root / "etc").mkdir()
        (root / "etc/profile").write_text(text)
        assert trim_login_shell(root) == ["etc/profile"]
        assert '"${EUID:-$(id -u)}"' in (root / "etc/profile").read_text()
        for p, mode in ((root, 0o755), (root / "etc", 0o755), (root / "etc/profile", 0o644)):
            os.chmod(p, mode)
        yield root / "etc/profile"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory ``nobody`` may write in (its HOME and the probes' mark)."""
    d = Path(tempfile.mkdtemp(prefix="warren-attack-profile-run-"))
    os.chmod(d, 0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_nobody(shell: str, profile: Path, euid: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = f'. {profile}; echo "id=$(id -u)"; echo "path=$PATH"'
    env = {"EUID": euid, "HOME": str(cwd), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", shell, "-c", script],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("shell", ["/bin/bash", "/bin/dash"])
@pytest.mark.parametrize("euid", HOSTILE)
def test_a_hostile_euid_runs_nothing_and_gives_no_privilege(
    profile: Path, scratch: Path, shell: str, euid: str
) -> None:
    mark = scratch / "ran"
    res = as_nobody(shell, profile, euid.format(mark=mark), scratch)
    assert not mark.exists(), (shell, euid, res)
    assert f"id={NOBODY}\n" in res.stdout, res
    # The caller's own PATH: root's only for an EUID of 0 (bash, too, takes an imported EUID:
    # the effect rootfs_profile.py documents, nothing more); an unparsable one is not a number.
    path = res.stdout.split("path=", 1)[1].strip()
    assert ("sbin" in path) == (euid == "0"), res


def test_a_linked_profile_in_a_rootfs_is_not_followed(tmp_path: Path) -> None:
    """A rootfs whose /etc/profile (or root/.profile) is a link to a host file is left alone:
    the edit never writes outside the tree it is given."""
    target = tmp_path / "host-profile"
    target.write_text('[ "$(id -u)" -eq 0 ]\n')
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "root").mkdir()
    (root / "etc/profile").symlink_to(target)
    (root / "root/.profile").symlink_to(target)
    assert trim_login_shell(root) == []
    assert target.read_text() == '[ "$(id -u)" -eq 0 ]\n'


def test_a_linked_directory_in_a_rootfs_is_not_followed(tmp_path: Path) -> None:
    """The same with the parent a link (``etc -> <host dir>``): the rootfs is debootstrap's
    today, but the edit must not depend on that to stay inside it."""
    host_etc = tmp_path / "host-etc"
    host_etc.mkdir()
    (host_etc / "profile").write_text('[ "$(id -u)" -eq 0 ]\n')
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "etc").symlink_to(host_etc)
    (root / "root").symlink_to(host_etc)
    (host_etc / ".profile").write_text("\nmesg n 2> /dev/null || true\n")
    assert trim_login_shell(root) == []
    assert (host_etc / "profile").read_text() == '[ "$(id -u)" -eq 0 ]\n'
    assert (host_etc / ".profile").read_text() == "\nmesg n 2> /dev/null || true\n"
