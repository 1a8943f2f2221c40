"""Session 10's hostile tenant: one directory of many long names makes a snapshot hold the
agent's memory.

The exporter (``layers/writer._Writer.walk``) lists each directory whole and sorts it (the
layer's bytes must not depend on the order a filesystem lists): every name of one directory is
held at once in the agent, twice during the sort (the name and its ``fsencode`` key), ~0.6 KiB
per 240-byte name. A sandbox's disk has one inode per 8 KiB, so a 2 GiB sandbox holds ~200 000
empty files and costs the agent ~120 MiB at its snapshot; a 16 GiB one ~1.6 million (~1 GiB),
once per sandbox snapshotted at the same time, on the host every tenant shares. The files API's
listing of 400 000 entries stays under 300 MB (test_bounded, D9): the export does not.

Expected: the agent's memory for an export does not grow with the entries of one directory
(an external sort, or a bound on a directory's entries with a clean refusal).

Fixed: names are held as bytes only (~len + 42 B), and the directories being walked hold at
most ``writer.MAX_LISTED_BYTES`` (32 MiB, counted len + 48 B a name) together; past it the
export is refused, a 400. 120 000 names are enough to pass the bound (~113 000 of 248 bytes)
and cost the old walk ~73 MiB (measured in a plain process, 200 000: +122 MiB old, +34 MiB
new; the red team saw +206 MiB in the agent); the old 200 000 took ~4 min to export.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

MEMORY_MB = 2048  # a disk of ~1612 MB: ~206 000 inodes
FILES = 120_000
GROWTH_MIB = 48  # MAX_LISTED_BYTES (32 MiB) and what an export holds besides

MAKE = f"""
import os
os.makedirs('/root/many', exist_ok=True)
os.chdir('/root/many')
stem = 'x' * 240
for i in range({FILES}):
    os.close(os.open(f'{{stem}}{{i:08d}}', os.O_CREAT | os.O_WRONLY, 0o644))
print(len(os.listdir('.')))
"""


def agent_high_water_mib(platform: Platform) -> int:
    proc = platform.agents[0].proc
    assert proc is not None
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) >> 10
    raise AssertionError("no VmHWM")


def reset_high_water(platform: Platform) -> None:
    proc = platform.agents[0].proc
    assert proc is not None
    Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM := the current RSS


def test_a_snapshot_of_one_huge_directory_does_not_hold_the_agents_memory(
    platform: Platform, alice: Tenant
) -> None:
    sb = alice.create(memory_mb=MEMORY_MB)
    try:
        out = alice.sh(sb, f'python3 -c "{MAKE}"', timeout_sec=600)
        assert out.strip() == str(FILES), out
        reset_high_water(platform)
        before = agent_high_water_mib(platform)
        r = alice.w("POST", "/v1/snapshots", {"sandbox_id": sb, "name": "many-names"}, timeout=900)
        grew = agent_high_water_mib(platform) - before
        print(f"agent VmHWM +{grew} MiB exporting {FILES} names of one directory: {r.status_code}")
        assert grew <= GROWTH_MIB, f"exporting {FILES} names of one directory took {grew} MiB of the agent"
        assert r.status_code == 400, r.text
        assert "too many names" in r.text, r.text
    finally:
        alice.w("DELETE", "/v1/snapshots/many-names")
        alice.w("DELETE", f"/v1/sandboxes/{sb}")
