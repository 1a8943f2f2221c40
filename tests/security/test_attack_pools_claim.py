"""Hostile probes of a sandbox claimed from a warm pool (docs/agent.md "Warm pools"): its limits,
identity and network policy are the create's (as the kernel sees them, from the host), its user
code cannot claim it again, nothing of the member's past or of a previous claimer reaches it,
and members appear in no list."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant
from tests.security.attack_helpers import admin as _admin
from tests.security.attack_helpers import as_user as _jwt
from tests.security.attack_helpers import dashboard_pages
from tests.security.attack_helpers import sql as _sql
from tests.security.attack_helpers import wait_until as _wait
from warren.agent import sandbox_fs
from warren.agent.network import BLOCKED_GROUP

pytestmark = pytest.mark.root

MEMBER = re.compile(r"wp-[0-9a-f]{16}")  # a pool member's name (agent/warm_pool.py)


FILL_S = 300.0  # a member is built one at a time, after any create: slow on a loaded machine


def _agent_log(platform: Platform) -> str:
    return platform.agents[0].log_path.read_text(errors="replace")


def _ready_members(platform: Platform) -> int:
    log = _agent_log(platform)
    return log.count("event=warm_pool_refilled template=minimal ") - log.count("event=warm_claimed ")


@pytest.fixture(scope="module")
def pool(platform: Platform) -> Iterator[str]:
    """A pool of one ``minimal`` member on the platform's host (what the admin sets)."""
    host = platform.host_ids[0]
    r = _admin(platform, "PUT", f"/v1/hosts/{host}/warm-pools/minimal", {"size": 1})
    assert r.status_code == 200, r.text
    yield host
    _admin(platform, "PUT", f"/v1/hosts/{host}/warm-pools/minimal", {"size": 0})


def _claim(platform: Platform, t: Tenant, **body: Any) -> str:
    """A sandbox of ``t`` made from the pool's member (waited for), proven by the agent's log."""
    _wait(lambda: _ready_members(platform) > 0, FILL_S, "a ready pool member")
    sid = t.create(**body)
    assert f"event=warm_claimed sandbox_id={sid} " in _agent_log(platform), "the create went cold"
    return sid


@pytest.fixture(scope="module")
def claimed(platform: Platform, alice: Tenant, pool: str) -> Iterator[str]:
    sid = _claim(platform, alice, memory_mb=256, vcpus=2, env={"MINE": "alice"}, internet=False)
    yield sid
    alice.w("DELETE", f"/v1/sandboxes/{sid}")


def _cgroup(platform: Platform, sid: str, controller: str, name: str) -> str:
    """A cgroup file of the sandbox's PID 1, found from the host as the kernel places it."""
    path = Path("/sys/fs/cgroup") / controller / _cgroup_path(platform, sid, controller) / name
    return path.read_text().strip()


def test_a_claimed_sandbox_has_its_own_limits(platform: Platform, alice: Tenant, claimed: str) -> None:
    assert _cgroup(platform, claimed, "memory", "memory.limit_in_bytes") == str(256 << 20)
    assert _cgroup(platform, claimed, "memory", "memory.memsw.limit_in_bytes") == str(256 << 20)
    assert _cgroup(platform, claimed, "cpu", "cpu.cfs_quota_us") == "200000"
    assert _cgroup(platform, claimed, "pids", "pids.max") == "1024"
    # The disk (a tmpfs charged to memory) at the size a cold create of 256 MiB makes, as mounted.
    disk_mb = alice.w("GET", f"/v1/sandboxes/{claimed}").json()["disk_size_mb"]
    assert disk_mb <= sandbox_fs.disk_size(256, 1 << 20).mb  # what fits in 256 MiB
    disk = str(platform.agents[0].data_dir / "sandboxes" / claimed / "disk")
    mounts = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    options = [m[-1] for m in mounts if m[4] == disk]
    assert len(options) == 1 and f"size={disk_mb * 1024}k" in options[0].split(","), (disk, options)
    # ...and they hold: 400 MiB fit the member's 512 MiB, not the sandbox's 256.
    r = alice.x(claimed, "python3 -c 'b = bytearray(400 << 20); b[::4096] = b\"x\" * len(b[::4096])'")
    assert r.status_code == 200 and r.json()["exit_code"] != 0, r.text


def test_a_claimed_sandbox_with_internet_off_has_its_slot_dropped(alice: Tenant, claimed: str) -> None:
    host_ip = alice.w("GET", f"/v1/sandboxes/{claimed}").json()["host_ip"]
    slot = (int.from_bytes(bytes(int(o) for o in host_ip.split(".")), "big") - (10 << 24 | 11 << 16)) // 4
    rules = subprocess.run(["iptables", "-w", "-S", "WARREN-FWD"], capture_output=True, text=True).stdout
    # The slot's veth is in the blocked device group, which a rule of WARREN-FWD above the egress policy drops
    # (network.py; a host without xt_devgroup gets a DROP rule of the slot's own instead).
    group = f"-A WARREN-FWD -i wv+ -m devgroup --src-group {hex(BLOCKED_GROUP)} -j DROP"
    lines = rules.splitlines()
    in_group = int(Path(f"/sys/class/net/wv{slot}/netdev_group").read_text()) == BLOCKED_GROUP
    egress = lines.index("-A WARREN-FWD -i wv+ -j WARREN-EGRESS")
    above_egress = group in lines and lines.index(group) < egress
    assert (in_group and above_egress) or f"-A WARREN-FWD -i wv{slot} -j DROP" in lines, rules


def test_a_claimed_sandbox_knows_only_its_own_identity(alice: Tenant, claimed: str) -> None:
    out = alice.sh(claimed, "hostname; cat /etc/hostname; grep -c " + claimed + " /etc/hosts; env")
    lines = out.splitlines()
    assert lines[:3] == [claimed, claimed, "1"], out
    env = dict(line.split("=", 1) for line in lines[3:] if "=" in line)
    assert env["HOSTNAME"] == claimed and env["MINE"] == "alice", env
    assert not MEMBER.search(out), out
    # PID 1 (the guest) was started for the member: its own environment still names the member
    # (a sandbox can tell it was pooled: known, harmless), and holds nothing of any tenant.
    pid1 = alice.sh(claimed, "tr '\\0' '\\n' < /proc/1/environ").splitlines()
    assert sorted(k.split("=", 1)[0] for k in pid1) == ["HOME", "HOSTNAME", "LANG", "PATH"], pid1
    assert MEMBER.fullmatch(dict(k.split("=", 1) for k in pid1)["HOSTNAME"]), pid1
    # Nothing left behind by the member's build: no files, no processes but the guest and us.
    assert alice.sh(claimed, "ls -A /tmp /home /var/tmp | grep -v '^/\\|^$' || true") == ""
    procs = alice.sh(claimed, "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done")
    others = [p for p in procs.splitlines() if p.strip() and "guest.py" not in p and "/bin/sh -c" not in p]
    assert others in ([], ["tr  "], ["tr "]), procs


CLAIM_AGAIN = r"""
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect("/run/warren/guest.sock")
body = json.dumps({"op": "claim", "env": {"HOSTNAME": "evil", "LD_PRELOAD": "/tmp/x.so"}}).encode()
s.sendall(struct.pack(">IB", len(body), 1) + body)
head = b""
while len(head) < 5:
    head += s.recv(5 - len(head))
n, kind = struct.unpack(">IB", head)
data = b""
while len(data) < n:
    data += s.recv(n - len(data))
print(kind, data.decode())
"""


def test_user_code_cannot_claim_its_sandbox_again(alice: Tenant, claimed: str) -> None:
    r = alice.x(claimed, f"python3 -c '{CLAIM_AGAIN}'")
    assert r.status_code == 200, r.text
    out = r.json()
    if out["exit_code"] == 0:  # the guest's socket is reachable: it must refuse
        kind, _, answer = out["stdout"].strip().partition(" ")
        assert kind == "5", out
        assert json.loads(answer) == {
            "kind": "invalid_argument",
            "message": "claim: this guest is in use already",
        }
    env = alice.sh(claimed, "env")
    assert f"HOSTNAME={claimed}" in env and "evil" not in env and "LD_PRELOAD" not in env, env


def test_a_cold_sandbox_cannot_be_claimed_by_its_user_code_either(alice: Tenant, bob: Tenant) -> None:
    """A cold sandbox's guest is pristine until its first operation: that operation is the
    user's exec, so user code always finds it taken."""
    sid = bob.create(runtime="runc", env={"MINE": "bob"})
    try:
        r = bob.x(sid, f"python3 -c '{CLAIM_AGAIN}'")
        assert r.status_code == 200, r.text
        if r.json()["exit_code"] == 0:
            assert r.json()["stdout"].startswith("5 "), r.text
        env = bob.sh(sid, "env")
        assert "evil" not in env and "MINE=bob" in env, env
    finally:
        bob.w("DELETE", f"/v1/sandboxes/{sid}")


def test_the_next_claimer_sees_nothing_of_the_first(
    platform: Platform, alice: Tenant, bob: Tenant, claimed: str
) -> None:
    alice.sh(claimed, "echo alice-secret > /tmp/left; sleep 3600 > /dev/null 2>&1 &")
    sid = _claim(platform, bob)
    try:
        out = bob.sh(sid, "hostname; env; ls -A /tmp; cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
        assert "alice" not in out and claimed not in out and "sleep" not in out, out
        assert out.splitlines()[0] == sid, out
        assert bob.w("GET", f"/v1/sandboxes/{claimed}").status_code == 404
    finally:
        bob.w("DELETE", f"/v1/sandboxes/{sid}")


def test_pool_members_are_in_no_list(platform: Platform, alice: Tenant, claimed: str) -> None:
    _wait(lambda: _ready_members(platform) > 0, FILL_S, "the pool to refill")
    listed = [s["id"] for s in alice.w("GET", "/v1/sandboxes").json()]
    assert listed == [claimed], listed
    mine = _admin(platform, "GET", "/v1/sandboxes")
    assert mine.status_code == 200 and not MEMBER.search(mine.text), mine.text
    with httpx.Client(base_url=platform.cp.e2b_url, headers={"X-API-Key": alice.api_key}, timeout=60) as c:
        e2b = c.get("/v2/sandboxes")
    assert e2b.status_code == 200 and [s["sandboxID"] for s in e2b.json()] == [claimed], e2b.text
    audit = _jwt(alice, "GET", "/v1/audit")
    assert audit.status_code == 200 and not MEMBER.search(audit.text), audit.text[:500]
    pages = dashboard_pages(platform, "/admin", "/dashboard/sandboxes", "/dashboard/audit")
    for page in pages:
        assert page.status_code == 200 and not MEMBER.search(page.text), (page.url, page.text[:300])
    metrics = _admin(platform, "GET", "/metrics")
    assert metrics.status_code == 200 and not MEMBER.search(metrics.text), metrics.text[:300]
    rows = _sql(platform, "SELECT count(*) FROM sandboxes WHERE status NOT IN ('stopped', 'error')")
    assert rows[0][0] == 1, rows  # alice's, and nothing for the ready member


def test_a_claimed_sandbox_pauses_resumes_and_leaves_nothing_behind(
    platform: Platform, bob: Tenant, pool: str
) -> None:
    """The claimed sandbox runs under its member's container (container_ids.py): every verb
    must reach that container, and a delete must take its mounts and cgroups with it."""
    sid = _claim(platform, bob, memory_mb=384)
    memory = Path("/sys/fs/cgroup/memory") / _cgroup_path(platform, sid, "memory")
    assert (memory / "memory.limit_in_bytes").read_text().strip() == str(384 << 20)
    bob.sh(sid, "sleep 3600 > /dev/null 2>&1 & echo kept > /tmp/kept")
    assert bob.w("POST", f"/v1/sandboxes/{sid}/pause").status_code in (200, 204)
    assert bob.w("GET", f"/v1/sandboxes/{sid}").json()["status"] == "paused"
    assert bob.w("POST", f"/v1/sandboxes/{sid}/resume").status_code in (200, 204)
    assert bob.sh(sid, "cat /tmp/kept; hostname") == f"kept\n{sid}\n"
    assert bob.w("DELETE", f"/v1/sandboxes/{sid}").status_code == 204
    root = str(platform.agents[0].data_dir / "sandboxes" / sid)

    def gone() -> bool:
        mounts = Path("/proc/self/mountinfo").read_text()
        return root not in mounts and not memory.exists() and not Path(root).exists()

    _wait(gone, 60, f"{sid}'s mounts, directory and cgroup to go")


def _cgroup_path(platform: Platform, sid: str, controller: str) -> str:
    record = json.loads((platform.agents[0].data_dir / "sandboxes" / sid / "record.json").read_text())
    for line in Path(f"/proc/{record['pid']}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path.lstrip("/")
    raise AssertionError(f"no {controller} cgroup")
