"""runtime/socket_memory.py and kernel_limits.lift_socket_memory: a sandbox's socket memory
bound, and the host-wide limits kept above what every sandbox at its bound holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from warren import footprint
from warren.agent import sandbox_fs
from warren.agent.runtime import kernel_limits, socket_ceiling, socket_memory
from warren.agent.runtime.socket_memory import LIMIT, bound

MiB, GiB = 1 << 20, 1 << 30


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        (64 * MiB, 16 * MiB),  # the smallest sandbox: the floor
        (128 * MiB, 16 * MiB),
        (256 * MiB, 16 * MiB),
        (300 * MiB, 18 * MiB + 768 * 1024),
        (512 * MiB, 32 * MiB),  # the default size
        (4 * GiB, 256 * MiB),
        (8 * GiB, 256 * MiB),  # the ceiling
        (64 * GiB, 256 * MiB),
        (333 * MiB + 12345, 21823488),  # whole pages (20.8 MiB)
    ],
)
def test_the_bound_is_a_sixteenth_between_floor_and_ceiling(memory: int, expected: int) -> None:
    assert bound(memory) == expected
    assert bound(memory) % 4096 == 0


def test_no_sandbox_holds_more_than_the_largest_share_of_its_footprint() -> None:
    assert sandbox_fs.MIN_MEMORY_MB * MiB == socket_memory.MIN_SANDBOX
    assert socket_memory.MAX_SHARE == 1 / 3
    for mb in range(sandbox_fs.MIN_MEMORY_MB, 65536, 7):
        held = socket_ceiling.ceiling(bound(mb * MiB))
        assert held <= footprint.footprint_mb(mb, "runc") * MiB * socket_memory.MAX_SHARE


def test_the_host_limits_hold_every_sandbox_at_its_ceiling_and_the_kernels_default() -> None:
    host = 24105 * MiB  # this machine
    want = kernel_limits.socket_memory_wanted(host, socket_memory.MAX_SHARE)
    # The host filled at footprints with the smallest sandboxes (the largest share), each at
    # its ceiling.
    each = socket_ceiling.ceiling(bound(64 * MiB))
    sandboxes = host // (footprint.footprint_mb(64, "runc") * MiB) * each // 4096
    for name, shares in kernel_limits.KERNEL_SHARES.items():
        default = [int(host * s) // 4096 for s in shares]
        assert [w - d for w, d in zip(want[name], default, strict=True)] >= [sandboxes - 1] * 3
        assert list(want[name]) == sorted(want[name])
    # What the kernel set here at boot is below it (287889 383855 575778; udp twice that).
    assert want["tcp"] > (287889, 383855, 575778)
    assert want["udp"] > (575781, 767710, 1151562)


def _sysctls(tmp_path: Path, tcp: str, udp: str) -> dict[str, str]:
    (tmp_path / "tcp").write_text(tcp + "\n")
    (tmp_path / "udp").write_text(udp + "\n")
    return {"tcp": str(tmp_path / "tcp"), "udp": str(tmp_path / "udp")}


def test_low_socket_limits_are_lifted_each_value_on_its_own(tmp_path: Path) -> None:
    want = kernel_limits.socket_memory_wanted(kernel_limits.host_memory_bytes(), socket_memory.MAX_SHARE)
    huge = 1 << 50
    paths = _sysctls(tmp_path, "1\t2\t3", f"1 2 {huge}")
    assert kernel_limits.lift_socket_memory(socket_memory.MAX_SHARE, paths) == [paths["tcp"], paths["udp"]]
    assert Path(paths["tcp"]).read_text().split() == [str(v) for v in want["tcp"]]
    assert Path(paths["udp"]).read_text().split() == [str(want["udp"][0]), str(want["udp"][1]), str(huge)]


def test_higher_or_unreadable_socket_limits_are_left_alone(tmp_path: Path) -> None:
    huge = " ".join([str(1 << 50)] * 3)
    paths = _sysctls(tmp_path, huge, "not numbers")
    assert kernel_limits.lift_socket_memory(socket_memory.MAX_SHARE, paths) == []
    assert Path(paths["tcp"]).read_text() == huge + "\n"
    assert kernel_limits.lift_socket_memory(1 / 8, {"tcp": str(tmp_path / "none"), "udp": ""}) == []


def _cgroups(tmp_path: Path, sandbox: str, cmds: bool) -> Path:
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / LIMIT).write_text("9223372036854771712\n")
    d = tmp_path / "memory" / "warren" / sandbox
    for cg in [d, d / "cmds"] if cmds else [d]:
        cg.mkdir(parents=True)
        (cg / LIMIT).touch()  # what the kernel makes with the cgroup (written without O_TRUNC)
    return tmp_path


def test_a_new_sandbox_and_its_cmds_get_the_bound_and_a_resize_moves_it(tmp_path: Path) -> None:
    root = _cgroups(tmp_path, "sb-1", cmds=True)
    assert socket_memory.limit_new("sb-1", 256 * MiB, root)
    d = root / "memory" / "warren" / "sb-1"
    assert [(p / LIMIT).read_text() for p in (d, d / "cmds")] == [str(16 * MiB)] * 2
    socket_memory.resize("sb-1", 1024 * MiB, root)
    assert [(p / LIMIT).read_text() for p in (d, d / "cmds")] == [str(64 * MiB)] * 2


def test_a_sandbox_without_cmds_gets_its_own_cgroup_bounded(tmp_path: Path) -> None:
    root = _cgroups(tmp_path, "sb-2", cmds=False)
    assert socket_memory.limit_new("sb-2", 2048 * MiB, root)
    d = root / "memory" / "warren" / "sb-2"
    assert (d / LIMIT).read_text() == str(128 * MiB)
    assert not (d / "cmds").exists()


def test_a_kernel_without_the_file_degrades(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    socket_memory._unbounded_logged = False
    assert not socket_memory.limit_new("sb-3", 128 * MiB, tmp_path)
    socket_memory.resize("sb-3", 256 * MiB, tmp_path)
    assert not (tmp_path / "memory").exists()  # nothing made: no v1 memory hierarchy here
    assert "event=socket_memory_unbounded" in caplog.text
