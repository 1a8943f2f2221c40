"""A tenant exhausting its own sandbox must hit its limits, not take the sandbox (or the host)
down with it: D6 (disk), D8 (open files), and the agent's side of D5 (sizes past the host).

* D6: the writable layer is a tmpfs charged to the sandbox's memory. Filling less than the
  advertised disk used to OOM-kill the guest agent (PID 1) and lose the sandbox with its files.
  Now the layer is sized to fit the memory limit (the API reports the real size), its inodes
  are capped, /dev/shm shares it, and the guest's children are always the OOM killer's first
  choice.
* D8: RLIMIT_NOFILE was 20000 inside, a large share of the host's file table per sandbox.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.harness.tenant import Tenant
from warren.agent.runtime.bundle import DEFAULT_MAX_OPEN_FILES

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

MEMORY_MB = 128


@pytest.fixture(scope="module")
def full(alice: Tenant) -> Iterator[tuple[str, dict[str, object]]]:
    """A sandbox with a file worth keeping, whose disk was then filled as far as it goes."""
    r = alice.w("POST", "/v1/sandboxes", {"template": "minimal", "memory_mb": MEMORY_MB})
    assert r.status_code == 201, r.text
    sb = r.json()["id"]
    alice.sh(sb, "echo precious > /root/early")
    res = alice.x(sb, "head -c 700M /dev/zero > /root/big.bin; echo rc=$?")
    assert res.status_code == 200, res.text  # on the old code: 502, the guest was OOM-killed
    yield sb, res.json()
    alice.w("DELETE", f"/v1/sandboxes/{sb}")


def test_d6_filling_the_disk_ends_in_enospc_and_the_sandbox_lives_on(
    alice: Tenant, full: tuple[str, dict[str, object]]
) -> None:
    sb, res = full
    assert "rc=0" not in str(res["stdout"]) and "No space left on device" in str(res["stderr"]), res
    assert alice.sh(sb, "cat /root/early").strip() == "precious"
    assert alice.sh(sb, "python3 -c 'print(6 * 7)'").strip() == "42"  # a new exec works
    got = alice.w("GET", f"/v1/sandboxes/{sb}").json()
    assert got["status"] == "running"
    # The API reports the disk the sandbox really has, and it fits in its memory.
    df_mb = int(alice.sh(sb, "df -m / | tail -1").split()[1])
    assert got["disk_size_mb"] == df_mb < MEMORY_MB, (got, df_mb)


def test_d6_a_memory_hog_on_a_full_disk_is_killed_not_the_guest(
    alice: Tenant, full: tuple[str, dict[str, object]]
) -> None:
    sb, _ = full
    res = alice.x(sb, "python3 -c 'a = bytearray(200 << 20); print(\"survived\")'").json()
    assert res["exit_code"] in (-9, 137) and "survived" not in res["stdout"], res
    assert alice.sh(sb, "cat /root/early").strip() == "precious"
    # The guest (PID 1) is never the first choice: every command starts at 1000.
    assert alice.sh(sb, "cat /proc/1/oom_score_adj /proc/self/oom_score_adj").split() == ["0", "1000"]
    # ... and no tenant process can go below the guest (nor hide from the host's OOM killer).
    assert alice.x(sb, "echo -1 > /proc/self/oom_score_adj").json()["exit_code"] != 0
    assert alice.sh(sb, "echo 0 > /proc/self/oom_score_adj && cat /proc/self/oom_score_adj").strip() == "0"


def test_d6_many_small_files_and_shared_memory_hit_the_cap_too(
    alice: Tenant, full: tuple[str, dict[str, object]]
) -> None:
    """Inodes are kernel memory charged to the sandbox (~2 KB each, beyond the tmpfs size), and
    /dev/shm is memory as well: both end in ENOSPC, not in the OOM killer."""
    sb, _ = full
    alice.sh(sb, "rm -f /root/big.bin")
    fill = (
        "import os\nos.makedirs('/root/many', exist_ok=True)\nn = 0\n"
        "try:\n    while True:\n        open(f'/root/many/{n}', 'w').close(); n += 1\n"
        "except OSError as e:\n    print(n, e.errno)\n"
    )
    made, errno = map(int, alice.sh(sb, f'python3 -c "{fill}"', timeout_sec=120).split())
    assert errno == 28 and made > 1000  # ENOSPC
    assert alice.sh(sb, "rm -rf /root/many && cat /root/early").strip() == "precious"
    res = alice.x(sb, "head -c 700M /dev/zero > /dev/shm/x; echo rc=$?; rm -f /dev/shm/x").json()
    assert "rc=0" not in res["stdout"] and "No space left on device" in res["stderr"], res
    assert alice.sh(sb, "cat /root/early").strip() == "precious"


def test_d8_open_files_are_capped(alice: Tenant, full: tuple[str, dict[str, object]]) -> None:
    sb, _ = full
    soft, hard = map(int, alice.sh(sb, "ulimit -Sn; ulimit -Hn").split())
    assert soft <= hard <= DEFAULT_MAX_OPEN_FILES
    assert alice.x(sb, "ulimit -n 100000").json()["exit_code"] != 0
    grab = (
        "import os\nfds = []\ntry:\n    while True:\n        fds.append(os.open('/dev/null', os.O_RDONLY))\n"
        "except OSError as e:\n    print(len(fds), e.errno)\n"
    )
    opened, errno = map(int, alice.sh(sb, f'python3 -c "{grab}"').split())
    assert errno == 24 and opened < DEFAULT_MAX_OPEN_FILES  # EMFILE


def test_d5_no_sandbox_larger_than_the_host(alice: Tenant) -> None:
    """Whatever the platform's own maxima, a host never builds a sandbox bigger than itself."""
    host_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    cpus = os.cpu_count() or 1
    for body in ({"memory_mb": host_mb + 1024}, {"vcpus": cpus + 1}):
        r = alice.w("POST", "/v1/sandboxes", {"template": "minimal", **body})
        if r.status_code == 201:
            alice.w("DELETE", f"/v1/sandboxes/{r.json()['id']}")
        assert r.status_code in (400, 422, 429, 503), (body, r.status_code, r.text)
