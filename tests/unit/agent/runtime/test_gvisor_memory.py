"""gVisor's memory limit (runtime/gvisor.py:limit_memory): the host cgroup gets the tenant's limit
plus the fixed headroom, once, and the tenant's limit goes to the guest's file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from warren.agent.runtime.gvisor import MEMORY_HEADROOM, MEMORY_LIMIT_FILE, limit_memory

LIMIT = 128 << 20


def _bundle(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    spec = {
        "mounts": [{"destination": "/run/warren", "source": str(run), "type": "bind"}],
        "linux": {"resources": {"memory": {"limit": LIMIT, "swap": LIMIT}}},
    }
    (tmp_path / "config.json").write_text(json.dumps(spec))
    return tmp_path


def test_the_headroom_is_added_once_and_the_guest_gets_the_tenants_limit(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    for _ in range(3):  # a create, then restores of the same bundle
        limit_memory(bundle)
        memory = json.loads((bundle / "config.json").read_text())["linux"]["resources"]["memory"]
        assert memory == {"limit": LIMIT + MEMORY_HEADROOM, "swap": LIMIT + MEMORY_HEADROOM}
        guest_file = bundle / "run" / MEMORY_LIMIT_FILE
        assert guest_file.read_text() == str(LIMIT)
        assert stat.S_IMODE(guest_file.stat().st_mode) == 0o444
    assert stat.S_IMODE((bundle / "config.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in (bundle / "run").iterdir()) == [MEMORY_LIMIT_FILE]


def test_a_bundle_without_a_memory_limit_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"linux": {"resources": {}}}))
    limit_memory(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == {"linux": {"resources": {}}}
