"""Session 20: a claimed sandbox's slot was freed while a process of it still lived.

Session 17's quarantine keeps a destroyed sandbox's slot (its address, host uids, namespace
owner) claimed while anything of it may live: the teardown looks for processes in the sandbox's
cgroups. A sandbox claimed from a warm pool keeps its member's container id (``wp-…``,
agent/container_ids.py) and its cgroups carry that name; the teardown looked under the sandbox's
id (``sb-…``), found nothing, and freed the slot: the next sandbox got the same address and
host uids beside the living process. Found by reading the code; before the fix, with this
test's stuck process in D state, the slot's claim was gone at once and the owner's delete
answered 502 (the destroy's failure, reported as before session 18's quarantine). Fixed: the
teardown reads the container id before the runtime's destroy and looks there.

The stuck process is session 17's: a process of the sandbox (its namespaces and cgroups),
blocked in D state writing to a frozen filesystem, which no kill ends until the thaw.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import signup
from tests.security.test_attack_pools_claim import _agent_log, _claim, pool  # noqa: F401 (a fixture)
from tests.security.test_attack_session17_slot_quarantine import (
    RECLAIMED_WITHIN_S,
    _claim_holder,
    _record,
    _state,
    _until,
    frozen_fs,
    platform,  # noqa: F401 (its own platform: a short quarantine sweep)
    stuck_process,
)

pytestmark = pytest.mark.root


def test_a_claimed_sandboxs_slot_is_kept_while_a_process_of_it_lives(
    platform: Platform,  # noqa: F811
    pool: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    owner = signup(platform.url, "owner-s20q")
    sid = _claim(platform, owner, memory_mb=128)
    claim = re.search(rf"event=warm_claimed sandbox_id={sid} member=(\S+) ", _agent_log(platform))
    assert claim is not None
    member = claim[1]  # the name its cgroups carry
    rec = _record(platform, sid)
    slot, init_pid = int(rec["slot"]), int(rec["pid"])  # type: ignore[call-overload]
    assert _claim_holder(slot) == sid
    with frozen_fs(tmp_path) as mnt:
        stuck = stuck_process(init_pid, member, mnt)
        try:
            assert owner.w("DELETE", f"/v1/sandboxes/{sid}").status_code == 204
            _until(lambda: f"event=slot_quarantined sandbox_id={sid}" in _agent_log(platform)
                   or _claim_holder(slot) != sid, 120, "the agent's destroy ran")  # fmt: skip
            assert _state(stuck.pid) == "D"  # the process lives ...
            assert _claim_holder(slot) == sid  # ... and its slot stays the deleted sandbox's
        except BaseException:
            stuck.kill()
            raise
        stuck.kill()  # pending until the thaw lets it die
    stuck.wait(60)
    # The claim goes first, the log line just after it: wait for both.
    released = f"event=slot_quarantine_released sandbox_id={sid} slot={slot}"
    _until(lambda: _claim_holder(slot) != sid and released in _agent_log(platform), RECLAIMED_WITHIN_S,
           f"slot {slot} freed once nothing lives")  # fmt: skip
