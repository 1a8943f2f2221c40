"""Pure-logic parts of the agent: the OCI config's hardening, slot addressing, error mapping,
template references and the ownership shift of a template rootfs."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import pytest

from warren.agent.guest_client import GuestError
from warren.agent.network import MAX_SLOTS, Slot
from warren.agent.rpc_errors import ExecTimeout, status_for
from warren.agent.runtime.bundle import CAPABILITIES, BundleSpec, cgroups_path, oci_config, seccomp_profile
from warren.agent.sandbox_fs import (
    GVISOR_TMP_MIN_MB,
    INODE_COST_BYTES,
    PROCESS_HEADROOM_MB,
    disk_size,
    gvisor_tmp_mb,
)
from warren.agent.templates import MAPPED_BASE, TemplateRef, shift_ownership
from warren.errors import InternalError, InvalidRequest, InvalidState, NotFound


def spec(**kw: object) -> BundleSpec:
    base: dict[str, object] = dict(
        sandbox_id="sb-x", rootfs=Path("/r"), guest_dir=Path("/g"), run_dir=Path("/run/x"),
        netns_path="/run/netns/warren-s3", hostname="sb-x", vcpus=2, memory_mb=256,
        guest_argv=["/usr/bin/python3"],
    )  # fmt: skip
    base.update(kw)
    return BundleSpec(**base)  # type: ignore[arg-type]


def test_oci_config_limits_namespaces_and_user_mapping() -> None:
    cfg = oci_config(spec())
    lin = cfg["linux"]
    assert lin["resources"]["cpu"] == {"quota": 200_000, "period": 100_000}
    assert lin["resources"]["memory"] == {"limit": 256 << 20, "swap": 256 << 20}
    assert lin["resources"]["pids"]["limit"] == 1024
    assert lin["uidMappings"] == [{"containerID": 0, "hostID": MAPPED_BASE, "size": 65536}]
    ns = {n["type"]: n.get("path") for n in lin["namespaces"]}
    assert set(ns) == {"pid", "ipc", "uts", "mount", "user", "cgroup", "network"}
    assert ns["network"] == "/run/netns/warren-s3"
    assert lin["cgroupsPath"] == cgroups_path("sb-x") == "/warren/sb-x"
    assert cfg["process"]["noNewPrivileges"] is True
    assert "/proc/kcore" in lin["maskedPaths"] and "/proc/sys" in lin["readonlyPaths"]
    mounts = {m["destination"]: m for m in cfg["mounts"]}
    assert "ro" in mounts["/.warren/guest"]["options"] and mounts["/.warren/guest"]["source"] == "/g"
    assert mounts["/run/warren"]["source"] == "/run/x"
    assert cfg["hostname"] == "sb-x"


def test_tmp_is_a_sized_tmpfs_only_when_asked() -> None:
    """gVisor's own /tmp has no size: the bundle names one (runc/crun: /tmp is on the disk)."""
    assert "/tmp" not in {m["destination"] for m in oci_config(spec())["mounts"]}
    mounts = {m["destination"]: m for m in oci_config(spec(tmp_mb=40))["mounts"]}
    assert mounts["/tmp"]["type"] == "tmpfs"
    assert mounts["/tmp"]["options"] == ["nosuid", "nodev", "mode=1777", "size=40m"]


@pytest.mark.parametrize(
    ("memory_mb", "disk_mb"), [(64, 5120), (128, 5120), (512, 5120), (1024, 100), (4096, 5120)]
)
def test_gvisor_tmp_and_the_disk_share_the_memorys_budget(memory_mb: int, disk_mb: int) -> None:
    """gVisor's /tmp and the disk, both full (every inode used), fit the memory less the
    processes' headroom: /tmp gets a quarter of the memory past twice that headroom, at least
    its floor."""
    tmp_mb = gvisor_tmp_mb(memory_mb)
    disk = disk_size(memory_mb, disk_mb, beside_mb=tmp_mb)
    disk_cost = disk.mb + (disk.inodes * INODE_COST_BYTES >> 20)
    assert disk_cost + tmp_mb <= memory_mb - PROCESS_HEADROOM_MB
    assert tmp_mb == max(GVISOR_TMP_MIN_MB, (memory_mb - 2 * PROCESS_HEADROOM_MB) // 4)
    assert disk.mb <= disk_mb
    assert disk_size(memory_mb, disk_mb).mb >= disk.mb  # runc and crun: no /tmp of its own


def test_capabilities_are_a_minimal_set() -> None:
    cfg = oci_config(spec())
    caps = cfg["process"]["capabilities"]
    assert caps["bounding"] == CAPABILITIES
    for dangerous in ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_NET_RAW",
                      "CAP_SYS_RAWIO", "CAP_SYS_TIME", "CAP_MAC_ADMIN", "CAP_BPF"):  # fmt: skip
        assert dangerous not in caps["bounding"]


def test_seccomp_denies_mounts_modules_namespaces_and_filters_clone() -> None:
    prof = seccomp_profile()
    denied = {n for rule in prof["syscalls"] if not rule.get("args") for n in rule["names"]}
    for name in ("mount", "umount2", "init_module", "finit_module", "kexec_load", "unshare", "setns", "bpf",
                 "open_by_handle_at", "fsopen", "clone3"):  # fmt: skip
        assert name in denied
    clone_rules = [r for r in prof["syscalls"] if r["names"] == ["clone"]]
    flags = {r["args"][0]["value"] for r in clone_rules}
    assert 0x10000000 in flags and 0x00020000 in flags  # CLONE_NEWUSER, CLONE_NEWNS
    # every rule tests "flag set", never "flags == 0": plain fork/threads must pass
    assert all(r["args"][0]["value"] == r["args"][0]["valueTwo"] != 0 for r in clone_rules)


def test_slot_addresses_are_disjoint_30s() -> None:
    assert (Slot(0).gateway, Slot(0).sandbox_ip) == ("10.11.0.1", "10.11.0.2")
    assert (Slot(70).gateway, Slot(70).sandbox_ip) == ("10.11.1.25", "10.11.1.26")
    last = Slot(MAX_SLOTS - 1)
    assert last.sandbox_ip == "10.11.255.254"
    assert len(Slot(MAX_SLOTS - 1).veth) <= 15  # IFNAMSIZ


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (NotFound("sandbox x not found"), grpc.StatusCode.NOT_FOUND),
        (InvalidRequest("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (InvalidState("not running"), grpc.StatusCode.FAILED_PRECONDITION),
        (ExecTimeout("slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (GuestError("not_found", "/x: not found"), grpc.StatusCode.NOT_FOUND),
        (GuestError("invalid_argument", "x"), grpc.StatusCode.INVALID_ARGUMENT),
        (GuestError("unavailable", "x"), grpc.StatusCode.UNAVAILABLE),
        (InternalError("boom"), grpc.StatusCode.INTERNAL),
        (RuntimeError("boom"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_mapping(err: BaseException, code: grpc.StatusCode) -> None:
    got, msg = status_for(err)
    assert got == code and msg
    if isinstance(err, GuestError) and err.kind == "not_found":
        assert msg == err.message  # the guest's own words, not re-prefixed


def test_template_refs() -> None:
    assert TemplateRef.parse("", "").is_minimal
    assert TemplateRef.parse(str(uuid.UUID(int=0)), str(uuid.UUID(int=0))).is_minimal
    t = uuid.uuid4()
    assert not TemplateRef.parse(str(uuid.uuid4()), str(t)).is_minimal
    with pytest.raises(InvalidRequest):
        TemplateRef.parse("x", str(t))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_shift_ownership_maps_uids_and_keeps_setuid(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    tool = root / "usr/bin/su"
    tool.write_text("#!")
    tool.chmod(0o4755)
    os.chown(root / "usr", 100, 100)
    (root / "link").symlink_to("usr/bin/su")
    shift_ownership(root)
    shift_ownership(root)  # idempotent
    assert os.stat(root).st_uid == MAPPED_BASE
    assert os.stat(root / "usr").st_uid == MAPPED_BASE + 100
    assert os.lstat(root / "link").st_uid == MAPPED_BASE
    st = os.stat(tool)
    assert st.st_uid == MAPPED_BASE and stat.S_IMODE(st.st_mode) == 0o4755


def test_agent_command_refuses_non_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import typer

    from warren.agent.entry import agent_command

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(typer.Exit) as ei:
        agent_command(listen="127.0.0.1:1", data_dir=Path("/nonexistent"), runtime="runc")
    assert ei.value.exit_code == 1
    assert "must run as root" in capsys.readouterr().err


def test_listen_without_tls_is_loopback_only() -> None:
    from warren.agent.main import check_listen

    check_listen("127.0.0.2:50051", tls=False)
    check_listen("[::1]:50051", tls=False)
    check_listen("unix:/run/warren/agent.sock", tls=False)
    check_listen("0.0.0.0:50051", tls=True)
    with pytest.raises(SystemExit):
        check_listen("0.0.0.0:50051", tls=False)


async def test_a_record_can_be_saved_while_another_call_waits_for_the_sandbox() -> None:
    """The record must not copy the sandbox's lock: with a waiter queued on it (a second pause
    arriving during the first), copying failed and the first call's save with it."""
    import asyncio

    from warren.agent.record import HostSandbox

    sb = HostSandbox(
        id="sb-x", status="running", team_id="t", template_id="tpl", template="minimal", vcpus=1,
        memory_mb=512, disk_size_mb=1024, timeout_sec=0, internet=True, env={"A": "1"}, slot=3,
        host_ip="10.11.0.14", created_at=1.0, last_active_at=2.0, lower_layers=["/l"],
        snapshot_layers=[],
    )  # fmt: skip
    async with sb.lock:
        waiter = asyncio.create_task(sb.lock.acquire())
        await asyncio.sleep(0)  # the waiter's future is now queued on the lock
        record = sb.record()
    await waiter
    sb.lock.release()
    assert record["status"] == "running" and record["env"] == {"A": "1"} and "lock" not in record
    record["env"]["A"] = "2"  # a copy: the live sandbox is not changed through it
    assert sb.env == {"A": "1"}


async def test_a_cancelled_command_does_not_outlive_its_caller() -> None:
    """``proc.run`` kills and reaps its child when the caller is cancelled: a rollback must not
    race a command that runs on (a `cp` into a dir being removed, a late iptables rule)."""
    import asyncio
    import contextlib
    import subprocess

    from warren.agent.proc import run

    marker = "31.4159"  # an argument no other process has

    def running() -> bool:
        return subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True).returncode == 0

    task = asyncio.create_task(run("sleep", marker))
    for _ in range(50):
        if running():
            break
        await asyncio.sleep(0.02)
    assert running()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert not running()


def test_a_leftover_tears_down_its_slot_only_while_the_claim_still_names_it(tmp_path: Path) -> None:
    """A record left by an interrupted destroy names a slot that may since serve another
    sandbox, of this agent or of another agent on the machine."""
    from warren.agent.network import NetworkSlots

    mine = NetworkSlots(owner="/data/agent-x", claims_dir=tmp_path)
    other = NetworkSlots(owner="/data/agent-y", claims_dir=tmp_path)
    assert mine._claim(3, "sb-old")
    assert mine.held_by(3, "sb-old")
    assert not mine.held_by(3, "sb-new") and not other.held_by(3, "sb-old")
    mine._unclaim(3)
    assert not mine.held_by(3, "sb-old")  # freed
    assert other._claim(3, "sb-old")  # same sandbox id, another agent's claim
    assert not mine.held_by(3, "sb-old")


def test_a_claim_is_never_seen_without_its_owner(tmp_path: Path) -> None:
    """Another agent's start-up sweep reads claims while this one makes them: a claim is linked
    in whole (its owner, holder and CIDRs), never created empty and written after, and a slot
    already claimed is refused without touching the claim."""
    from warren.agent.network import NetworkSlots

    mine = NetworkSlots(owner="/data/agent-x", claims_dir=tmp_path)
    other = NetworkSlots(owner="/data/agent-y", claims_dir=tmp_path)
    seen: list[str] = []
    real_link = os.link

    def link_and_look(src: Any, dst: Any) -> None:
        real_link(src, dst)
        seen.append(Path(dst).read_text())  # the first moment anyone can read it

    with mock.patch("os.link", link_and_look):
        assert mine._claim(5, "sb-a", ["10.0.0.0/8"])
        assert not other._claim(5, "sb-b")
    assert seen == ["/data/agent-x\nsb-a\n10.0.0.0/8\n"]
    assert (tmp_path / "5").read_text() == seen[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["5"]  # no temporary file left
