"""Session 17: a sandbox's slot was handed out again while a process of it still lived.

A slot's index is the sandbox's network (netns, veth, address) and also its host uid range
(templates.uid_base) and its user namespace's owner uid (slot_userns.py). Teardown freed the
slot whatever the runtime's destroy said. When a process of the sandbox cannot die (in D state:
a hung disk or network filesystem), the runtime's delete and the cgroup's removal fail, the
process lives on, and the next sandbox got the same host uids (the same per-user kernel counts,
the same owner of every file either writes on a shared filesystem) and the same address.

Here a process of the sandbox (in its user and network namespaces and its cgroups: what a
tenant's process is) blocks, unkillable, writing to a frozen filesystem (``fsfreeze``: real D
state). The owner deletes the sandbox: the agent's destroy fails on the real path (crun, the
cgroup that will not empty). Expected (fixed): the slot stays claimed by the deleted sandbox
(quarantined) and no new sandbox gets it while that process lives; once the filesystem thaws
and the process dies, a later sweep of the agent destroys what is left and frees the slot.
Session 18: the owner's delete itself succeeds (204, the record stopped): the agent, not the
control plane, holds the slot back.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.environ import environ
from tests.harness.platform import Platform, running_platform
from tests.harness.tenant import signup
from warren.agent.network import CLAIMS_DIR
from warren.agent.runtime.oci import CONTROLLERS, cgroup_dir

# Its own platform: the test leaves its agent with a quarantined slot for a while.
pytestmark = [pytest.mark.root]

# The agent retries a quarantined slot's destroy every SWEEP_S (10 s by default): the test waits
# for the retry after the thaw, so it is short here (the quarantine is logged once, not per try).
SWEEP_S = 2
SWEEP_ENV = {"WARREN_AGENT_QUARANTINE_SWEEP_S": str(SWEEP_S)}
RECLAIMED_WITHIN_S = 180.0  # generous for a loaded machine


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    async with running_platform(db_url, platform_dir, SWEEP_ENV) as p:
        yield p


def _record(platform: Platform, sid: str) -> dict[str, object]:
    path = platform.agents[0].data_dir / "sandboxes" / sid / "record.json"
    return dict(json.loads(path.read_text()))


def _claim_holder(slot: int) -> str | None:
    try:
        return (CLAIMS_DIR / str(slot)).read_text().split("\n")[1]
    except FileNotFoundError:
        return None


def _state(pid: int) -> str | None:
    """The process's state letter (``D``, ``S``, ``Z`` ...), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return None


def _until(cond: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"not within {within:.0f} s: {what}")


@contextlib.contextmanager
def frozen_fs(tmp: Path) -> Iterator[Path]:
    """A small ext4 filesystem of the test's own, mounted and frozen; thawed and removed after."""
    img = tmp / "fs.img"
    # Mounted where the sandbox's root (an unprivileged host uid) may walk: pytest's tmp is 0700.
    mnt = Path(tempfile.mkdtemp(prefix="warren-s17q-"))
    mnt.chmod(0o755)
    subprocess.run(["truncate", "-s", "16M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        mnt.chmod(0o777)
        subprocess.run(["fsfreeze", "-f", str(mnt)], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["fsfreeze", "-u", str(mnt)], check=False)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        with contextlib.suppress(OSError):
            mnt.rmdir()


def stuck_process(init_pid: int, sid: str, mnt: Path) -> subprocess.Popen[bytes]:
    """A process of sandbox ``sid``: in its user and network namespaces (root there, its slot's
    host uid outside) and in all its cgroups, blocked in D state writing to ``mnt``."""
    proc = subprocess.Popen(
        ["nsenter", "-t", str(init_pid), "-U", "-n", "--", "sh", "-c", f"read go; echo x > {mnt}/f"],
        stdin=subprocess.PIPE,
    )
    _until(lambda: Path(f"/proc/{proc.pid}/ns/user").resolve() != Path("/proc/self/ns/user").resolve(),
           30, "nsenter entered the sandbox's namespaces")  # fmt: skip
    for ctrl in (*CONTROLLERS, "unified"):
        # Where the guest puts a tenant's command: the child `cmds` where there is one.
        d = next((p for p in (cgroup_dir(ctrl, sid) / "cmds", cgroup_dir(ctrl, sid)) if p.is_dir()), None)
        if d is not None:
            (d / "cgroup.procs").write_text(str(proc.pid))
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    _until(lambda: _state(proc.pid) == "D", 30, "the write blocked on the frozen filesystem")
    return proc


def restart_agent(platform: Platform) -> None:
    """SIGTERM (its sandboxes stay, as in production) and start again; back once online."""
    agent = platform.agents[0]
    agent.stop()
    with environ(SWEEP_ENV):  # the environment it reads its settings from
        agent.start()

    def online() -> bool:
        r = httpx.get(
            f"{platform.url}/v1/hosts/{platform.host_ids[0]}", headers=platform.user_headers, timeout=30
        )
        return r.status_code == 200 and r.json().get("status") == "online"

    _until(online, 120, "the restarted agent is online")


def test_a_slot_is_not_reused_while_a_process_of_its_sandbox_lives(
    platform: Platform, tmp_path: Path
) -> None:
    owner = signup(platform.url, "owner-s17q")
    sid = owner.create(memory_mb=128)
    rec = _record(platform, sid)
    slot, init_pid = int(rec["slot"]), int(rec["pid"])  # type: ignore[call-overload]
    assert _claim_holder(slot) == sid
    agent_log = platform.agents[0].log_path
    with frozen_fs(tmp_path) as mnt:
        stuck = stuck_process(init_pid, sid, mnt)
        try:
            r = owner.w("DELETE", f"/v1/sandboxes/{sid}")
            # The destroy succeeds for the owner (session 18; a 502 before): the slot is the
            # agent's to hold back, nothing the CP accounts; the record is stopped at once.
            assert r.status_code == 204, r.text
            assert owner.w("GET", f"/v1/sandboxes/{sid}").json()["status"] == "stopped"
            # The agent's destroy has run: it kept the slot (fixed) or let go of its claim.
            _until(lambda: f"event=slot_quarantined sandbox_id={sid}" in agent_log.read_text(errors="replace")
                   or _claim_holder(slot) != sid, 120, "the agent's destroy ran")  # fmt: skip
            assert _claim_holder(slot) == sid
            assert owner.w("DELETE", f"/v1/sandboxes/{sid}").status_code == 204  # again: still done
            # A restarted agent keeps it quarantined too (from the record it kept).
            restart_agent(platform)
            quarantined = f"event=slot_quarantined sandbox_id={sid}"
            _until(lambda: agent_log.read_text(errors="replace").count(quarantined) >= 2, 120,
                   "the restarted agent quarantined the slot again")  # fmt: skip
            # New sandboxes while the stuck process lives: none gets its slot.
            others = [owner.create(memory_mb=128) for _ in range(3)]
            slots = {int(_record(platform, o)["slot"]) for o in others}  # type: ignore[call-overload]
            assert _state(stuck.pid) == "D"  # alive throughout the creates
            assert slot not in slots, f"slot {slot} handed out while a process of {sid} lives"
            assert _claim_holder(slot) == sid
            for o in others:
                assert owner.w("DELETE", f"/v1/sandboxes/{o}").status_code in (202, 204)
        except BaseException:
            stuck.kill()  # pending until the thaw (frozen_fs's exit) lets it die
            raise
    stuck.wait(60)
    # The claim goes first, the log line just after it: wait for both.
    released = f"event=slot_quarantine_released sandbox_id={sid} slot={slot}"
    _until(
        lambda: _claim_holder(slot) != sid and released in agent_log.read_text(errors="replace"),
        RECLAIMED_WITHIN_S,
        f"slot {slot} freed once nothing of {sid} lives",
    )
    # The slot is usable again: a create may get it, and the sandbox works.
    again = owner.create(memory_mb=128)
    assert owner.sh(again, "echo ok").strip() == "ok"
