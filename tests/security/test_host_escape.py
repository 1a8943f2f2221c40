"""A tenant reaching the host through the filesystem: D1, D3, D7, D11.

* D1: a snapshot whose ``/etc`` (or ``/etc/hosts``, or ``/etc/resolv.conf`` in a snapshot of a
  snapshot) is a symlink made the agent rewrite host files as root. A canary on the host must
  stay untouched, and the sandbox made from such a template must still start with working name
  resolution (the runtime binds the identity files inside its root, wherever /etc points).
* D3: /run/warren was an uncapped host directory.
* D7: set-uid files planted from a sandbox (through /run/warren, the rootfs, or a snapshot layer)
  ran set-uid on the host for any local user, who could then read every sandbox's files.
* D11: the sandbox's env (secrets) was world-readable in record.json / config.json.

"nobody" below is a local host user with no business in Warren's data (``setpriv``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from warren.agent.templates import MAPPED_BASE

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

CANARY_TEXT = "CANARY-ORIGINAL-HOST-FILE\n"
IDENTITY = ("hostname", "hosts", "resolv.conf")
UP = "../" * 16  # more than enough to climb from any sandbox's rootfs to the host's /


def data_dir(platform: Platform) -> Path:
    return Path(platform.agents[0].data_dir)


def sandbox_dir(platform: Platform, sb: str) -> Path:
    return data_dir(platform) / "sandboxes" / sb


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def snapshot(t: Tenant, sb: str, name: str) -> None:
    # A file of its own: the snapshot's layer is content-addressed, and the tests below change
    # it on the host, so no two snapshots here may share one.
    t.sh(sb, f"echo {uuid.uuid4().hex} > /root/.snapshot-id")
    r = t.w("POST", "/v1/snapshots", {"sandbox_id": sb, "name": name})
    assert r.status_code == 201, r.text
    assert t.w("POST", f"/v1/sandboxes/{sb}/resume").status_code == 200


def snapshot_layers(platform: Platform, name: str) -> list[Path]:
    """The snapshot ``name``'s layers as installed on the host (its chain, bottom first): the
    host that took a snapshot keeps its layer, and sandboxes of it there run on that copy."""
    import asyncio

    rows = asyncio.run(platform.sql("SELECT layers FROM templates WHERE name = :n", n=name))
    assert rows, f"no snapshot {name}"
    return [plain_dir(data_dir(platform) / "layers" / digest / "tree") for digest in rows[0][0]]


def plain_dir(tree: Path) -> Path:
    """A layer installed as an image (a read-only squashfs mount, docs/templates.md §2) made a
    plain directory again, as an extracted layer is, so that a test can plant in it what a
    tenant could not."""
    if not os.path.ismount(tree):
        return tree
    copy = tree.with_name("tree.copy")
    subprocess.run(["cp", "-a", str(tree), str(copy)], check=True, timeout=120)
    subprocess.run(["umount", str(tree)], check=True, timeout=60)
    tree.rmdir()
    copy.rename(tree)
    (tree.parent / "layer.sqfs").unlink()
    return tree


def top_layer(layers: list[Path]) -> Path:
    return layers[-1]


@pytest.fixture
def canary() -> Iterator[Path]:
    """A host dir holding files named like the identity files, 0600 root: the target."""
    d = Path(f"/tmp/warren-canary-{uuid.uuid4().hex[:12]}")
    d.mkdir(mode=0o755)
    for name in IDENTITY:
        (d / name).write_text(CANARY_TEXT)
        (d / name).chmod(0o600)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def assert_untouched(canary: Path) -> None:
    assert sorted(os.listdir(canary)) == sorted(IDENTITY)
    for name in IDENTITY:
        st = os.lstat(canary / name)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0, name
        assert (canary / name).read_text() == CANARY_TEXT, name


def assert_identity_works(t: Tenant, sb: str) -> None:
    out = t.sh(
        sb, "cat /etc/hostname; python3 -c 'import socket; print(socket.gethostbyname(socket.gethostname()))'"
    )
    assert out.split() == [sb, "127.0.1.1"], out
    assert CANARY_TEXT.strip() not in t.sh(sb, "cat /etc/hosts /etc/resolv.conf")


def mkdirs(path: Path) -> Path:
    """Missing dirs of a layer, owned by sandbox root like the rest of the layer."""
    for p in [*reversed(path.parents), path]:
        if not p.exists():
            p.mkdir()
            os.chown(p, MAPPED_BASE, MAPPED_BASE)
    return path


def plant_etc_copy(layer: Path, minimal_etc: Path, target: str) -> None:
    """A full /etc at ``target`` inside the layer, so the sandbox is usable through its symlink."""
    dst = layer / target.lstrip("/")
    mkdirs(dst.parent)
    subprocess.run(["cp", "-a", str(minimal_etc), str(dst)], check=True)


@pytest.fixture(scope="module")
def minimal_etc(platform: Platform, alice: Tenant) -> Path:
    sb = alice.create(memory_mb=64)
    try:
        rec = json.loads((sandbox_dir(platform, sb) / "record.json").read_text())
        return Path(rec["lower_layers"][-1]) / "etc"
    finally:
        alice.w("DELETE", f"/v1/sandboxes/{sb}")


# ------------------------------------------------------------------------------------------ D1


def test_d1_the_findings_reproduction_leaves_the_host_alone(
    platform: Platform, alice: Tenant, canary: Path
) -> None:
    """`mv /etc /etc.real && ln -s $TARGET /etc`, snapshot, new sandbox from it. (The identity
    files are mount points now, so the mv no longer fully works: whatever it leaves behind, the
    host is not touched.)"""
    a = alice.create(memory_mb=64)
    made = [a]
    try:
        alice.x(a, f"mv /etc /etc.real; ln -s {canary} /etc")
        name = f"etc-symlink-{uuid.uuid4().hex[:6]}"
        snapshot(alice, a, name)
        r = alice.w("POST", "/v1/sandboxes", {"template": name, "memory_mb": 64})
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
        assert_untouched(canary)
        assert alice.sh(made[1], "cat /etc/hostname").strip() == made[1]
    finally:
        for sb in made:
            alice.w("DELETE", f"/v1/sandboxes/{sb}")


def _etc_absolute(layer: Path, etc: Path, canary: Path) -> None:
    shutil.rmtree(layer / "etc", ignore_errors=True)
    (layer / "etc").symlink_to(canary)
    plant_etc_copy(layer, etc, str(canary))


def _etc_relative(layer: Path, etc: Path, canary: Path) -> None:
    shutil.rmtree(layer / "etc", ignore_errors=True)
    (layer / "etc").symlink_to(UP + str(canary).lstrip("/"))
    plant_etc_copy(layer, etc, str(canary))


def _hosts_alone(layer: Path, etc: Path, canary: Path) -> None:
    mkdirs(layer / "etc")
    (layer / "etc" / "hosts").unlink(missing_ok=True)
    (layer / "etc" / "hosts").symlink_to(canary / "hosts")


@pytest.mark.parametrize("plant", [_etc_absolute, _etc_relative, _hosts_alone], ids=lambda f: f.__name__[1:])
def test_d1_a_symlink_in_a_snapshot_layer_is_never_followed_on_the_host(
    platform: Platform, alice: Tenant, canary: Path, minimal_etc: Path, plant: object
) -> None:
    """The layer carries the symlink as a snapshot taken before this fix (or an imported image)
    would: made on the host, since a running sandbox can no longer remove its /etc."""
    a = alice.create(memory_mb=64)
    made = [a]
    try:
        name = f"etc-{uuid.uuid4().hex[:6]}"
        snapshot(alice, a, name)
        plant(top_layer(snapshot_layers(platform, name)), minimal_etc, canary)  # type: ignore[operator]
        r = alice.w("POST", "/v1/sandboxes", {"template": name, "memory_mb": 64})
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
        assert_untouched(canary)
        assert_identity_works(alice, made[1])
    finally:
        for sb in made:
            alice.w("DELETE", f"/v1/sandboxes/{sb}")
    assert_untouched(canary)


def test_d1_symlinks_in_a_snapshot_of_a_snapshot(
    platform: Platform, alice: Tenant, canary: Path, minimal_etc: Path
) -> None:
    """Layer 0 (the first snapshot) makes /etc a relative symlink to the canary's path, layer 1
    (a snapshot of a sandbox made from it) makes /etc/resolv.conf a symlink climbing to another
    file in the canary dir."""
    a = alice.create(memory_mb=64)
    made = [a]
    try:
        first, second = f"sos1-{uuid.uuid4().hex[:6]}", f"sos2-{uuid.uuid4().hex[:6]}"
        snapshot(alice, a, first)
        _etc_relative(top_layer(snapshot_layers(platform, first)), minimal_etc, canary)
        r = alice.w("POST", "/v1/sandboxes", {"template": first, "memory_mb": 64})
        assert r.status_code == 201, r.text
        b = r.json()["id"]
        made.append(b)
        assert_identity_works(alice, b)
        snapshot(alice, b, second)
        layers = snapshot_layers(platform, second)
        assert len(layers) == 2
        top = top_layer(layers)
        resolv = mkdirs(top / str(canary).lstrip("/")) / "resolv.conf"
        resolv.unlink(missing_ok=True)
        resolv.symlink_to(UP + str(canary).lstrip("/") + "/resolv-target")
        r = alice.w("POST", "/v1/sandboxes", {"template": second, "memory_mb": 64})
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
        assert_untouched(canary)
        assert_identity_works(alice, made[-1])
    finally:
        for sb in made:
            alice.w("DELETE", f"/v1/sandboxes/{sb}")
    assert_untouched(canary)


# ------------------------------------------------------------------------------------------ D3


@pytest.fixture(scope="module")
def victim(platform: Platform, bob: Tenant) -> Iterator[str]:
    """Another team's sandbox with a secret file and a secret in its env."""
    sb = bob.create(memory_mb=64, env={"OPENAI_API_KEY": "sk-SECRET-ENV-VALUE"})
    bob.sh(
        sb,
        "mkdir -p /root/secret && echo BOB-TEAM-SECRET > /root/secret/token.txt"
        " && chmod 600 /root/secret/token.txt",
    )
    yield sb
    bob.w("DELETE", f"/v1/sandboxes/{sb}")


@pytest.fixture(scope="module")
def attacker(alice: Tenant) -> Iterator[str]:
    sb = alice.create(memory_mb=64)
    yield sb
    alice.w("DELETE", f"/v1/sandboxes/{sb}")


def test_d3_run_warren_is_a_tiny_tmpfs(platform: Platform, alice: Tenant, attacker: str) -> None:
    res = alice.x(
        attacker, "head -c 10M /dev/zero > /run/warren/big.bin; echo rc=$?; rm -f /run/warren/big.bin"
    )
    out = res.json()
    assert "rc=0" not in out["stdout"] and "No space left" in out["stderr"], out
    host_run = sandbox_dir(platform, attacker) / "run"
    st = os.statvfs(host_run)
    assert st.f_blocks * st.f_frsize <= 64 << 10  # its own tiny filesystem, not the host's disk
    assert os.stat(host_run).st_dev != os.stat(data_dir(platform)).st_dev
    assert alice.sh(attacker, "echo alive").strip() == "alive"  # the guest's socket survived


# ------------------------------------------------------------------------------------------ D7


def test_d7_every_sandbox_mount_is_nosuid_and_nodev(platform: Platform, attacker: str) -> None:
    d = str(sandbox_dir(platform, attacker))
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == d or fields[4].startswith(d + "/"):
                mounts[fields[4][len(d) + 1 :]] = set(fields[5].split(","))
    assert set(mounts) == {"disk", "rootfs", "run"}, mounts
    for name, opts in mounts.items():
        assert {"nosuid", "nodev"} <= opts, (name, opts)
    assert "noexec" in mounts["run"]


def test_d7_inside_every_writable_mount_is_nosuid_and_nodev(alice: Tenant, attacker: str) -> None:
    """As the sandbox sees them. Left out: the runtime's binds of single device nodes (devtmpfs
    files, nothing to run) and read-only masks; /dev and /dev/pts hold device nodes."""
    writable = []
    for line in alice.sh(attacker, "cat /proc/self/mounts").splitlines():
        _, target, fstype, opts = line.split()[:4]
        flags = set(opts.split(","))
        if fstype == "devtmpfs" or "ro" in flags:
            continue
        writable.append(target)
        assert "nosuid" in flags, line
        assert "nodev" in flags or target in ("/dev", "/dev/pts"), line
    assert {"/", "/run/warren", "/dev/shm", "/etc/hosts", "/etc/resolv.conf"} <= set(writable)


def test_d7_setuid_files_planted_by_a_sandbox_do_not_run_setuid_on_the_host(
    platform: Platform, alice: Tenant, attacker: str, victim: str
) -> None:
    alice.x(attacker, "cp /usr/bin/id /run/warren/id && chmod 4755 /run/warren/id")
    alice.sh(attacker, "cp /usr/bin/python3 /tmp/py && chmod 4755 /tmp/py")
    name = f"suid-{uuid.uuid4().hex[:6]}"
    snapshot(alice, attacker, name)
    d = sandbox_dir(platform, attacker)
    layer = top_layer(snapshot_layers(platform, name))
    assert (layer / "tmp" / "py").stat().st_mode & stat.S_ISUID  # a tenant's file keeps its bits
    secret = sandbox_dir(platform, victim) / "disk/upper/root/secret/token.txt"
    read_secret = (
        f"import os; os.setreuid(os.geteuid(), os.geteuid()); print(os.geteuid(), open('{secret}').read())"
    )
    for planted in (d / "run" / "id", d / "rootfs/tmp/py", d / "disk/upper/tmp/py", layer / "tmp/py"):
        res = as_nobody(str(planted), "-c", read_secret)
        assert res.returncode != 0 and "BOB-TEAM-SECRET" not in res.stdout, (planted, res)
        assert "1000000000" not in res.stdout, (planted, res)
    # The built-in template's own set-uid programs are set-uid *sandbox root* on the host.
    rec = json.loads((d / "record.json").read_text())
    su = Path(rec["lower_layers"][-1]) / "usr/bin/su"
    assert su.stat().st_mode & stat.S_ISUID
    assert as_nobody(str(su), "-c", "id").returncode != 0
    alice.w("DELETE", f"/v1/snapshots/{name}")


def test_d7_host_users_cannot_reach_another_sandboxs_files(platform: Platform, victim: str) -> None:
    d = sandbox_dir(platform, victim)
    for path in (d / "disk/upper/root/secret/token.txt", d / "rootfs/root/secret/token.txt"):
        res = as_nobody("cat", str(path))
        assert res.returncode != 0 and "BOB-TEAM-SECRET" not in res.stdout, res
    assert as_nobody("ls", str(data_dir(platform) / "sandboxes")).returncode != 0
    assert as_nobody("ls", str(data_dir(platform) / "templates")).returncode != 0


# ----------------------------------------------------------------------------------------- D11


def test_d11_env_secrets_are_not_readable_by_host_users(platform: Platform, victim: str) -> None:
    d = sandbox_dir(platform, victim)
    for name in ("record.json", "config.json"):
        st = os.stat(d / name)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0, name
        assert "sk-SECRET-ENV-VALUE" in (d / name).read_text()  # it is there, for root only
        res = as_nobody("grep", "-o", "sk-SECRET-ENV-VALUE", str(d / name))
        assert res.returncode != 0 and "sk-SECRET" not in res.stdout, (name, res)
